"""The frozen DINO ViT backbone (METHOD.md §2.1, DESIGN.md §6).

A timm VisionTransformer, frozen and always in eval mode. ``forward`` returns the patch features of the last block
after the final LayerNorm (prefix tokens removed) and, on request, the last block's attention probabilities.

Weights (DESIGN.md §6), chosen by the ``weights`` argument:
- ``"hub"``: the exact DINO/DINOv2 checkpoint file the release loads for that backbone (:data:`BACKBONES`: file name
  and URL, DG src/modules.py:41-50), from the torch hub cache (``torch.hub.get_dir()/checkpoints/<file>``, where
  ``torch.hub.load_state_dict_from_url`` keeps it), downloaded there when missing and the network allows. timm's
  ``vit_small_patch8_224.dino`` is not used: it is DINO's ``dino_deitsmall8_pretrain``, another checkpoint than
  the release's ``dino_deitsmall8_300ep_pretrain``;
- a path: a DINO ``.pth`` (plain, or nested under teacher/student/state_dict/model with module./backbone.
  prefixes), a timm state dict (``.pth``/``.bin``/``.safetensors``), or a released STEGO/DepthG Lightning
  ``.ckpt`` whose ``net.model.*`` keys hold the DINO weights;
- ``"random"``: timm's initialisation, only when asked for by name;
- ``"bundled"``: the project's own weights shipped in the package (:func:`depthg.paths.bundled_weights_path`; DINO
  on the synthetic world, made by ``python -m depthg prep pretrain``), the synthetic preset's default.
``weights_source`` records which one was used, and ``weights_record`` its file name and sha256, for provenance.
``precision`` ("fp32" or "bf16") is the backbone's compute precision: bf16 autocast on CUDA or CPU only when asked
(``train.bf16``); fp32 otherwise, as the release (Lightning's default precision).

Shapes: B batch, H/W image size, p patch size, h/w patch grid (H/p, W/p), C channels (embed dim), P prefix tokens
(CLS + registers), T = P + h*w tokens, M pretrained grid positions (28*28 for 224 px at p=8), nh attention heads.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from depthg.errors import ConfigError, WeightsError
from depthg.files import file_sha256
from depthg.model.hub import offline_requested
from depthg.model.weights import read_checkpoint, vit_state_from_checkpoint
from depthg.paths import bundled_weights_path


@dataclass(frozen=True)
class BackboneSpec:
    timm_arch: str  # architecture name in timm's registry
    url: str | None  # the original DINO/DINOv2 checkpoint the release loads; None: no released weights (random only)
    overrides: dict = field(default_factory=dict)  # constructor arguments on top of timm's defaults

    @property
    def file_name(self) -> str | None:
        """The checkpoint's file name, e.g. dino_deitsmall8_300ep_pretrain.pth (its name in the torch hub cache)."""
        return None if self.url is None else self.url.rsplit("/", 1)[-1]

    @property
    def checkpoint_name(self) -> str | None:
        """The checkpoint's name without suffix, e.g. dino_deitsmall8_300ep_pretrain."""
        return None if self.url is None else self.file_name.removesuffix(".pth")


