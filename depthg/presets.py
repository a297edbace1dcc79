"""Named presets: the paper's runs (reference fidelity, values of the release's ``paper_reproduction.sh`` and
``local_config.yml``, METHOD.md §7.2) and the embedded synthetic default. Each preset overrides only what differs
from the :mod:`depthg.config` defaults. The one owner of preset names: the CLI, the notebooks and the evaluation of
released checkpoints all look presets up here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from depthg.config import (
    Config,
    DataConfig,
    EvalConfig,
    FidelityConfig,
    LossConfig,
    ModelConfig,
    ScheduleConfig,
    TrainConfig,
)
from depthg.errors import ConfigError

_REFERENCE = FidelityConfig.all("reference")


# The release's depth maps: ZoeDepth ZoeD_M12_N (NYU), whose transformers twin this is (METHOD.md §1.3).
RELEASE_DEPTH_MODEL = "Intel/zoedepth-nyu"


def _paper_run(
    name: str,
    *,
    data: dict,
    model: dict,
    loss: dict,
    schedule: dict,
    val_every: int = 100,
    select_metric: str = "cluster/mIoU",
) -> Config:
    """A paper-table run: local_config.yml defaults + paper_reproduction.sh overrides, reference fidelity.

    As the release also: fp32 backbone with TF32 off (Lightning's default precision), validation every ``val_every``
    training batches (val_freq; Lightning counts batches, not its 3x global steps, METHOD §2.4) keeping the top-2
    checkpoints by ``select_metric`` (ModelCheckpoint, DG src/train_segmentation.py:693-711), and depth from
    ZoeD_M12_N."""
    return Config(
        name=name,
        data=replace(DataConfig(depth_model=RELEASE_DEPTH_MODEL), **data),
        model=replace(ModelConfig(), **model),
        loss=replace(LossConfig(), **loss),
        schedule=replace(ScheduleConfig(), **schedule),
        train=TrainConfig(bf16=False, tf32=False, select="release", val_every=val_every, select_metric=select_metric),
        fidelity=_REFERENCE,
    )


def _presets() -> dict[str, Config]:
    p = {}
    # paper_reproduction.sh l.5 (METHOD §7.2)
    p["cocostuff27_vits8"] = _paper_run(
        "cocostuff27_vits8",
        data=dict(dataset="cocostuff27"),
        model=dict(backbone="vit_small_patch8", dim=70, n_classes=27),
        loss=dict(
            pos_intra_weight=0.58,
            pos_intra_shift=0.07,
            pos_inter_weight=0.36,
            pos_inter_shift=0.025,
            neg_inter_weight=0.7000000000000001,
            neg_inter_shift=0.761,
            depth_feat_weight=0.19,
            depth_feat_shift=0.03,
            depth_sampling="fps",
        ),
        schedule=dict(
            depth_loss_decay=True,
            decay_every_steps=250,
            depth_loss_decay_factor=0.6,
            fps_sample_decay=True,
            fps_sample_decay_every_steps=1000,
            fps_sample_decay_factor=0.9,
        ),
    )
    # paper_reproduction.sh l.8
    p["cocostuff27_vitb8"] = _paper_run(
        "cocostuff27_vitb8",
        data=dict(dataset="cocostuff27"),
        model=dict(backbone="vit_base_patch8", dim=90, n_classes=27),
        loss=dict(
            feature_samples=12,
            pos_intra_weight=0.23052367315917113,
            pos_intra_shift=0.12326312284078644,
            pos_inter_weight=1.0500945312858674,
            pos_inter_shift=0.21028290947990444,
            neg_inter_weight=0.2485038032028848,
            neg_inter_shift=0.9748103425096648,
            depth_feat_weight=0.16026274975444096,
            depth_feat_shift=0.035909146298813595,
            depth_sampling="fps",
        ),
        schedule=dict(
            depth_loss_decay=True,
            decay_every_steps=300,
            depth_loss_decay_factor=0.64,
            fps_sample_decay=True,
            fps_sample_decay_every_steps=1000,
            fps_sample_decay_factor=1.0,
        ),
        val_every=50,  # val_freq 50 for COCO ViT-B (METHOD §7.2)
    )
    # paper_reproduction.sh l.11: no FPS ("none" = random sampling), pointwise off
    p["cityscapes_vitb8"] = _paper_run(
        "cityscapes_vitb8",
        data=dict(dataset="cityscapes"),
        model=dict(backbone="vit_base_patch8", dim=100, n_classes=27),
        loss=dict(
            pointwise=False,
            pos_intra_weight=0.95,
            pos_intra_shift=0.39,
            pos_inter_weight=1.02,
            pos_inter_shift=0.25,
            neg_inter_weight=0.5700000000000001,
            neg_inter_shift=0.26,
            depth_feat_weight=0.09,
            depth_feat_shift=0.03,
            depth_sampling="random",
        ),
        schedule=dict(depth_loss_decay=True, decay_every_steps=400, depth_loss_decay_factor=0.8),
    )
    # paper_reproduction.sh l.14: batch 16; the decay factor 1 makes the decay a no-op
    p["potsdam_vits8"] = _paper_run(
        "potsdam_vits8",
        data=dict(dataset="potsdam", batch_size=16),
        model=dict(backbone="vit_small_patch8", dim=90, n_classes=3),
        loss=dict(
            pos_intra_weight=0.61,
            pos_intra_shift=0.2,
            pos_inter_weight=0.34,
            pos_inter_shift=0.09,
            neg_inter_weight=0.72,
            neg_inter_shift=0.63,
            depth_feat_weight=0.13,
            depth_feat_shift=0.14,
            depth_sampling="fps",
        ),
        schedule=dict(depth_loss_decay=True, decay_every_steps=200, depth_loss_decay_factor=1.0),
        select_metric="cluster/accuracy",  # the release monitors test/cluster/Accuracy for Potsdam
    )
    # The embedded default: the synthetic RGB-D world on CPU in minutes, paper fidelity. A small ViT self-supervised
    # on this world's training images (weights "bundled", depthg/assets; "random" by name) at 112 px (14 x 14
    # patches); S = 7 samples 49 of 196 patches (25%, as 121/784 at the paper's setting). The shifts were set for
    # the random-weight backbone: its correlations average ~0.2 (DINO's are lower), and with DINO's shifts every
    # term pulled, collapsing the codes to one direction (top singular value 98% of the variance, measured).
    # Sampling is random, as in the released Cityscapes run: on this world FPS lowered the cluster mIoU in our
    # measurements; the ablation notebook reports +FPS on its own.
    p["synthetic"] = Config(
        name="synthetic",
        data=DataConfig(dataset="synthetic", res=112, crop_type="none", knn_res=112, batch_size=8, num_workers=0),
        model=ModelConfig(backbone="vit_tiny_patch8", weights="bundled", dim=32, n_classes=6),
        loss=replace(
            LossConfig(),
            feature_samples=7,
            pos_intra_shift=0.45,
            pos_inter_shift=0.4,
            neg_inter_shift=0.55,
            depth_feat_weight=0.15,
            depth_feat_shift=0.0,
            depth_sampling="random",
        ),
        schedule=ScheduleConfig(depth_loss_decay=True, decay_every_steps=100, depth_loss_decay_factor=0.8),
        # one thread: on 2 shared cores torch's default of 2 threads ran this small model ~8x slower (measured)
        train=TrainConfig(iterations=300, checkpoint_every=100, log_every=10, bf16=False, threads=1),
        eval=EvalConfig(res=112, batch_size=16, crf=True, crf_workers=2),
        fidelity=FidelityConfig(),
    )
    return p


PRESETS: dict[str, Config] = _presets()
# The paper's runs by (dataset, backbone) (DG src/configs/eval_config.yml:15-19): released checkpoints and the paper
# tables find their preset here.
PAPER_PRESETS: dict[tuple[str, str], str] = {
    ("cocostuff27", "vit_small_patch8"): "cocostuff27_vits8",
    ("cocostuff27", "vit_base_patch8"): "cocostuff27_vitb8",
    ("cityscapes", "vit_base_patch8"): "cityscapes_vitb8",
    ("potsdam", "vit_small_patch8"): "potsdam_vits8",
}
# The preset each dataset trains with by default (paper_reproduction.sh runs, METHOD.md §7.2).
DEFAULT_PRESETS: dict[str, str] = {
    "synthetic": "synthetic",
    "cocostuff27": "cocostuff27_vits8",
    "cityscapes": "cityscapes_vitb8",
    "potsdam": "potsdam_vits8",
    "potsdamraw": "potsdam_vits8",
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def load_preset(name: str, overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """The named preset with overrides applied; an unknown name is an error listing the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}.")
    return PRESETS[name].with_overrides(overrides)
