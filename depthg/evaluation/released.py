"""The authors' released STEGO/DepthG Lightning checkpoints: load them into :class:`depthg.model.segmenter.DepthGModel`.

Released ``.ckpt`` layout (DG src/train_segmentation.py:96-113, src/modules.py:19-88; DESIGN.md §6):
- ``state_dict``: ``net.model.*`` the DINO ViT (DINO naming = timm naming), ``net.cluster1.0.*`` and
  ``net.cluster2.{0,2}.*`` the head, ``cluster_probe.clusters`` [n_classes + extra_clusters, K],
  ``linear_probe.{weight,bias}``; also ``train_cluster_probe.*`` and ``decoder.*`` (unused, METHOD §2.3) and
  ``lhp_module.*`` when 3D-LHP was on (its eval path is broken in the release, METHOD §9 #17).
- ``hyper_parameters``: ``{"n_classes": n, "cfg": <omegaconf DictConfig>}`` (model_type, dino_patch_size, dim,
  extra_clusters, dataset_name, dropout, ...). Decayed schedule values are stored decayed (METHOD §3.5).

Files are read with :func:`depthg.model.weights.read_checkpoint`, which never runs code from a file and needs neither
omegaconf nor Lightning.

Shapes: K code dim, C backbone channels, n clusters or classes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from depthg.errors import WeightsError
from depthg.files import file_sha256
from depthg.model.segmenter import DepthGModel
from depthg.model.weights import RELEASED_BACKBONE_PREFIX, is_released_checkpoint, plain_container, read_checkpoint

# released key prefix -> our DepthGModel prefix; the backbone part goes through DinoBackbone.load_vit_state
_RELEASED_TO_OURS = {
    "net.cluster1.": "head.cluster1.",
    "net.cluster2.": "head.cluster2.",
    "cluster_probe.": "cluster_probe.",
    "linear_probe.": "linear_probe.",
}
_RELEASED_UNUSED = ("train_cluster_probe.", "decoder.", "lhp_module.")
_REQUIRED = (
    "net.model.cls_token",
    "net.model.patch_embed.proj.weight",
    "net.cluster1.0.weight",
    "cluster_probe.clusters",
    "linear_probe.weight",
)
_VIT_SIZES = {384: "small", 768: "base"}


def released_hparams(obj: dict) -> dict:
    """The hyper-parameters as one plain dict: top-level entries (n_classes) first, then the cfg's."""
    hp = plain_container(obj.get("hyper_parameters") or {})
    hp = hp if isinstance(hp, dict) else {}
    flat = {k: v for k, v in hp.items() if k != "cfg"}
    for k, v in (hp.get("cfg") if isinstance(hp.get("cfg"), dict) else {}).items():
        flat.setdefault(k, v)
    return flat


def released_architecture(state: dict[str, torch.Tensor], hparams: dict, path: str | Path) -> tuple[dict, list]:
    """Model kwargs inferred from tensor shapes (authoritative), and notes where the hyper-parameters disagree."""
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise WeightsError(
            f"{path}: not a STEGO/DepthG checkpoint with a DINO backbone and nonlinear head; "
            f"missing keys {', '.join(missing)}"
        )
    C = state["net.model.cls_token"].shape[-1]
    p = state["net.model.patch_embed.proj.weight"].shape[-1]
    if C not in _VIT_SIZES:
        raise WeightsError(f"{path}: backbone width {C} is neither ViT-S (384) nor ViT-B (768)")
    n_clusters, K = state["cluster_probe.clusters"].shape
    n_classes = state["linear_probe.weight"].shape[0]
    arch = dict(
        backbone=f"vit_{_VIT_SIZES[C]}_patch{p}",
        dim=K,
        n_classes=n_classes,
        extra_clusters=n_clusters - n_classes,
        dropout=bool(hparams.get("dropout", True)),
    )
    if arch["extra_clusters"] < 0:
        raise WeightsError(f"{path}: {n_clusters} cluster centroids for {n_classes} classes")
    stated = {
        "model_type": f"vit_{_VIT_SIZES[C]}",
        "dino_patch_size": p,
        "dim": K,
        "n_classes": n_classes,
        "extra_clusters": arch["extra_clusters"],
    }
    notes = [
        f"hyper-parameter {k}={hparams[k]!r} disagrees with the tensors ({v!r}); the tensors are used"
        for k, v in stated.items()
        if k in hparams and hparams[k] != v
    ]
    return arch, notes


def load_released_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu", strict: bool = False
) -> tuple[Any, dict]:
    """An authors' released STEGO/DepthG ``.ckpt`` -> (DepthGModel in eval mode, info dict).

    info: path, sha256, weights_source, the model kwargs, dataset_name, hparams (plain dict), ignored_keys (known
    but unused at evaluation), unknown_keys, notes. Missing keys raise WeightsError naming the file; unknown keys
    raise with ``strict=True`` and warn otherwise.
    """

    path = Path(path).expanduser()
    obj = read_checkpoint(path, map_location=map_location)
    if not is_released_checkpoint(obj):
        raise WeightsError(
            f"{path} is not a released STEGO/DepthG Lightning checkpoint (no state_dict with "
            f"{RELEASED_BACKBONE_PREFIX}* keys); a plain DINO/timm file goes in model.weights"
        )
    state, hparams = obj["state_dict"], released_hparams(obj)
    arch, notes = released_architecture(state, hparams, path)
    sha = file_sha256(path)
    source = f"file:{path} sha256:{sha[:12]}"

    # the backbone reads its net.model.* weights from the same file (DinoBackbone, weights=path)
    model = DepthGModel(
        arch["backbone"],
        path,
        dim=arch["dim"],
        n_classes=arch["n_classes"],
        extra_clusters=arch["extra_clusters"],
        dropout=arch["dropout"],
    )
    assert model.backbone.weights_source == source, "file changed while loading"
    ours, ignored, unknown = {}, [], []
    for key, value in state.items():
        if key.startswith(RELEASED_BACKBONE_PREFIX):
            continue
        prefix = next((p for p in _RELEASED_TO_OURS if key.startswith(p)), None)
        if prefix is not None:
            ours[_RELEASED_TO_OURS[prefix] + key[len(prefix) :]] = value
        elif key.startswith(_RELEASED_UNUSED):
            ignored.append(key)
        else:
            unknown.append(key)
    result = model.load_state_dict(ours, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{path}: head/probe keys do not fit the model; missing {missing}, unexpected {result.unexpected_keys}"
        )
    if unknown:
        message = f"{path}: {len(unknown)} unknown keys not loaded: {', '.join(unknown[:8])}"
        if strict:
            raise WeightsError(message + " (strict=True)")
        warnings.warn(message, stacklevel=2)
    if any(k.startswith("lhp_module.") for k in ignored) or hparams.get("lhp"):
        notes.append(
            "trained with 3D-LHP: the loaded model's code is the head output, without the LHP "
            "projection (the release's own eval forward fails with LHP on, METHOD §9 #17)"
        )
    for note in notes:
        warnings.warn(f"{path}: {note}", stacklevel=2)
    info = dict(
        path=str(path),
        sha256=sha,
        weights_source=source,
        **arch,
        dataset_name=hparams.get("dataset_name"),
        hparams=hparams,
        ignored_keys=ignored,
        unknown_keys=unknown,
        notes=notes,
    )
    return model.eval(), info


def is_released_file(path) -> bool:
    """Whether ``path`` holds an authors' released Lightning checkpoint (rather than one of ours)."""
    obj = read_checkpoint(path)
    return is_released_checkpoint(obj)
