"""Example predictions for figures: both probes on the first images of the evaluation split, with the cluster ids
mapped to classes by dataset-level Hungarian matching, as arrays :func:`depthg.reporting.plots.predictions_grid`
draws.

Shapes: n shown images, R evaluation resolution.
"""

from __future__ import annotations

import numpy as np
import torch

from depthg.data.pairs import build_eval_set
from depthg.data.transforms import unnormalize
from depthg.evaluation.evaluate import predict_logits
from depthg.evaluation.metrics import UnsupervisedMetrics


@torch.no_grad()
def prediction_examples(model, cfg, *, n_show: int = 4, device: str | torch.device = "cpu") -> dict:
    """Cluster- and linear-probe predictions on the evaluation split (``cfg.eval.max_images`` of it, no CRF), the
    cluster ids mapped to classes by Hungarian matching over all those images
    (:meth:`depthg.evaluation.metrics.UnsupervisedMetrics.map_clusters`); returns the first ``n_show`` images (uint8
    [n,R,R,3]), labels, mapped cluster and linear predictions [n,R,R] and the matched accuracy/mIoU."""
    model = model.to(device).eval()
    dataset = build_eval_set(cfg)
    n = min(cfg.eval.max_images or len(dataset), len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=cfg.eval.batch_size)
    scores = UnsupervisedMetrics(cfg.model.n_classes, extra_clusters=cfg.model.extra_clusters)
    shown = {"image": [], "label": [], "cluster": [], "linear": []}
    for batch in loader:
        img, label = batch["img"].to(device), batch["label"]
        cluster_lp, linear_lp = predict_logits(model, img, flip=cfg.eval.flip, size=label.shape[-2:])
        cluster = cluster_lp.argmax(1).cpu()
        scores.update(cluster, label)
        take = max(0, min(n_show - len(shown["image"]), len(img)))
        if take:
            shown["image"] += list(unnormalize(img[:take]).cpu().numpy())  # uint8 [take,R,R,3]
            shown["label"] += list(label[:take].numpy())
            shown["cluster"] += list(cluster[:take].numpy())
            shown["linear"] += list(linear_lp[:take].argmax(1).cpu().numpy())
    out = {k: np.stack(v) for k, v in shown.items()}
    out["cluster"] = scores.map_clusters(out["cluster"])  # dataset-level matching over all n images
    result = scores.compute()
    out.update(accuracy=result["accuracy"], mIoU=result["mIoU"], images=n)
    return out
