"""Typed configuration, named presets and the `paper` / `reference` fidelity switches.

A :class:`Config` is immutable; it is resolved once (preset + overrides), saved as JSON with every result, and
unpacked at the edge: method functions receive plain scalars, never this object (DESIGN.md §10.3-4). Schedule state
that changes during training (decayed DFC weight, FPS sample count) lives in :mod:`depthg.training.schedules`, not here,
because the release mutates its shared config and then saves already-decayed values into checkpoints
(METHOD.md §3.5, §9 #25).

Presets that reproduce the paper's tables use the values of METHOD.md §7.2 (``local_config.yml`` defaults plus the
overrides of ``paper_reproduction.sh`` lines 4-14) with every fidelity aspect set to ``reference``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from depthg.errors import ConfigError

Fidelity = Literal["paper", "reference"]
FIDELITY_VALUES = ("paper", "reference")
SELECT_METRICS = ("cluster/mIoU", "cluster/accuracy", "linear/mIoU", "linear/accuracy")


@dataclass(frozen=True)
class FidelityConfig:
    """One switch per aspect of DESIGN.md §3; ``fidelity=reference`` sets them all."""

    dfc_target: Fidelity = "paper"  # DFC target from depth at the sampled locations vs sign product (METHOD §3.4)
    fps_coords: Fidelity = "paper"  # (x, y) on patch centres in selection order vs transposed off-grid (§4.3)
    depth_lifting: Fidelity = "paper"  # fov in degrees, normalised depth vs tan(90 rad), z=-5d, raw 0..255 (§4.1)
    fps_start: Fidelity = "paper"  # seedable start vs index 0 (§4.2)
    step_unit: Fidelity = "paper"  # iterations vs legacy global steps = 3 x iterations (§2.4, §3.5)
    lhp: Fidelity = "paper"  # 3D kNN, weights normalised by their sum vs global 1% quantile, /(h*w) (§5.2-5.3)
    depth_loading: Fidelity = "paper"  # float depth, missing file is an error vs 8-bit, Potsdam truncation (§1.6)
    knn_features: Fidelity = "paper"  # eval-mode features vs dropout active (§1.5)
    image_interpolation: Fidelity = "paper"  # bilinear image resize vs NEAREST (§1.6, §9 #13)
    crop_format: Fidelity = "paper"  # five-crop images as lossless PNG vs JPEG quality 75 (§1.4)
    partial_batch: Fidelity = "paper"  # drop each epoch's last partial batch vs keep it (drop_last=False, §1.7)
    lhp_wiring: Fidelity = "paper"  # trained LHP projection, shared coords, always added vs projection in no
    #   optimiser (stays at its initialisation), its own sampling coordinates, added only with DFC on (§5.2)

    @classmethod
    def all(cls, value: str) -> FidelityConfig:
        _check_choice("fidelity", value, FIDELITY_VALUES)
        return cls(**{f.name: value for f in fields(cls)})

    @property
    def summary(self) -> str:
        """'paper', 'reference' or 'mixed' (with the aspects that differ from paper)."""
        values = {getattr(self, f.name) for f in fields(self)}
        if len(values) == 1:
            return values.pop()
        ref = [f.name for f in fields(self) if getattr(self, f.name) == "reference"]
        return "mixed(reference: " + ", ".join(ref) + ")"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cocostuff27"
    data_dir: str = ""  # empty: depthg.paths.data_root() (DEPTHG_DATA_DIR or <repo>/data)
    res: int = 224  # training resolution (METHOD §1.6)
    crop_type: str = "five"  # "five" (five-crop derived set, §1.4) or "none"
    crop_ratio: float = 0.5
    num_neighbors: int = 7  # kNN partner rank drawn from 1..num_neighbors (§1.7)
    knn_res: int = 224  # one value for the kNN file name and its computation (§9 #8)
    # the depth model training requires the maps to come from ("" = any); the depth sidecars / the release's
    # _zoedepth.png files say which model made each map (depthg.data.datasets.depth_model_of)
    depth_model: str = ""
    allow_other_depth_model: bool = False  # true: train on depth made by another model than depth_model (warns)
    batch_size: int = 32
    num_workers: int = 4


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "vit_small_patch8"
    weights: str = "hub"  # "hub", "random" (by name only), "bundled" (depthg/assets) or a path (.pth, timm, .ckpt)
    dim: int = 70  # K, the code dimension
    dropout: bool = True  # Dropout2d(0.1) three times in training (§2.1)
    n_classes: int = 27
    extra_clusters: int = 0


@dataclass(frozen=True)
class LossConfig:
    feature_samples: int = 11  # S: the sample grid is S x S
    neg_samples: int = 5
    pointwise: bool = True
    zero_clamp: bool = True
    stabilize: bool = False
    pos_intra_weight: float = 0.67
    pos_intra_shift: float = 0.08
    pos_inter_weight: float = 0.25
    pos_inter_shift: float = 0.02
    neg_inter_weight: float = 0.63
    neg_inter_shift: float = 0.66
    correspondence_weight: float = 1.0
    dfc: bool = True  # depth-feature correlation term on/off
    depth_feat_weight: float = 0.0
    depth_feat_shift: float = 0.0
    depth_sampling: str = "fps"  # "fps" or "random" (STEGO; the release's "none")
    lhp: bool = False  # 3D local hidden positives; off in every released run (§5.2)
    lhp_weight: float = 0.2
    lhp_depth_weight: float = 1.0
    lhp_weight_balance: bool = False
    lhp_neighbourhood: str = "knn3d"  # paper fidelity only: "knn3d" or "window3" (§5.3)
    lhp_k: int = 8


@dataclass(frozen=True)
class ScheduleConfig:
    depth_loss_decay: bool = False
    decay_every_steps: int = 300
    depth_loss_decay_factor: float = 1.0
    fix_depth_feat_shift: bool = False
    fps_sample_decay: bool = False
    fps_sample_decay_every_steps: int = 300
    fps_sample_decay_factor: float = 0.9
    fps_min_samples: int = 0


@dataclass(frozen=True)
class TrainConfig:
    # The release stops at max_steps=7000 legacy global steps = ceil(7000/3) = 2334 iterations (METHOD §2.4).
    iterations: int = 2334
    lr: float = 5e-4
    probe_lr: float = 5e-3
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    bf16: bool = True  # bf16 autocast of the frozen backbone on CUDA (training, kNN features, evaluation)
    tf32: bool = False  # TF32 CUDA matmuls/convolutions; off = true fp32, as the release (Lightning's default)
    checkpoint_every: int = 500
    log_every: int = 10
    val_every: int = 0  # >0: also validate every N iterations (no CRF) and report the best beside the last step
    # "last": the last step is the result; "release": also keep the top-2 checkpoints by select_metric on the
    # validation passes (the evaluation split, as the release's ModelCheckpoint, METHOD §2.4) and evaluate the best
    # with CRF beside the last step (metrics.json "release_selected")
    select: str = "last"
    select_metric: str = "cluster/mIoU"  # "<cluster|linear>/<mIoU|accuracy>"; the release's Potsdam: accuracy
    select_top_k: int = 2
    tensorboard: bool = False
    threads: int = 0  # torch.set_num_threads; 0 leaves the default


@dataclass(frozen=True)
class EvalConfig:
    res: int = 320  # STEGO protocol: 320 px centre crop (METHOD §6.2)
    batch_size: int = 8
    flip: bool = True
    crf: bool = True
    crf_workers: int = 2
    max_images: int = 0  # 0: the whole split
    crf_timeout: float = 120.0  # seconds per image before a CRF worker counts as stuck (depthg.evaluation.crf)


@dataclass(frozen=True)
class Config:
    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)

    def __post_init__(self) -> None:
        _check_choice("loss.depth_sampling", self.loss.depth_sampling, ("fps", "random"))
        _check_choice("loss.lhp_neighbourhood", self.loss.lhp_neighbourhood, ("knn3d", "window3"))
        _check_choice("data.crop_type", self.data.crop_type, ("five", "none"))
        _check_choice("train.select", self.train.select, ("last", "release"))
        _check_choice("train.select_metric", self.train.select_metric, SELECT_METRICS)
        if self.train.select == "release" and self.train.val_every < 1:
            raise ConfigError(
                "train.select=release selects among validation passes: set train.val_every >= 1 "
                "(the release validates every 100 training batches)."
            )
        for f in fields(FidelityConfig):
            _check_choice(f"fidelity.{f.name}", getattr(self.fidelity, f.name), FIDELITY_VALUES)
        validate(self)

    # ---- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return _build(cls, d, prefix="")

    @classmethod
    def from_json(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist.")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def with_overrides(self, overrides: dict[str, Any] | list[str] | None) -> Config:
        return apply_overrides(self, overrides)


# ---- helpers ------------------------------------------------------------------------------------------------


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, choices))}.")


def check_fidelity(value: Any, key: str = "fidelity") -> str:
    """``value`` if it is a fidelity ('paper' or 'reference'); else the one ConfigError every module raises."""
    _check_choice(key, value, FIDELITY_VALUES)
    return value


def _section_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls, d: dict[str, Any], prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping, got {d!r}.")
    hints = _section_types(cls)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; valid keys"
            f"{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(valid)}."
        )
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, prefix + name + ".")
        else:
            kwargs[name] = _coerce(prefix + name, value, tp)
    return cls(**kwargs)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a JSON or command-line value to the field's type, refusing what does not fit."""
    if typing.get_origin(tp) is Literal:
        _check_choice(key, value, typing.get_args(tp))
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}={value!r} is not a boolean (use true or false).")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}={value!r} is not an integer.")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not an integer.") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not a number.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} is not a number.") from None
    if tp is str:
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {tp!r}.")


