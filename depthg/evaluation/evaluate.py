"""Evaluation with STEGO's protocol (METHOD.md §6.2; DESIGN.md §7).

``python -m depthg eval CHECKPOINT [--crf/--no-crf]``: the evaluation split at a 320 px centre crop, codes
averaged over a horizontal flip, both probes' logits upsampled bilinearly to the label size, DenseCRF in worker
processes (:class:`depthg.evaluation.crf.CRFPool`), dataset-level Hungarian matching for the cluster probe and plain
argmax
for the linear probe. Metrics are reported with and without CRF, so the CRF's share is visible (ANCHORS.md §0).

This evaluates the model it is given: the last training step. A best-on-validation number, if someone wants one,
must be computed beside it and labelled so (METHOD.md §2.4, §9 #12).

Shapes: B batch, K code dim, h/w code grid, R evaluation resolution, n classes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from depthg.config import Config
from depthg.data.pairs import build_eval_set
from depthg.data.transforms import unnormalize
from depthg.device import loader_workers, resolve_device
from depthg.errors import ConfigError, DataError, OutputError
from depthg.evaluation import released
from depthg.evaluation.crf import CRFPool
from depthg.evaluation.metrics import UnsupervisedMetrics
from depthg.model.backbone import set_tf32
from depthg.paths import claim_run_dir, file_tag, runs_dir
from depthg.paths import run_name as default_run_name
from depthg.presets import PAPER_PRESETS, load_preset
from depthg.runs import provenance, run_lock, write_run
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
def evaluate_model(
    model,
    cfg: Config,
    *,
    split: str = "val",
    crf: bool | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict:
    """Metrics of ``model`` on the evaluation split: {cluster, linear} x {crf, no crf} (+ timing)."""
    crf = cfg.eval.crf if crf is None else crf
    device = torch.device(device) if device is not None else next(model.head.parameters()).device
    model.eval()
    # the run's precision governs evaluation too (train.bf16, train.tf32; reference: fp32 as the release)
    model.backbone.autocast = cfg.train.bf16
    set_tf32(cfg.train.tf32)
    dataset = build_eval_set(cfg, split=split)
    split_size = len(dataset)
    if cfg.eval.max_images:
        dataset = torch.utils.data.Subset(dataset, range(min(cfg.eval.max_images, len(dataset))))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        shuffle=False,
        num_workers=loader_workers(cfg.data.num_workers),
        generator=torch.Generator(),
    )  # leaves the global RNG (training) alone
    n, extra = cfg.model.n_classes, cfg.model.extra_clusters
    scores = {
        "cluster": UnsupervisedMetrics(n, extra_clusters=extra),
        "linear": UnsupervisedMetrics(n, hungarian=False),
    }
    if crf:
        scores.update(
            {
                "cluster_crf": UnsupervisedMetrics(n, extra_clusters=extra),
                "linear_crf": UnsupervisedMetrics(n, hungarian=False),
            }
        )
    t0, images, lost = time.time(), 0, []
    keys = dataset_keys(dataset)
    pool = CRFPool(cfg.eval.crf_workers, timeout=cfg.eval.crf_timeout) if crf else None
    try:
        for batch in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True):
            img, label = batch["img"].to(device), batch["label"]
            cluster_lp, linear_lp = predict_logits(model, img, flip=cfg.eval.flip, size=label.shape[-2:])
            scores["cluster"].update(cluster_lp.argmax(1).cpu(), label)
            scores["linear"].update(linear_lp.argmax(1).cpu(), label)
            if pool is not None:
                rgb = unnormalize(img.cpu()).numpy()  # uint8 [B,R,R,3]: the CRF sees the un-normalised image
                for probe, lp in (("cluster", cluster_lp), ("linear", linear_lp)):
                    scores[f"{probe}_crf"].update(_crf_argmax(pool, rgb, lp, probe, batch["index"], keys, lost), label)
            images += img.shape[0]
    finally:
        if pool is not None:
            pool.close()
    if images != len(dataset):  # a loader that silently dropped items would report a subset as the split
        raise DataError(f"evaluation of {cfg.data.dataset}/{split} saw {images} of its {len(dataset)} images.")
    info = {
        "split": split,
        "images": images,
        "split_images": split_size,
        "crf": crf,
        "flip": cfg.eval.flip,
        "res": cfg.eval.res,
        "seconds": round(time.time() - t0, 2),
        "images_per_s": round(images / max(time.time() - t0, 1e-9), 3),
    }
    if crf:
        info["crf_lost"] = lost  # images whose CRF result is their plain prediction (worker fault)
    if int(scores["linear"].stats.sum()) == 0:
        # nothing to score (an unlabelled directory set): say so instead of accuracy/mIoU of an empty matrix (NaN)
        return {
            "unlabelled": f"no labelled pixels in {cfg.data.dataset}/{split}: accuracy and mIoU need labels "
            f"(directory sets: labels/{split}/<image stem>.png with class ids 0..n_classes-1, "
            f"255 = ignore); the model was trained, nothing was scored.",
            "eval": info,
        }
    out = {k: _summary(m.compute()) for k, m in scores.items()}
    out["eval"] = info
    return out


def dataset_keys(dataset) -> list[str]:
    """The image keys of an evaluation set (or its Subset), for naming images in records and errors."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset  # items keep base indices
    source = getattr(base, "source", None)
    return list(source.keys()) if hasattr(source, "keys") else [str(i) for i in range(len(base))]


