"""The project's own training iteration, set up for timing: a :class:`depthg.training.train.Run` on random inputs.

:func:`bench_run` builds the model, step, optimisers and schedule exactly as training does
(:func:`depthg.training.train.build_training`, :func:`~depthg.training.train.make_schedule`), with no run folder and
one process; ``precision`` sets the backbone's bf16 autocast ("bf16", CUDA only, the paper's) or not ("fp32"; the
reference precision). None leaves it as training builds it: ``build_training`` does not read ``train.bf16`` today,
so the backbone autocasts on CUDA in every run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from depthg.config import Config
from depthg.device import DistInfo
from depthg.training.train import Run, build_training, make_schedule


def bench_run(cfg: Config, device: torch.device, precision: str | None = None) -> Run:
    """A training :class:`Run` of ``cfg`` on ``device`` (see the module docstring for ``precision``)."""
    torch.manual_seed(0)
    model, step, optimizers = build_training(cfg, device)
    if precision is not None:
        model.backbone.autocast = precision == "bf16"
    return Run(
        cfg=cfg,
        device=device,
        info=DistInfo(),
        run_dir=Path("-"),
        model=model,
        step=step,
        ddp_step=step,
        optimizers=optimizers,
        schedule=make_schedule(cfg).start(),
        generator=torch.Generator(device=device).manual_seed(0),
    )


def random_batch(B: int, res: int, n_classes: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Images, kNN partners, labels and 0..255 depth maps of the real shapes, drawn at random, on ``device``."""
    g = torch.Generator().manual_seed(0)
    batch = {
        "img": torch.randn(B, 3, res, res, generator=g),
        "img_pos": torch.randn(B, 3, res, res, generator=g),
        "label": torch.randint(0, n_classes, (B, res, res), generator=g),
        "depth": torch.rand(B, 1, res, res, generator=g) * 255,
        "depth_pos": torch.rand(B, 1, res, res, generator=g) * 255,
    }
    return {k: v.to(device) for k, v in batch.items()}