_DINO = "https://dl.fbaipublicfiles.com/dino/"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/"
# Our short names -> timm architecture + the exact checkpoint. DINO v1 URLs: DG src/modules.py:41-50 (ViT-S/8 is the
# 300-epoch file there and in ST src/modules.py:38); DINOv2: facebookresearch/dinov2 README.
BACKBONES: dict[str, BackboneSpec] = {
    "vit_small_patch8": BackboneSpec(
        "vit_small_patch8_224", _DINO + "dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain.pth"
    ),
    "vit_base_patch8": BackboneSpec("vit_base_patch8_224", _DINO + "dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
    "vit_small_patch16": BackboneSpec(
        "vit_small_patch16_224", _DINO + "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"
    ),
    "vit_base_patch16": BackboneSpec(
        "vit_base_patch16_224", _DINO + "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
    ),
    "dinov2_vits14": BackboneSpec("vit_small_patch14_dinov2", _DINOV2 + "dinov2_vits14/dinov2_vits14_pretrain.pth"),
    "dinov2_vitb14": BackboneSpec("vit_base_patch14_dinov2", _DINOV2 + "dinov2_vitb14/dinov2_vitb14_pretrain.pth"),
    # Synthetic world and tests: ViT-Ti width (192, 3 heads) at patch 8 with 4 blocks, so a 224 px forward takes
    # well under a second on a laptop CPU. No released weights exist: random initialisation only.
    "vit_tiny_patch8": BackboneSpec("vit_tiny_patch16_224", None, {"patch_size": 8, "depth": 4}),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a backbone name; ConfigError listing the valid names otherwise."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r} (model.backbone); valid names: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def interpolate_pos_embed(pos: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Patch position embeddings [1,M,C] on a square grid -> [1,h*w,C] for a (h, w) grid, as DINO does.

    DINO (DG src/dino/vision_transformer.py:179-199, also DINOv2) resizes bicubically with scale factors
    (h + 0.1) / sqrt(M) rather than a target size; the scale factor, not the size, sets the sampling positions, so
    this differs slightly from timm's own resampling (size-based and antialiased) and is kept for parity.
    Unlike DINO, the height factor goes to the rows for non-square grids (DINO swaps them; equal for squares).
    """
    _, M, C = pos.shape
    m = math.isqrt(M)
    assert m * m == M, f"pretrained position grid must be square, got {M} positions"
    h, w = grid_hw
    if (h, w) == (m, m):
        return pos
    grid = pos.reshape(1, m, m, C).permute(0, 3, 1, 2).float()  # [1,C,m,m]
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / m, (w + 0.1) / m), mode="bicubic", align_corners=False)
    assert grid.shape[-2:] == (h, w), f"interpolated grid {tuple(grid.shape[-2:])} != {(h, w)}"
    return grid.permute(0, 2, 3, 1).reshape(1, h * w, C).to(pos.dtype)


def block_attention(attn: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Attention probabilities [B,nh,T,T] of a timm ``Attention`` module on its (already normed) input [B,T,C].

    timm computes attention with fused scaled_dot_product_attention and never materialises the probabilities, so
    they are recomputed from the same qkv projection (DINO returns them from the last block, vision_transformer.py
    :228-240).
    """
    B, T, _ = tokens.shape
    nh, hd = attn.num_heads, attn.head_dim
    qkv = attn.qkv(tokens).reshape(B, T, 3, nh, hd).permute(2, 0, 3, 1, 4)  # [3,B,nh,T,hd]
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    # softmax in float32 whatever the autocast dtype, so rows sum to 1 to float precision
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


RANDOM_WEIGHTS_SEED = 0
DOWNLOAD_TIMEOUT_S = 10.0  # per socket operation of a weights download


class DinoBackbone(nn.Module):
    """Frozen DINO ViT: images [B,3,H,W] -> patch features [B,C,h,w] (+ last-block attention [B,nh,T,T])."""

    def __init__(
        self,
        name: str = "vit_small_patch8",
        weights: str | Path = "hub",
        *,
        autocast: bool = True,
        autocast_cpu: bool = False,
    ):
        super().__init__()
        spec = backbone_spec(name)
        self.name = name
        # bf16 autocast (train.bf16): on CUDA when asked; on the CPU only when also asked by autocast_cpu (used to
        # measure the bf16 gap, bench.bf16_feature_gap), since CPU training runs in fp32
        self.autocast, self.autocast_cpu = autocast, autocast_cpu
        # dynamic_img_size: patch embedding accepts any multiple of the patch size (320 px eval); position
        # embeddings are interpolated in _embed. num_classes=0: no classifier head.
        kwargs = dict(num_classes=0, dynamic_img_size=True, **spec.overrides)
        self.weights_record: dict = {"name": None, "sha256": None}
        bundled = isinstance(weights, str) and weights == "bundled"
        if bundled:
            weights = bundled_weights_path(name)
            if not weights.is_file():
                raise WeightsError(
                    f"backbone {name!r} has no bundled weights ({weights} is missing); use "
                    "model.weights='random', 'hub' or a file, or make them with `python -m depthg "
                    "prep pretrain`"
                )
        if isinstance(weights, str) and weights == "hub":
            path = hub_weights_file(name)
            self.vit = _empty_vit(spec, kwargs)
            self._load_file(path, f"{spec.checkpoint_name} ({path})", spec.checkpoint_name)
        elif isinstance(weights, str) and weights == "random":
            # A fixed seed, apart from the caller's RNG: every training seed, rank, kNN stage and evaluation that
            # asks for "random" gets the same frozen network, as they would get the same DINO weights.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                self.vit = timm.create_model(spec.timm_arch, pretrained=False, **kwargs)
            self.weights_source = f"random(seed={RANDOM_WEIGHTS_SEED}, timm {timm.__version__})"
            self.weights_record = {"name": "random", "sha256": None}
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise WeightsError(
                    f"backbone weights file not found: {path} (model.weights must be 'hub', 'bundled', "
                    "'random' or the path of a DINO .pth, timm state dict or released STEGO/DepthG "
                    ".ckpt)"
                )
            self.vit = _empty_vit(spec, kwargs)
            self._load_file(path, f"bundled:{path.name}" if bundled else f"file:{path}", path.name)
        self.patch_size = self.vit.patch_embed.patch_size[0]
        self.embed_dim = self.vit.embed_dim
        self.num_heads = self.vit.blocks[-1].attn.num_heads
        self.requires_grad_(False)
        self.train(False)

    def _load_file(self, path: Path, source: str, name: str) -> None:
        """Fill the (empty) ViT from a weights file and record its name and sha256 (provenance)."""
        digest = file_sha256(path)
        state = vit_state_from_checkpoint(read_checkpoint(path), path)
        self.load_vit_state(state, f"{source} sha256:{digest[:12]}")
        self.weights_record = {"name": name, "sha256": digest}

    def precision(self, device: torch.device | str) -> str:
        """ "bf16" when the forward on ``device`` autocasts to bfloat16, else "fp32" (recorded in provenance)."""
        kind = torch.device(device).type
        return "bf16" if self.autocast and (kind == "cuda" or (kind == "cpu" and self.autocast_cpu)) else "fp32"

    def train(self, mode: bool = True) -> DinoBackbone:
        """Always eval: the backbone is frozen, its dropout/drop-path never active (METHOD §2.1)."""
        return super().train(False)

    def load_vit_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a DINO/timm ViT state dict (keys as in timm's VisionTransformer) and record ``source``.

        Checks every shape before loading: timm's converter would silently resample a mismatched patch embedding
        (e.g. a /16 file into a /8 model). Raises WeightsError naming ``source`` on any mismatch.
        """
        model_state = self.vit.state_dict()
        patch_key = "patch_embed.proj.weight"
        if patch_key in state and state[patch_key].shape != model_state[patch_key].shape:
            raise WeightsError(
                f"{source}: patch embedding {tuple(state[patch_key].shape)} does not fit backbone "
                f"{self.name!r} {tuple(model_state[patch_key].shape)}; choose the backbone the "
                "weights were trained with (model.backbone)."
            )
        # timm's converter maps original DINOv2 names (mask_token, register_tokens) onto timm's; identity for DINO.
        state = timm.models.vision_transformer.checkpoint_filter_fn(state, self.vit)
        missing = sorted(set(model_state) - set(state))
        unexpected = sorted(set(state) - set(model_state))
        wrong = [
            f"{k} {tuple(state[k].shape)} vs {tuple(model_state[k].shape)}"
            for k in model_state
            if k in state and state[k].shape != model_state[k].shape
        ]
        if missing or unexpected or wrong:
            raise WeightsError(
                f"{source}: not a {self.name!r} ViT state dict; missing keys {_few(missing)}, "
                f"unexpected keys {_few(unexpected)}, shape mismatches {_few(wrong)}."
            )
        self.vit.load_state_dict(state, strict=True)
        self.weights_source = source

    def forward(self, x: torch.Tensor, *, attention: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B,3,H,W] normalised images -> (features [B,C,h,w] float32, attention [B,nh,T,T] float32 or None)."""
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ConfigError(
                f"input size {H}x{W} is not a multiple of the patch size {p} of backbone "
                f"{self.name!r}; use a resolution divisible by {p}"
            )
        h, w = H // p, W // p
        use_bf16 = self.precision(x.device) == "bf16"
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            tokens = self._embed(x, (h, w))  # [B,T,C]
            for block in self.vit.blocks[:-1]:
                tokens = block(tokens)
            last = self.vit.blocks[-1]
            attn = block_attention(last.attn, last.norm1(tokens)) if attention else None
            tokens = self.vit.norm(last(tokens))
        P = self.vit.num_prefix_tokens
        assert tokens.shape[1] == P + h * w, f"{tokens.shape[1]} tokens for {P} prefix + {h}x{w} patches"
        feats = tokens[:, P:].float().reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()  # [B,C,h,w]
        return feats, (attn.float() if attn is not None else None)

    def _embed(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Patch embedding + prefix tokens + (interpolated) position embedding -> tokens [B,T,C]."""
        vit = self.vit
        B = x.shape[0]
        patches = vit.patch_embed(x).reshape(B, grid_hw[0] * grid_hw[1], -1)  # NHWC [B,h,w,C] -> [B,h*w,C]
        prefix = [t.expand(B, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]  # [B,P_i,C]
        n_pos_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens  # prefix tokens with a position
        pos_patch = interpolate_pos_embed(vit.pos_embed[:, n_pos_prefix:], grid_hw)  # [1,h*w,C]
        if vit.no_embed_class:
            tokens = torch.cat(prefix + [patches + pos_patch], dim=1)
        else:
            pos = torch.cat([vit.pos_embed[:, :n_pos_prefix], pos_patch], dim=1)  # [1,T,C]
            tokens = torch.cat(prefix + [patches], dim=1) + pos
        return vit.norm_pre(vit.patch_drop(vit.pos_drop(tokens)))


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions. Off in reference runs: the release computes in true fp32
    (Lightning's default precision; torch's matmul default is off, but cuDNN's is on). No effect on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def _empty_vit(spec: BackboneSpec, kwargs: dict) -> nn.Module:
    """The architecture on the meta device (no random init, which costs seconds for ViT-B), storage on the CPU;
    load_vit_state then checks that every tensor is replaced."""
    with torch.device("meta"):
        vit = timm.create_model(spec.timm_arch, pretrained=False, **kwargs)
    return vit.to_empty(device="cpu")


def hub_weights_file(name: str) -> Path:
    """The local file of backbone ``name``'s released checkpoint: ``torch.hub.get_dir()/checkpoints/<file>`` (where
    ``torch.hub.load_state_dict_from_url`` keeps it), downloaded from the release's URL when missing.

    Offline or failing download: WeightsError naming the exact file, its URL and how to pass a local copy.
    """
    spec = backbone_spec(name)
    if spec.url is None:
        raise WeightsError(
            f"backbone {name!r} has no released weights; use model.weights=random (as the "
            "synthetic presets do) or the path of a weights file"
        )
    path = Path(torch.hub.get_dir()) / "checkpoints" / spec.file_name
    if path.is_file():
        return path
    try:
        if offline_requested():
            raise OSError("HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set")
        path.parent.mkdir(parents=True, exist_ok=True)
        # a bounded socket timeout: without network the download fails in seconds instead of hanging
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            torch.hub.download_url_to_file(spec.url, str(path), progress=False)  # a temp file, then a rename
        finally:
            socket.setdefaulttimeout(previous)
    except Exception as err:  # offline, HTTP error, read-only cache: all end the same way for the user
        raise WeightsError(
            f"backbone {name!r} needs the DINO checkpoint {spec.file_name} ({spec.checkpoint_name}), which is not in "
            f"the torch hub cache ({path}) and could not be downloaded from {spec.url} ({type(err).__name__}: "
            f"{err}). Download that file on a machine with network access and either copy it to {path}, or pass "
            f"it: model.weights=<file> (config or CLI override), --weights <file> for `python -m depthg prep knn`, "
            f"-p weights <file> for the notebooks. An authors' released STEGO/DepthG .ckpt works as well (its "
            f"net.model.* keys hold these DINO weights)."
        ) from err
    return path


def weights_identity(name: str, weights: str | Path) -> str:
    """What ``DinoBackbone(name, weights)`` would load, known without loading it: stages key their outputs on it.

    A file (and "bundled", the project's file) is its sha256, so re-made weights under the same name invalidate the
    kNN files computed with the old ones; "hub" is the release's checkpoint name (a fixed published file); "random"
    the fixed seed. A missing file gives its path, and the loader's error follows.
    """
    if isinstance(weights, str) and weights == "random":
        return f"random(seed={RANDOM_WEIGHTS_SEED})"
    if isinstance(weights, str) and weights == "hub":
        return f"hub:{backbone_spec(name).checkpoint_name}"
    path = bundled_weights_path(name) if isinstance(weights, str) and weights == "bundled" else Path(weights)
    path = path.expanduser()
    return f"sha256:{file_sha256(path)}" if path.is_file() else str(path)


def _few(keys: list[str], n: int = 8) -> str:
    """At most n keys for an error message."""
    if not keys:
        return "none"
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def bf16_feature_gap(name: str = "vit_small_patch8", *, res: int = 224, n_images: int = 4, seed: int = 0) -> dict:
    """How far bf16-autocast backbone features are from fp32 ones, on the CPU (bf16 autocast works there).

    Random weights (``RANDOM_WEIGHTS_SEED``) of architecture ``name`` and ``n_images`` standard-normal images at
    ``res`` px: the same network runs once in fp32 and once under bf16 autocast. Returns the per-patch cosine
    similarity of the two feature maps (mean, min), the largest absolute difference, and that difference relative
    to the largest fp32 feature magnitude.
    """
    net = DinoBackbone(name, "random", autocast=False)
    x = torch.randn(n_images, 3, res, res, generator=torch.Generator().manual_seed(seed))
    fp32, _ = net(x, attention=False)  # [B,C,h,w]
    net.autocast = net.autocast_cpu = True
    bf16, _ = net(x, attention=False)
    cos = F.cosine_similarity(fp32, bf16, dim=1)  # [B,h,w]
    diff = (fp32 - bf16).abs().max().item()
    return {
        "backbone": name,
        "res": res,
        "n_images": n_images,
        "cosine_mean": cos.mean().item(),
        "cosine_min": cos.min().item(),
        "max_abs": diff,
        "max_abs_relative": diff / fp32.abs().max().item(),
    }