def apply_overrides(cfg: Config, overrides: dict[str, Any] | list[str] | None) -> Config:
    """Return a new Config with dotted-key overrides applied.

    ``overrides`` is a mapping ``{"loss.dfc": False}`` or a list of ``"loss.dfc=false"`` strings (the CLI form).
    ``fidelity=reference`` (or ``paper``) sets every aspect; ``fidelity.fps_coords=paper`` sets one.
    """
    if not overrides:
        return cfg
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.key=value (e.g. loss.dfc=false).")
            k, v = item.split("=", 1)
            pairs[k.strip()] = v.strip()
        overrides = pairs
    d = cfg.to_dict()
    for key, value in overrides.items():
        if key == "fidelity":
            d["fidelity"] = dataclasses.asdict(FidelityConfig.all(str(value)))
            continue
        if key == "preset":
            raise ConfigError("'preset' cannot be overridden; choose it with --preset.")
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown config section {p!r} in {key!r}; sections: {', '.join(_sections())}.")
            node = node[p]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            section = ".".join(parts[:-1]) or "<root>"
            valid = [k for k, v in node.items() if not isinstance(v, dict)]
            raise ConfigError(f"unknown config key {key!r}; valid keys in {section}: {', '.join(valid)}.")
        node[parts[-1]] = value
    return Config.from_dict(d)


