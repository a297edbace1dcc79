"""Are a backbone's frozen features worth distilling? Two label-light probes on the synthetic world (issue 10 item 3).

Shapes: N images, H = W = res, C channels, h = w = res / patch, K classes (= clusters).

(a) k-means: K-means (K = number of classes, restarts, k-means++) of the L2-normalised patch features of the
    evaluation images; per-pixel cluster = the nearest centroid of the bilinearly upsampled cosine similarities, as
    STEGO's cluster probe predicts; mIoU after Hungarian matching (:class:`UnsupervisedMetrics`).
(b) linear probe: a 1x1 linear layer on the patch features, logits bilinearly upsampled to the labels, trained
    with cross-entropy on the training images' labels (full batch, Adam; on every ``label_stride``-th pixel, which
    changes little and saves most of the time), mIoU on every pixel of the evaluation images (no matching), as
    STEGO's linear probe but on the backbone instead of the head.
Both use the same frozen features of :class:`DinoBackbone` at the preset's resolution; only ``weights`` differ.
The third figure, the DepthG-trained cluster probe, needs training runs: ``python -m depthg.bench feature-quality``
measures all three and writes results/feature_quality_synthetic.{csv,md}.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2

from depthg.data.synthetic import CLASS_NAMES, VAL_OFFSET, render_scene
from depthg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from depthg.evaluation.metrics import UnsupervisedMetrics
from depthg.model.backbone import DinoBackbone


def render_split(split: str, n: int, *, res: int = 112, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N,H,W,3] and labels int64 [N,H,W] of the synthetic world's ``split`` (the scenes
    :func:`write_synthetic` stores: index i for train, VAL_OFFSET + i for val)."""
    assert split in ("train", "val"), f"split must be 'train' or 'val', got {split!r}"
    scenes = [render_scene(seed, i + (VAL_OFFSET if split == "val" else 0), res) for i in range(n)]
    return (
        torch.from_numpy(np.stack([s["image"] for s in scenes])),
        torch.from_numpy(np.stack([s["label"] for s in scenes])),
    )


@torch.no_grad()
def patch_features(backbone: DinoBackbone, images: torch.Tensor, batch_size: int = 25) -> torch.Tensor:
    """images uint8 [N,H,W,3] -> frozen patch features float32 [N,C,h,w]."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(images), batch_size):
        x = (images[i : i + batch_size].permute(0, 3, 1, 2).float() / 255 - mean) / std
        out.append(backbone(x, attention=False)[0])
    return torch.cat(out)


def kmeans_miou(feats: torch.Tensor, labels: torch.Tensor, n_classes: int, *, seed: int = 0, restarts: int = 5) -> dict:
    """(a) feats [N,C,h,w], labels [N,H,W] -> {"miou", "accuracy"} (%) of K-means clusters matched to classes."""
    f = F.normalize(feats, dim=1)
    flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).double().numpy()  # [N*h*w, C]
    best, best_cost = None, np.inf
    for r in range(restarts):  # scipy's kmeans2 has no restarts of its own: keep the lowest distortion
        cent, assign = kmeans2(flat, n_classes, minit="++", seed=seed * 1000 + r)
        cost = ((flat - cent[assign]) ** 2).sum()
        if cost < best_cost:
            best, best_cost = cent, cost
    cent = F.normalize(torch.from_numpy(best).float(), dim=1)  # [K,C]
    sim = torch.einsum("nchw,kc->nkhw", f, cent)
    pred = F.interpolate(sim, size=labels.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    m = UnsupervisedMetrics(n_classes)
    m.update(pred, labels)
    out = m.compute()
    return dict(miou=float(out["mIoU"]), accuracy=float(out["accuracy"]))


def linear_probe_miou(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    val_labels: torch.Tensor,
    n_classes: int,
    *,
    steps: int = 200,
    lr: float = 0.05,
    label_stride: int = 4,
    seed: int = 0,
) -> dict:
    """(b) a linear probe trained on (train_feats [N,C,h,w], train_labels [N,H,W]) -> {"miou", "accuracy"} (%) on
    the validation pair; features standardised with the training statistics so one learning rate fits both."""
    mu = train_feats.mean((0, 2, 3), keepdim=True)
    sd = train_feats.std((0, 2, 3), keepdim=True) + 1e-6
    g = torch.Generator().manual_seed(seed)
    probe = torch.nn.Conv2d(train_feats.shape[1], n_classes, 1)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=g)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    s, size = label_stride, train_labels.shape[-2:]
    target = train_labels[:, s // 2 :: s, s // 2 :: s]  # pixel centres of a stride-s grid
    # upsampling is linear, so probe-then-upsample = probe of the upsampled features: upsample once, in chunks
    x = torch.cat(
        [
            F.interpolate((train_feats[i : i + 16] - mu) / sd, size=size, mode="bilinear", align_corners=False)[
                :, :, s // 2 :: s, s // 2 :: s
            ]
            for i in range(0, len(train_feats), 16)
        ]
    )
    for _ in range(steps):
        loss = F.cross_entropy(probe(x), target, ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = F.interpolate(
            probe((val_feats - mu) / sd), size=val_labels.shape[-2:], mode="bilinear", align_corners=False
        )
    m = UnsupervisedMetrics(n_classes, hungarian=False)
    m.update(logits.argmax(1), val_labels)
    out = m.compute()
    return dict(miou=float(out["mIoU"]), accuracy=float(out["accuracy"]), train_loss=loss.item())


def feature_quality(
    backbone: str,
    weights: str,
    *,
    n_train: int = 200,
    n_val: int = 50,
    res: int = 112,
    world_seed: int = 0,
    seed: int = 0,
    data: dict | None = None,
) -> dict:
    """(a) and (b) for one backbone's weights on the synthetic world: {"kmeans_miou", "kmeans_accuracy",
    "linear_miou", "linear_accuracy", "weights_source"}. ``data``: pre-rendered {"train": (img, lab), "val": ...}."""
    data = data or {s: render_split(s, n, res=res, seed=world_seed) for s, n in (("train", n_train), ("val", n_val))}
    net = DinoBackbone(backbone, weights)
    ft, fv = patch_features(net, data["train"][0]), patch_features(net, data["val"][0])
    k = kmeans_miou(fv, data["val"][1], len(CLASS_NAMES), seed=seed)
    lin = linear_probe_miou(ft, data["train"][1], fv, data["val"][1], len(CLASS_NAMES), seed=seed)
    return dict(
        kmeans_miou=k["miou"],
        kmeans_accuracy=k["accuracy"],
        linear_miou=lin["miou"],
        linear_accuracy=lin["accuracy"],
        weights_source=net.weights_source,
    )