def _crf_argmax(
    pool: CRFPool, rgb, log_probs: torch.Tensor, probe: str, index: torch.Tensor, keys: list[str], lost: list[dict]
) -> torch.Tensor:
    """CRF labels [B,H,W]; an image whose CRF failed keeps its plain argmax and is recorded (and warned about)."""
    q, failed = pool.run(rgb, log_probs)
    labels = log_probs.argmax(1).cpu()
    for b, qb in enumerate(q):
        if qb is not None:
            labels[b] = torch.from_numpy(qb.argmax(0))
    for b, reason in sorted(failed.items()):
        key = keys[int(index[b])]
        lost.append({"image": key, "probe": probe, "reason": reason})
        warnings.warn(f"CRF lost for image {key} ({probe} probe): {reason}; its plain prediction is used", stacklevel=2)
    return labels


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
    raise ConfigError(
        f"{info.get('path')}: cannot tell which preset fits dataset {key[0]!r} with backbone "
        f"{key[1]!r}; pass --preset NAME (and data.dataset=... if needed)."
    )


def evaluate_checkpoint(
    path: str | Path,
    *,
    crf: bool | None = None,
    preset: str | None = None,
    overrides: list[str] | None = None,
    split: str = "val",
    run_name: str | None = None,
    results_dir: str | None = None,
    overwrite: bool = False,
    report: Callable[[dict], None] | None = None,
) -> EvalResult:
    """Evaluate this project's checkpoint or an authors' released Lightning .ckpt; write results/runs/<name>/.

    The default name is ``eval-`` + the training run's name (:func:`depthg.paths.run_name`), or ``eval-<dataset>-
    <file stem>`` for a released file; a folder of another config is refused unless ``overwrite``. ``report`` sees
    the metrics before they are written, so a full disk or read-only folder loses no result.
    """

    t0 = time.time()
    path = Path(path)
    if released.is_released_file(path):
        model, info = released.load_released_checkpoint(path)
        # the preset gives data and evaluation settings; the architecture comes from the file itself
        arch = {
            "model.backbone": info["backbone"],
            "model.dim": info["dim"],
            "model.n_classes": info["n_classes"],
            "model.extra_clusters": info["extra_clusters"],
            "model.weights": str(path),
        }
        cfg = load_preset(preset or preset_for_released(info), arch).with_overrides(overrides)
        name = run_name or "-".join(("eval", file_tag(cfg.data.dataset), file_tag(path.stem)))
    else:
        model, cfg, _ = checkpoints.load_trained_model(path)
        cfg = load_preset(preset, overrides) if preset else cfg.with_overrides(overrides)
        name = run_name or default_run_name(cfg.data.dataset, cfg.name, cfg.train.seed, kind="eval")
    if split != "val" and not run_name:
        name += f"-{split}"
    # the folder is checked before the (long) evaluation: another config's results are never replaced silently
    run_dir = claim_run_dir(runs_dir(results_dir) / name, cfg.to_dict(), overwrite=overwrite)
    device = resolve_device(cfg.train.device)
    model = model.to(device)
    with run_lock(run_dir):  # held from the start, so a second writer is refused before any work
        metrics = evaluate_model(model, cfg, split=split, crf=crf)
        if report is not None:
            report(metrics)
        try:
            write_run(
                run_dir,
                config=cfg.to_dict(),
                metrics={"last_step": metrics, "checkpoint": str(path)},
                provenance=provenance(
                    seed=cfg.train.seed,
                    device=str(device),
                    weights=model.backbone.weights_source,
                    wall_time_s=time.time() - t0,
                ),
            )
        except OSError as err:
            raise OutputError(
                f"cannot write the results to {run_dir} ({err.strerror}); "
                f"{'they are printed above' if report else 'nothing was saved'}."
            ) from None
    return EvalResult(run_dir=run_dir, metrics=metrics)