def _sections() -> list[str]:
    return [f.name for f in fields(Config) if dataclasses.is_dataclass(_section_types(Config)[f.name])]


# ---- validation: every numeric field's valid range, checked whenever a Config is built --------------------------


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval; ``None`` is unbounded. Float fields must also be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded (e.g. a learning rate > 0)

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def text(self) -> str:
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is None:
            return low or "any value"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]" if low else f"<= {self.high:g}"


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE = Range(0, low_open=True), Range(0), Range(1)
# Why the less obvious bounds: a patch grid needs >= 8 px (the smallest patch size); the S x S sample grid costs
# S^4 correlation entries per image pair (S = 64: 1.7e7, S = 1000: 1e12 and an allocation of terabytes).
RANGES: dict[str, Range] = {
    "data.res": Range(8),
    "data.crop_ratio": Range(0, 1, low_open=True),
    "data.num_neighbors": AT_LEAST_ONE,
    "data.knn_res": Range(8),
    "data.batch_size": AT_LEAST_ONE,
    "data.num_workers": NON_NEGATIVE,
    "model.dim": AT_LEAST_ONE,
    "model.n_classes": Range(2),
    "model.extra_clusters": NON_NEGATIVE,
    "loss.feature_samples": Range(1, 64),
    "loss.neg_samples": NON_NEGATIVE,
    "loss.lhp_k": AT_LEAST_ONE,
    "loss.lhp_weight": NON_NEGATIVE,
    "loss.lhp_depth_weight": NON_NEGATIVE,
    "schedule.decay_every_steps": AT_LEAST_ONE,
    "schedule.depth_loss_decay_factor": POSITIVE,
    "schedule.fps_sample_decay_every_steps": AT_LEAST_ONE,
    "schedule.fps_sample_decay_factor": Range(0, 1, True),
    "schedule.fps_min_samples": NON_NEGATIVE,
    "train.iterations": NON_NEGATIVE,
    "train.lr": NON_NEGATIVE,  # 0: a frozen head, the untrained control of tests/test_learning.py
    "train.probe_lr": POSITIVE,
    "train.seed": NON_NEGATIVE,
    "train.checkpoint_every": AT_LEAST_ONE,
    "train.log_every": AT_LEAST_ONE,
    "train.val_every": NON_NEGATIVE,
    "train.select_top_k": AT_LEAST_ONE,
    "train.threads": NON_NEGATIVE,
    "eval.res": Range(8),
    "eval.batch_size": AT_LEAST_ONE,
    "eval.crf_workers": NON_NEGATIVE,
    "eval.max_images": NON_NEGATIVE,
    "eval.crf_timeout": POSITIVE,
}


def numeric_fields(cfg: Config) -> dict[str, Any]:
    """Every int/float field of ``cfg`` by dotted key (bools excluded)."""
    out = {}
    for section in fields(cfg):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            for f in fields(value):
                v = getattr(value, f.name)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{section.name}.{f.name}"] = v
    return out


def validate(cfg: Config) -> None:
    """Refuse a value outside its field's range with one message: the key, the value and the valid range."""
    for key, value in numeric_fields(cfg).items():
        rule = RANGES.get(key, Range())
        kind = "an integer" if isinstance(value, int) else "a finite number"
        if (isinstance(value, float) and not math.isfinite(value)) or not rule.holds(value):
            raise ConfigError(
                f"{key}={value!r} is out of range: it must be {kind} {rule.text()}.".replace(" any value", "")
            )
