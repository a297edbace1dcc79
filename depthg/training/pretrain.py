"""Self-supervised pretraining of the synthetic world's backbone: DINO self-distillation (Caron et al., ICCV 2021).

The synthetic world has no ImageNet: this stage gives its small ViT what DINO's ImageNet training gives the real
presets, features whose correlations are worth distilling. Training images only (scene indices 0..n_images-1 of the
world seed, never VAL_OFFSET + i), no labels.

Shapes: N images, B batch, V views, H = W = res (rendered size), g / l global / local crop size, K prototypes.

Recipe (DINO §3-4 and its Appendix, scaled down to a CPU budget): student and EMA teacher of the same ViT, each
with a projection head (:mod:`depthg.training.dino`); 2 global crops (scale ``global_scale`` of the image area) for
both, ``n_local`` local crops (``local_scale``) for the student only (:mod:`depthg.training.multicrop`); flips,
brightness/contrast/saturation jitter and grayscale. AdamW with a linear warm-up then cosine learning rate, cosine
weight decay, cosine EMA momentum towards 1, teacher temperature warmed up linearly. Brightness jitter matters here:
it asks for features that do not change across a shadow on one surface. Two departures from DINO v1, both
switchable: the teacher is centred by Sinkhorn-Knopp (``centering``, as DINOv2; DINO's running centre flattened the
targets of this world's near-identical scenes into the uniform distribution, a loss stuck at log K within 50
iterations, measured), and iBOT's masked patch loss (``patch_weight``) trains the patch tokens that STEGO and DepthG
distil.

Determinism: every random choice of iteration ``it`` (batch indices, crops, jitter) comes from a generator seeded
with (seed, it), so a run is a pure function of its parameters and the thread count, and a resumed run draws exactly
what an uninterrupted one would; the checkpoint still stores torch's global RNG state for anything else.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from tqdm.auto import tqdm

from depthg.data.synthetic import render_scene
from depthg.data.synthetic.world import VERSION as WORLD_VERSION
from depthg.device import resolve_device
from depthg.errors import ConfigError, TrainingError
from depthg.files import atomic_write, file_sha256, write_json
from depthg.model.backbone import DinoBackbone
from depthg.model.weights import read_checkpoint
from depthg.paths import bundled_weights_path
from depthg.runs import provenance
from depthg.training.dino import DinoHead, DinoLoss, PatchLoss
from depthg.training.multicrop import generator, mask_patches, patch_mask, views

FORMAT = "depthg-pretrain-v1"


@dataclass(frozen=True)
class PretrainConfig:
    backbone: str = "vit_tiny_patch8"
    n_images: int = 3000  # training scenes 0..n_images-1 of the world
    world_seed: int = 0  # the synthetic world's seed (the main job's world)
    res: int = 112  # rendered size, the synthetic preset's training size
    global_px: int = 64
    local_px: int = 32
    n_local: int = 4
    global_scale: tuple[float, float] = (0.35, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.35)
    iterations: int = 400
    batch_size: int = 32
    lr: float = 5e-4  # peak learning rate after the warm-up
    min_lr: float = 1e-5
    warmup_frac: float = 0.1
    weight_decay: tuple[float, float] = (0.04, 0.4)  # cosine from/to
    momentum: tuple[float, float] = (0.99, 1.0)  # teacher EMA momentum, cosine from/to
    teacher_temp: tuple[float, float] = (0.04, 0.07)  # linear warm-up from/to, then constant
    teacher_temp_warmup_frac: float = 0.3
    student_temp: float = 0.1
    centering: str = "sinkhorn"  # teacher centring: "sinkhorn" (DINOv2) or "center" (DINO's running mean)
    patch_weight: float = 1.0  # weight of iBOT's masked patch loss (0: DINO alone)
    mask_prob: float = 0.5  # share of global crops that the student sees with masked patches
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # share of the patches masked in such a crop
    out_dim: int = 1024
    head_bn: bool = False  # batch norm in the projection heads (DINO's use_bn)
    clip_grad: float = 3.0
    seed: int = 0

    def __post_init__(self):
        for name in ("n_images", "iterations", "batch_size", "global_px", "local_px"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pretrain {name} must be >= 1, got {getattr(self, name)}")
        if self.centering not in ("sinkhorn", "center"):
            raise ConfigError(f"pretrain centering must be 'sinkhorn' or 'center', got {self.centering!r}")
        if self.patch_weight < 0:
            raise ConfigError(f"pretrain patch_weight must be >= 0, got {self.patch_weight}")
        if self.n_local < 1:
            raise ConfigError(f"pretrain n_local must be >= 1 (DINO needs student-only views), got {self.n_local}")


def cosine(start: float, end: float, n: int, warmup: int = 0, warmup_from: float = 0.0) -> np.ndarray:
    """Per-iteration values [n]: linear from ``warmup_from`` to ``start`` over ``warmup`` iterations, then a half
    cosine from ``start`` to ``end`` (DINO utils.cosine_scheduler's shape)."""
    warm = np.linspace(warmup_from, start, warmup, endpoint=False)
    t = np.arange(n - warmup) / max(n - warmup - 1, 1)
    return np.concatenate([warm, end + 0.5 * (start - end) * (1 + np.cos(np.pi * t))])


def schedules(cfg: PretrainConfig) -> dict[str, np.ndarray]:
    n = cfg.iterations
    warm = int(cfg.warmup_frac * n)
    tt_warm = int(cfg.teacher_temp_warmup_frac * n)
    tt = np.concatenate([np.linspace(*cfg.teacher_temp, tt_warm), np.full(n - tt_warm, cfg.teacher_temp[1])])
    return dict(
        lr=cosine(cfg.lr, cfg.min_lr, n, warm),
        wd=cosine(*cfg.weight_decay, n),
        momentum=cosine(*cfg.momentum, n),
        teacher_temp=tt,
    )


def render_images(cfg: PretrainConfig, *, progress: bool = True) -> torch.Tensor:
    """The training images [N,H,W,3] uint8, rendered (the world is a pure function of seed and index)."""
    out = np.empty((cfg.n_images, cfg.res, cfg.res, 3), np.uint8)
    for i in tqdm(range(cfg.n_images), desc="pretrain: rendering", disable=not progress, mininterval=5):
        out[i] = render_scene(cfg.world_seed, i, cfg.res)["image"]
    return torch.from_numpy(out)


def tokens(backbone: DinoBackbone, x: torch.Tensor) -> torch.Tensor:
    """All tokens [B,T,C] of the last block after the final norm (CLS first), with gradients (DinoBackbone.forward
    is no_grad).

    The embedding is the backbone's own (position embeddings interpolated DINO's way), so crops of any size train
    exactly the network that DinoBackbone later runs at the preset's resolution."""
    p = backbone.patch_size
    t = backbone._embed(x, (x.shape[2] // p, x.shape[3] // p))
    for block in backbone.vit.blocks:
        t = block(t)
    return backbone.vit.norm(t)


class _Nets(torch.nn.Module):
    """Student and teacher backbones and heads, plus the loss centre: one state dict for the checkpoint."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        # "random" uses a fixed seed: pretraining starts from the very network the random baseline uses
        self.student = DinoBackbone(cfg.backbone, "random")
        self.student.vit.requires_grad_(True)
        self.student_head = DinoHead(self.student.embed_dim, out_dim=cfg.out_dim, batch_norm=cfg.head_bn)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.loss = DinoLoss(cfg.out_dim, student_temp=cfg.student_temp, centering=cfg.centering)
        self.patch_loss = PatchLoss(cfg.out_dim, student_temp=cfg.student_temp, centering=cfg.centering)

    @property
    def device(self) -> torch.device:
        return self.loss.center.device

    def student_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.student.vit.parameters()) + list(self.student_head.parameters())

    def teacher_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.teacher.vit.parameters()) + list(self.teacher_head.parameters())


def _optimizer(nets: _Nets) -> torch.optim.AdamW:
    # no weight decay on biases and norms (DINO utils.get_params_groups)
    decay = [p for p in nets.student_parameters() if p.ndim > 1]
    no_decay = [p for p in nets.student_parameters() if p.ndim <= 1]
    return torch.optim.AdamW([dict(params=decay), dict(params=no_decay, weight_decay=0.0)], lr=0.0)


def _step(nets: _Nets, opt, images, cfg: PretrainConfig, it: int, sched: dict, *, update: bool = True) -> float:
    """One iteration: loss of the views of ``it``, a student step and the teacher EMA (``update``)."""
    dev = nets.device
    # the crops are drawn and cut on the CPU, so every device trains on the same views; only the nets move
    vs = [v.to(dev, non_blocking=True) for v in views(images, cfg, it)]
    B, p, temp = cfg.batch_size, nets.student.patch_size, float(sched["teacher_temp"][it])
    glob = torch.cat(vs[:2])  # [2B,3,g,g]
    dense = cfg.patch_weight > 0
    keep = slice(None) if dense else slice(0, 1)  # every token for the patch loss, else CLS only
    with torch.no_grad():
        t_out = nets.teacher_head(tokens(nets.teacher, glob)[:, keep])  # [2B,T',K]
    if dense:  # its own stream of draws, apart from the crops'
        mask = patch_mask(cfg, 2 * B, cfg.global_px // p, generator(cfg.seed, -(10**6) - it)).to(dev)
        glob = mask_patches(glob, mask, p)
    s_glob = nets.student_head(tokens(nets.student, glob)[:, keep])  # [2B,T',K]
    s_loc = nets.student_head(tokens(nets.student, torch.cat(vs[2:]))[:, 0])  # [n_local*B,K]
    s_out = torch.cat([s_glob[:, 0], s_loc]).view(2 + cfg.n_local, B, -1)
    loss = nets.loss(s_out, t_out[:, 0].view(2, B, -1), temp)
    if dense:
        loss = loss + cfg.patch_weight * nets.patch_loss(s_glob[:, 1:], t_out[:, 1:], mask, temp)
    if not torch.isfinite(loss):
        raise TrainingError(f"pretraining loss is {loss.item()} at iteration {it}; lower the learning rate")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if not update:
        return loss.item()
    torch.nn.utils.clip_grad_norm_(nets.student_parameters(), cfg.clip_grad)
    opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = float(sched["lr"][it])
    opt.param_groups[0]["weight_decay"] = float(sched["wd"][it])
    opt.step()
    with torch.no_grad():  # teacher = m * teacher + (1 - m) * student
        m = float(sched["momentum"][it])
        torch._foreach_lerp_(nets.teacher_parameters(), nets.student_parameters(), 1 - m)
    return loss.item()


def estimate_seconds(cfg: PretrainConfig, images: torch.Tensor, n: int = 3, device: str = "cpu") -> float:
    """Measured seconds per iteration: ``n`` forward/backward passes on throwaway copies (the first one discarded)."""
    nets = _Nets(cfg).to(resolve_device(device))
    opt, sched = _optimizer(nets), schedules(cfg)
    _step(nets, opt, images, cfg, 0, sched, update=False)
    t0 = time.perf_counter()
    for it in range(1, n + 1):
        _step(nets, opt, images, cfg, it % cfg.iterations, sched, update=False)
    if nets.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def _save_checkpoint(path: Path, **state) -> None:
    with atomic_write(path, fsync=True) as tmp:  # a killed run leaves the previous checkpoint intact
        torch.save(state, tmp)


def pretrain(
    cfg: PretrainConfig,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
    estimate: bool = True,
    stop_at: int | None = None,
    device: str = "cpu",
) -> Path:
    """Run DINO pretraining and write the teacher backbone to ``out`` (.safetensors, a timm ViT state dict that
    :class:`DinoBackbone` loads as ``weights``) plus ``out`` with suffix .json (the manifest). Returns ``out``.

    ``checkpoint`` (default: ``out`` + .ckpt): written atomically every ``checkpoint_every`` iterations and resumed
    from when it exists with the same parameters; removed once the weights of the full schedule are written. The
    thread count is part of the result (float sums depend on it), so it is recorded and a resume with another count
    is refused. ``stop_at``: stop after that many of the schedule's iterations, keep the checkpoint (a later run
    without it resumes to the end) and write the teacher of that iteration, marked incomplete in the manifest.
    ``device``: where the nets train ("cpu", "cuda", "auto"); like the thread count it is part of the result (a
    GPU's float sums differ), so a non-CPU device is recorded and a resume on another one is refused."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"pretrain output {out} must end in .safetensors")
    if stop_at is not None and not 0 < stop_at <= cfg.iterations:
        raise ConfigError(f"pretrain stop_at must be in 1..{cfg.iterations} (iterations), got {stop_at}")
    end = stop_at or cfg.iterations
    ckpt = Path(checkpoint) if checkpoint else out.with_name(out.name + ".ckpt")
    dev = resolve_device(device)
    params = dict(asdict(cfg), format=FORMAT, threads=torch.get_num_threads())
    if dev.type != "cpu":  # recorded only off the CPU, so CPU checkpoints and manifests keep their parameters
        params["device"] = dev.type
    t_start = time.perf_counter()
    images = render_images(cfg, progress=progress)
    render_s = time.perf_counter() - t_start
    torch.manual_seed(cfg.seed)
    nets, sched = _Nets(cfg).to(dev), schedules(cfg)
    opt = _optimizer(nets)
    start, losses, elapsed = 0, [], 0.0
    if ckpt.is_file():
        state = _load_checkpoint(ckpt, params)
        nets.load_state_dict(state["nets"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start, losses, elapsed = state["iteration"], state["losses"], state["elapsed_s"]
        if start > end:
            raise TrainingError(f"checkpoint {ckpt} is at iteration {start}, past stop_at={stop_at}")
        print(f"pretrain: resuming from {ckpt} at iteration {start}/{cfg.iterations}", flush=True)
    if estimate and start < end:
        per_it = estimate_seconds(cfg, images, device=str(dev))
        where = f"{torch.get_num_threads()} threads" if dev.type == "cpu" else str(dev)
        print(
            f"pretrain: {end - start} iterations of batch {cfg.batch_size} x {2 + cfg.n_local} views "
            f"on {where}: about {per_it * (end - start) / 60:.1f} min "
            f"({per_it:.2f} s/iteration measured; rendering took {render_s:.0f} s)",
            flush=True,
        )
    t0 = time.perf_counter()
    bar = tqdm(range(start, end), desc="pretrain", disable=not progress, initial=start, total=end, mininterval=10)
    for it in bar:
        losses.append(_step(nets, opt, images, cfg, it, sched))
        rate = cfg.batch_size * (it + 1 - start) / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", img_s=f"{rate:.1f}", refresh=False)
        if ((it + 1) % checkpoint_every == 0 or it + 1 == stop_at) and it + 1 < cfg.iterations:
            _save_checkpoint(
                ckpt,
                params=params,
                nets=nets.state_dict(),
                optimizer=opt.state_dict(),
                iteration=it + 1,
                losses=losses,
                torch_rng=torch.get_rng_state(),
                elapsed_s=elapsed + time.perf_counter() - t0,
            )
    bar.close()
    elapsed += time.perf_counter() - t0
    _export(
        nets.teacher, cfg, params, out, losses, train_s=elapsed, render_s=render_s, wall_s=time.perf_counter() - t_start
    )
    if end == cfg.iterations:
        ckpt.unlink(missing_ok=True)
    return out


def _load_checkpoint(ckpt: Path, params: dict | None = None) -> dict:
    # the project's safe reader, as for every file: tensors and plain values only, a crafted file cannot run code
    state = read_checkpoint(ckpt, released=False)
    if params is not None and state["params"] != params:
        old = state["params"]
        diff = {k: (old.get(k), params.get(k)) for k in sorted(set(old) | set(params)) if old.get(k) != params.get(k)}
        raise TrainingError(
            f"checkpoint {ckpt} was written with other parameters {diff}; delete it or use "
            "the same parameters (and thread count) to resume"
        )
    return state


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """The teacher of a pretraining checkpoint as weights + manifest at ``out``: the same bytes as a run with
    ``stop_at`` = the checkpoint's iteration (for a run stopped from outside, e.g. at the end of a time budget)."""
    state = _load_checkpoint(Path(ckpt))
    params = state["params"]
    cfg = PretrainConfig(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in params.items()
            if k not in ("format", "threads", "device")
        }
    )
    teacher = DinoBackbone(cfg.backbone, "random")
    prefix = "teacher.vit."
    teacher.vit.load_state_dict({k[len(prefix) :]: v for k, v in state["nets"].items() if k.startswith(prefix)})
    return _export(
        teacher, cfg, params, Path(out), state["losses"], train_s=state["elapsed_s"], render_s=None, wall_s=None
    )


def _export(
    teacher: DinoBackbone,
    cfg: PretrainConfig,
    params: dict,
    out: Path,
    losses: list[float],
    *,
    train_s: float,
    render_s: float | None,
    wall_s: float | None,
) -> Path:
    """Write the teacher's ViT state dict to ``out`` and the manifest (recipe, curve, sha256) beside it."""
    state = {k: v.detach().cpu().contiguous() for k, v in teacher.vit.state_dict().items()}
    with atomic_write(out) as tmp:
        safetensors.torch.save_file(state, tmp)  # no metadata: its key order is random, the bytes would differ
    done = len(losses)
    window = max(1, min(20, done // 10))
    every = max(1, cfg.iterations // 50)
    curve = [[i + 1, float(np.mean(losses[max(0, i + 1 - window) : i + 1]))] for i in range(every - 1, done, every)]
    if not curve or curve[-1][0] != done:
        curve.append([done, float(np.mean(losses[-window:]))])
    stop = "" if done == cfg.iterations else f" --stop-at {done}"
    manifest = dict(
        stage="pretrain",
        weights=out.name,
        sha256=file_sha256(out),
        size_bytes=out.stat().st_size,
        complete=done == cfg.iterations,
        iterations_done=done,
        params=params,
        world=dict(
            generator="depthg.data.synthetic",
            version=WORLD_VERSION,
            seed=cfg.world_seed,
            split="train",
            indices=[0, cfg.n_images - 1],
            res=cfg.res,
        ),
        final_loss=curve[-1][1],
        loss_curve=curve,
        loss_curve_window=window,
        train_wall_time_s=round(train_s, 1),  # all iterations, summed over resumed runs
        render_wall_time_s=None if render_s is None else round(render_s, 1),  # of the last process
        regenerate=_command(cfg, out, params["threads"], params.get("device", "cpu")) + stop,
        provenance=provenance(
            seed=cfg.seed,
            device=params.get("device", "cpu"),
            weights="random (start)",
            wall_time_s=train_s if wall_s is None else wall_s,
        ),
    )
    write_json(out.with_suffix(".json"), manifest)
    return out


def read_manifest(weights: str | Path) -> dict:
    """The manifest written beside pretrained ``weights`` (recipe, curve, sha256, provenance)."""
    return json.loads(Path(weights).with_suffix(".json").read_text())


def config_from_overrides(overrides: list[str]) -> PretrainConfig:
    """PretrainConfig from ``key=value`` strings (tuples as ``a,b``); ConfigError naming a bad key or value."""
    fields = asdict(PretrainConfig())
    kw = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"pretrain override {item!r}: expected key=value with key one of {', '.join(fields)}")
        kind = type(fields[key])
        try:
            if kind is bool:
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                kw[key] = value.lower() == "true"
            else:
                kw[key] = tuple(float(v) for v in value.split(",")) if kind is tuple else kind(value)
        except ValueError as err:
            raise ConfigError(f"pretrain override {item!r}: {value!r} is not a {kind.__name__}") from err
    return PretrainConfig(**kw)


def _command(cfg: PretrainConfig, out: Path, threads: int, device: str = "cpu") -> str:
    """The CLI command that makes these weights again (only the parameters that differ from the defaults; the
    output path relative to the checkout when it lies inside it)."""
    default = asdict(PretrainConfig())
    args = [
        f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in asdict(cfg).items() if v != default[k]
    ]
    where = "" if out.resolve() == bundled_weights_path(cfg.backbone) else f" --out {out}"
    on = "" if device == "cpu" else f" --device {device}"
    return " ".join([f"python -m depthg prep pretrain --threads {threads}{on}{where}", *args])


def main(args) -> int:
    """``python -m depthg prep pretrain``: the parsed arguments of :func:`depthg.cli.prep.add_prep_parser`."""
    cfg = config_from_overrides(args.overrides)
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else bundled_weights_path(cfg.backbone)
    pretrain(cfg, out, progress=not args.no_progress, stop_at=args.stop_at, device=args.device)
    print(f"pretrain: wrote {out} and {out.with_suffix('.json')}")
    return 0
