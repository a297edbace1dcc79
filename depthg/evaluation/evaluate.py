"""Evaluation with STEGO's protocol (METHOD.md §6.2; DESIGN.md §7).

``python -m depthg eval CHECKPOINT [--crf/--no-crf]``: the evaluation split at a 320 px centre crop, codes
averaged over a horizontal flip, both probes' logits upsampled bilinearly to the label size, DenseCRF in worker
processes (:class:`depthg.evaluation.crf.CRFPool`), dataset-level Hungarian matching for the cluster probe and plain argmax
for the linear probe. Metrics are reported with and without CRF, so the CRF's share is visible (ANCHORS.md §0).

This evaluates the model it is given: the last training step. A best-on-validation number, if someone wants one,
must be computed beside it and labelled so (METHOD.md §2.4, §9 #12).

Shapes: B batch, K code dim, h/w code grid, R evaluation resolution, n classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from depthg.config import Config
from depthg.data.pairs import build_eval_set
from depthg.data.transforms import unnormalize
from depthg.device import resolve_device
from depthg.errors import ConfigError
from depthg.evaluation import released
from depthg.evaluation.crf import CRFPool
from depthg.evaluation.metrics import UnsupervisedMetrics
from depthg.paths import runs_dir
from depthg.presets import PAPER_PRESETS, load_preset
from depthg.runs import provenance, write_run
from depthg.training import checkpoints


@dataclass
class EvalResult:
    run_dir: Path | None
    metrics: dict


def predict_logits(model, img: torch.Tensor, *, flip: bool = True, size: tuple[int, int] | None = None):
    """img [B,3,R,R] -> (cluster log-probs, linear log-probs), each [B,n,R,R] (METHOD.md §6.2)."""
    code = model.predict_code(img, flip=flip)  # [B,K,h,w]
    code = F.interpolate(code, size=size or img.shape[-2:], mode="bilinear", align_corners=False)
    return model.cluster_probe.log_probs(code, alpha=2.0), F.log_softmax(model.linear_probe(code), dim=1)


@torch.no_grad()
def evaluate_model(model, cfg: Config, *, split: str = "val", crf: bool | None = None, progress: bool = True,
                   device: str | torch.device | None = None) -> dict:
    """Metrics of ``model`` on the evaluation split: {cluster, linear} x {crf, no crf} (+ timing)."""
    crf = cfg.eval.crf if crf is None else crf
    device = torch.device(device) if device is not None else next(model.head.parameters()).device
    model.eval()
    dataset = build_eval_set(cfg, split=split)
    if cfg.eval.max_images:
        dataset = torch.utils.data.Subset(dataset, range(min(cfg.eval.max_images, len(dataset))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False,
                                         num_workers=cfg.data.num_workers,
                                         generator=torch.Generator())  # leaves the global RNG (training) alone
    n, extra = cfg.model.n_classes, cfg.model.extra_clusters
    scores = {"cluster": UnsupervisedMetrics(n, extra_clusters=extra), "linear": UnsupervisedMetrics(n, hungarian=False)}
    if crf:
        scores.update({"cluster_crf": UnsupervisedMetrics(n, extra_clusters=extra),
                       "linear_crf": UnsupervisedMetrics(n, hungarian=False)})
    t0, images = time.time(), 0
    pool = CRFPool(cfg.eval.crf_workers) if crf else None
    try:
        for batch in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True):
            img, label = batch["img"].to(device), batch["label"]
            cluster_lp, linear_lp = predict_logits(model, img, flip=cfg.eval.flip, size=label.shape[-2:])
            scores["cluster"].update(cluster_lp.argmax(1).cpu(), label)
            scores["linear"].update(linear_lp.argmax(1).cpu(), label)
            if pool is not None:
                rgb = unnormalize(img.cpu()).numpy()  # uint8 [B,R,R,3]: the CRF sees the un-normalised image
                scores["cluster_crf"].update(torch.from_numpy(pool(rgb, cluster_lp).argmax(1)), label)
                scores["linear_crf"].update(torch.from_numpy(pool(rgb, linear_lp).argmax(1)), label)
            images += img.shape[0]
    finally:
        if pool is not None:
            pool.close()
    out = {k: _summary(m.compute()) for k, m in scores.items()}
    out["eval"] = {"split": split, "images": images, "crf": crf, "flip": cfg.eval.flip, "res": cfg.eval.res,
                   "seconds": round(time.time() - t0, 2), "images_per_s": round(images / max(time.time() - t0, 1e-9), 3)}
    return out


def _summary(m: dict) -> dict:
    keep = {"accuracy": m["accuracy"], "mIoU": m["mIoU"], "iou": m["iou"]}
    if "assignment" in m:
        keep["assignment"] = m["assignment"]
    return keep


def preset_for_released(info: dict) -> str:
    """The preset of a released checkpoint's dataset and backbone (DG src/configs/eval_config.yml:15-19)."""
    key = (info.get("dataset_name"), info.get("backbone"))
    if key in PAPER_PRESETS:
        return PAPER_PRESETS[key]
    by_dataset = [p for (d, _), p in PAPER_PRESETS.items() if d == key[0]]
    if by_dataset:
        return by_dataset[0]
    raise ConfigError(f"{info.get('path')}: cannot tell which preset fits dataset {key[0]!r} with backbone "
                      f"{key[1]!r}; pass --preset NAME (and data.dataset=... if needed).")


def evaluate_checkpoint(path: str | Path, *, crf: bool | None = None, preset: str | None = None,
                        overrides: list[str] | None = None, split: str = "val", run_name: str | None = None,
                        results_dir: str | None = None) -> EvalResult:
    """Evaluate this project's checkpoint or an authors' released Lightning .ckpt; write results/runs/<name>/."""

    t0 = time.time()
    path = Path(path)
    if released.is_released_file(path):
        model, info = released.load_released_checkpoint(path)
        # the preset gives data and evaluation settings; the architecture comes from the file itself
        arch = {"model.backbone": info["backbone"], "model.dim": info["dim"], "model.n_classes": info["n_classes"],
                "model.extra_clusters": info["extra_clusters"], "model.weights": str(path)}
        cfg = load_preset(preset or preset_for_released(info), arch).with_overrides(overrides)
        name = run_name or f"eval-{path.stem}"
    else:
        model, cfg, _ = checkpoints.load_trained_model(path)
        cfg = load_preset(preset, overrides) if preset else cfg.with_overrides(overrides)
        name = run_name or f"eval-{cfg.name}-seed{cfg.train.seed}"
    device = resolve_device(cfg.train.device)
    model = model.to(device)
    metrics = evaluate_model(model, cfg, split=split, crf=crf)
    run_dir = runs_dir(results_dir) / name
    write_run(run_dir, config=cfg.to_dict(), metrics={"last_step": metrics, "checkpoint": str(path)},
              provenance=provenance(seed=cfg.train.seed, device=str(device), weights=model.backbone.weights_source,
                                    wall_time_s=time.time() - t0))
    return EvalResult(run_dir=run_dir, metrics=metrics)
