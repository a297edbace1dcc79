"""Released STEGO/DepthG Lightning checkpoints -> DepthGModel (depthg.training.checkpoints), with real key names
and shapes.

The file is built here from random tensors (no weights can be downloaded): ViT-S/8 in DINO naming under
``net.model.*``, the head under ``net.cluster{1,2}``, the probes, the unused modules, and hyper-parameters pickled
as omegaconf/Lightning objects that this environment cannot (and must not need to) import.
"""

import sys
import types

import pytest
import timm
import torch

from depthg.errors import WeightsError
from depthg.evaluation.released import load_released_checkpoint, released_hparams
from depthg.model.backbone import DinoBackbone
from depthg.model.weights import read_checkpoint

C = 384  # ViT-S


# the real modules of the classes a released checkpoint pickles (omegaconf, pytorch-lightning): the reader allows
# exactly these names, and maps them to inert placeholders
_REAL_MODULES = {
    "DictConfig": "omegaconf.dictconfig",
    "AnyNode": "omegaconf.nodes",
    "AttributeDict": "pytorch_lightning.utilities.parsing",
    "Boom": "fake_omegaconf",
}


def _fake_config_module():
    """Classes shaped like omegaconf's DictConfig/AnyNode and Lightning's AttributeDict, under their real names."""
    mod = types.ModuleType("fake_omegaconf")

    class AnyNode:
        def __init__(self, value):
            self._val, self._metadata = value, None

    class DictConfig:
        def __init__(self, content):
            self._content = {k: DictConfig(v) if isinstance(v, dict) else AnyNode(v) for k, v in content.items()}
            self._parent = None

        def __setstate__(self, state):
            raise AssertionError("the loader must never run a pickled class's code")

    class AttributeDict(dict):
        pass

    class Boom:
        def __init__(self, path):
            self.path = path

        def __reduce__(self):  # a payload that would create a file if the class were resolved for real
            return (type(self.path).touch, (self.path,))

    for cls in (AnyNode, DictConfig, AttributeDict, Boom):
        cls.__module__, cls.__qualname__ = _REAL_MODULES[cls.__name__], cls.__name__
        setattr(mod, cls.__name__, cls)
    return mod


def _install(monkeypatch, mod):
    """Make the fake classes importable under their real module names (what the pickler looks up)."""
    for name in set(_REAL_MODULES.values()):
        for i in range(1, name.count(".") + 2):
            monkeypatch.setitem(sys.modules, ".".join(name.split(".")[:i]), mod)


def _released_state(dim: int, n_classes: int, extra: int = 0, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    vit = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0)
    state = {f"net.model.{k}": v for k, v in vit.state_dict().items()}
    assert state["net.model.cls_token"].shape == (1, 1, C) and state["net.model.pos_embed"].shape == (1, 785, C)
    assert state["net.model.patch_embed.proj.weight"].shape == (C, 3, 8, 8)
    assert {
        "net.model.blocks.11.attn.qkv.weight",
        "net.model.blocks.11.mlp.fc2.bias",
        "net.model.norm.weight",
        "net.model.blocks.0.norm2.bias",
        "net.model.blocks.0.attn.proj.weight",
    } <= set(state)

    def rand(*shape):
        return torch.randn(*shape) * 0.05

    state.update(
        {
            "net.cluster1.0.weight": rand(dim, C, 1, 1),
            "net.cluster1.0.bias": rand(dim),
            "net.cluster2.0.weight": rand(C, C, 1, 1),
            "net.cluster2.0.bias": rand(C),
            "net.cluster2.2.weight": rand(dim, C, 1, 1),
            "net.cluster2.2.bias": rand(dim),
            "cluster_probe.clusters": torch.randn(n_classes + extra, dim),
            "train_cluster_probe.clusters": torch.randn(n_classes, dim),
            "linear_probe.weight": rand(n_classes, dim, 1, 1),
            "linear_probe.bias": rand(n_classes),
            "decoder.weight": rand(C, dim, 1, 1),
            "decoder.bias": rand(C),
        }
    )
    return state


def _write_ckpt(path, state, hparams, monkeypatch, extra_objects=()):
    mod = _fake_config_module()
    with pytest.MonkeyPatch.context() as mp:  # gone after saving, as omegaconf would be here
        _install(mp, mod)
        cfg = mod.DictConfig(hparams)
        ckpt = {
            "state_dict": state,
            "hyper_parameters": mod.AttributeDict(n_classes=hparams["n_classes"], cfg=cfg),
            "epoch": 0,
            "global_step": 21000,
            "pytorch-lightning_version": "2.0.1",
            "extra": list(extra_objects),
        }
        torch.save(ckpt, path)
    return mod


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A COCO-like ViT-S/8 checkpoint (dim 70, 27 classes)."""
    path = tmp_path_factory.mktemp("ckpt") / "cocostuff_vits.ckpt"
    state = _released_state(70, 27)
    hparams = dict(
        dataset_name="cocostuff27",
        model_type="vit_small",
        dino_patch_size=8,
        dim=70,
        n_classes=27,
        extra_clusters=0,
        dropout=True,
        lhp=False,
        depth_feat_weight=0.036864,
    )
    with pytest.MonkeyPatch.context() as mp:
        _write_ckpt(path, state, hparams, mp)
    return path, state


def test_released_checkpoint_weights_land(released, tmp_path):
    path, state = released
    model, info = load_released_checkpoint(path)
    assert not model.training
    assert info["backbone"] == "vit_small_patch8" and info["dim"] == 70 and info["n_classes"] == 27
    assert info["extra_clusters"] == 0 and info["dataset_name"] == "cocostuff27"
    assert info["hparams"]["depth_feat_weight"] == pytest.approx(0.036864)
    assert sorted(info["ignored_keys"]) == ["decoder.bias", "decoder.weight", "train_cluster_probe.clusters"]
    assert info["unknown_keys"] == [] and info["notes"] == []
    assert model.backbone.weights_source == info["weights_source"] == f"file:{path} sha256:{info['sha256'][:12]}"
    ours = model.state_dict()
    for key, value in state.items():
        mapped = (
            key.replace("net.model.", "backbone.vit.").replace("net.cluster", "head.cluster")
            if key.startswith("net.")
            else key
        )
        if not key.startswith(("decoder.", "train_cluster_probe.")):
            assert torch.equal(ours[mapped], value), key

    # the backbone loaded from the same .ckpt, and from a plain DINO file of the same tensors, agree exactly
    dino = {k.removeprefix("net.model."): v for k, v in state.items() if k.startswith("net.model.")}
    torch.save(dino, tmp_path / "dino_deitsmall8.pth")
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    ref_feats, ref_attn = DinoBackbone("vit_small_patch8", tmp_path / "dino_deitsmall8.pth")(x)
    feats, attn = model.features(x, attention=True)
    assert torch.equal(feats, ref_feats) and torch.equal(attn, ref_attn)
    assert torch.equal(DinoBackbone("vit_small_patch8", path)(x, attention=False)[0], ref_feats)
    code = model.predict_code(x)
    assert code.shape == (1, 70, 14, 14)
    assert model.cluster_probe.log_probs(code).shape == (1, 27, 14, 14)


def test_potsdam_like_checkpoint_with_extra_clusters(tmp_path, monkeypatch):
    state = _released_state(90, 3, extra=2, seed=1)
    state["lhp_module.projection_head.0.weight"] = torch.zeros(90, 90, 1, 1)
    hparams = dict(
        dataset_name="potsdam",
        model_type="vit_small",
        dino_patch_size=8,
        dim=90,
        n_classes=3,
        extra_clusters=2,
        dropout=True,
        lhp=True,
    )
    _write_ckpt(tmp_path / "potsdam_vits.ckpt", state, hparams, monkeypatch)
    with pytest.warns(UserWarning, match="3D-LHP"):
        model, info = load_released_checkpoint(tmp_path / "potsdam_vits.ckpt")
    assert (info["dim"], info["n_classes"], info["extra_clusters"]) == (90, 3, 2)
    assert model.cluster_probe.clusters.shape == (5, 90)
    assert torch.equal(model.head.cluster2[2].weight, state["net.cluster2.2.weight"])


def test_pickled_classes_are_never_executed(tmp_path, monkeypatch):
    from depthg.model.weights import plain_container

    marker = tmp_path / "pwned"
    mod = _fake_config_module()
    state = {"w": torch.ones(2)}
    _install(monkeypatch, mod)  # importable at load time too: still not used
    torch.save(
        {"state_dict": state, "payload": mod.Boom(marker), "cfg": mod.DictConfig({"a": 1, "b": {"c": "x"}})},
        tmp_path / "evil.pth",
    )
    with pytest.raises(WeightsError, match="evil.pth.*pickles getattr, which is not allowed"):
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    torch.save({"state_dict": state, "cfg": mod.DictConfig({"a": 1, "b": {"c": "x"}})}, tmp_path / "cfg.pth")
    obj = read_checkpoint(tmp_path / "cfg.pth")  # DictConfig.__setstate__ would raise if it ran
    assert torch.equal(obj["state_dict"]["w"], torch.ones(2))
    assert plain_container(obj["cfg"]) == {"a": 1, "b": {"c": "x"}}


def test_missing_and_unknown_keys(released, tmp_path, monkeypatch):
    _, state = released
    hparams = dict(n_classes=27)
    broken = {k: v for k, v in state.items() if k != "linear_probe.bias"}
    _write_ckpt(tmp_path / "broken.ckpt", broken, hparams, monkeypatch)
    with pytest.raises(WeightsError, match="broken.ckpt.*linear_probe.bias"):
        load_released_checkpoint(tmp_path / "broken.ckpt")

    extra = dict(state, **{"net.something_new.weight": torch.zeros(3)})
    _write_ckpt(tmp_path / "extra.ckpt", extra, hparams, monkeypatch)
    with pytest.warns(UserWarning, match="net.something_new.weight"):
        _, info = load_released_checkpoint(tmp_path / "extra.ckpt")
    assert info["unknown_keys"] == ["net.something_new.weight"]
    with pytest.raises(WeightsError, match="strict"):
        load_released_checkpoint(tmp_path / "extra.ckpt", strict=True)

    no_linear = {k: v for k, v in state.items() if not k.startswith("linear_probe")}
    _write_ckpt(tmp_path / "nolinear.ckpt", no_linear, hparams, monkeypatch)
    with pytest.raises(WeightsError, match="nolinear.ckpt.*linear_probe.weight"):
        load_released_checkpoint(tmp_path / "nolinear.ckpt")


def test_not_a_released_checkpoint_and_wrong_backbone(released, tmp_path):
    path, _ = released
    torch.save({"teacher": {"cls_token": torch.zeros(1, 1, C)}}, tmp_path / "dino.pth")
    with pytest.raises(WeightsError, match="dino.pth.*not a released"):
        load_released_checkpoint(tmp_path / "dino.pth")
    with pytest.raises(WeightsError, match="missing.ckpt"):
        load_released_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(WeightsError, match="cocostuff_vits.ckpt"):
        DinoBackbone("vit_base_patch8", path)  # ViT-S weights into ViT-B


# torch.save({"hyper_parameters": {"n_classes": 3, "cfg": OmegaConf.create({...})}}) made with omegaconf 2.3.0 (the
# release's hydra-core 1.3.2 era), zlib-compressed and base64-encoded: the real omegaconf pickle layout, read here
# without omegaconf installed. cfg = dataset_name potsdam, model_type vit_small, dino_patch_size 8, dim 90,
# extra_clusters 0, dropout True, lhp False, depth_feat_weight 0.036864, knn_res "${res}", res 224,
# crop {ratios [0.5, 1.0], mode None}.
OMEGACONF_HPARAMS = (
    "eNqlllt3E1UUx6ctpO1Ab8hFLtYbakAoaVObRoRCwKIGah1EYxHHyeQkZ+hkJnvmpFDwWBDR1ruAoqispa9+AD+Evvjik2uJyyef9CO4z0wmPRME"
    "FzirWXPdv///7LPPPp3Od6xQlK4u5aajX1mjGJ5JrTmyq2QwY6g2a0/mepWZ2HGunYNS6Mfv6XyNeHrN8IwqYcTzoY1De7LQja8c3bQN3yc+dOQ7"
    "Ch34xCxXYIXpVknFMF2nPFSyTCYurIp6EC8PhJewctt5SHDoDDE6gg1hBbqk0KLhExUDmGE5xDvS+ESFboxVOaxKFsTgPFLWGTqE1SaeLKei7nfm"
    "VegprMKXbvEkMVn4vtfU9WLdspnl6LoqfKnQFyDcGrNcx7ChfzEYwyyZh4Gpwkq8LNtGxYc1HO4pqNGt7rkug7VLhd5A3nftOcyPaZiUwDrTdG0b"
    "NRHoqyVSNuo2C7XW076LsEGDewNN1AhtbaQ9hdX4gNikSpyG1020p14sdIrUYN7xMWyeCsJ0zAwT91s43JcMAkVSfMJ0B6cHBqX8OW6J+CIbU3ih"
    "wv2Ytgc4PJikNyV5ObcP4UcPc9iapKtpD+2dov2LdIAOUszAI3TtEl1Hg2E8qsFj9SLdTBOFFcLVHCYvGfitucwvGVXYhv5FxqqobYeD2k6Fhcc5"
    "7EALVCjt5DAUV9oulHZJSikNhkMlGtbKnMV0v2rYNoygRJ9IgOW4mCZmUt23zhBIBzqjHJ6IdMY4ZOI6aaEzLulkNXgy0sl3IbkjIFdhd0B7isOe"
    "iLaXw0SctlvQ9km0/RrkmrQZpIlSIaeZZ+CCqfvBKjoQgA9yeDoCT3I4FAcfEOBnJPCzGjzXBCuNGil5bs2tM8gHxMMcjkTEKQ7Px4l5QZyWiC9o"
    "oEXExca4bVqDowHsRQ7HIthLHF6Ow44KWEGCvaLBTARbQtiAcEdqjOplYjD9FLEqlMHxAP0qhxMR+jUOehx9XKBfl9CGBsUIfWjiu99+ufLT9xON"
    "BMw6jo4LEcwAXOJAInCZQyUONgWYSmBLg5PNCksgbetZZHGYbSRDgO0AXOXgRGCXQy0OtgUYJLCngd+cqxtIE0vFxLkCRkX/q3OYEzjRz05xON3A"
    "0b6QxwRvXuKd0eAsxXZBg+4QcLELvBGa9gxsOT5waWnblh+13sN4GbXeN1FugcO5SPo8h7ca0rEOKcJVuBCa4cLM25KZixq8QzfGA1xsvvBu016d"
    "bjkBi8kgdUsc3otS9z6HD2KpyyuC/qFE/0iDjwPGgpjsG+G+hQ8E6hMOn0aoSxwux1FtAnVFQn2mwefLqL8jFGnMh+hPcDUAf8Hhywh8jcNX8em9"
    "KsBfS+BvNLjeGGdyql6sh3/+0HS+s+va1W/PZrEyxW/6lhvxBiXX3IiHyq5XxSWCW4mPe8dkbm/Lfnynx7Dw8cNfv15oQyXxu7WPTUpm2YfPXM+o"
    "EN2wrYojdqTJXPpurIyNCgMTp+DPdpRov62BAWWiaaA4z4jrlYg3mdv9f1JgW4zZRHi4uOePjWKJJG7roU/Z0/TQnITs3TtIq0L75+uVY/89/kFl"
    "ZHkCxEa8yyeehTNwRqxqR7dKk7mhO7SSGsmmxkfHxscymczYSHYkPZwaTaVSmWw6OzycHs5mR7Pj4+lMWrj83V7Yl0QfycBlmzDb9CmXcv9Nzlv/"
    "j2yNlgtwQyxyqVO5VfG3QuQi2hQvnC7lNpXbypELYSDGuSRxmgXYGi7PZV8sfH230lo7rcFyigfj2lLwv0/+dD6R2BGVSsfOZmSi5Xy5LTyPq+EZ"
    "48TuqPy4KrwPu8DKRBiTCL4Pv/0H4M5aTg=="
)


def test_real_omegaconf_hyper_parameters(tmp_path):
    import base64
    import zlib

    (tmp_path / "hp.ckpt").write_bytes(zlib.decompress(base64.b64decode(OMEGACONF_HPARAMS)))
    hparams = released_hparams(read_checkpoint(tmp_path / "hp.ckpt"))
    assert hparams == {
        "n_classes": 3,
        "dataset_name": "potsdam",
        "model_type": "vit_small",
        "dino_patch_size": 8,
        "dim": 90,
        "extra_clusters": 0,
        "dropout": True,
        "lhp": False,
        "depth_feat_weight": 0.036864,
        "knn_res": "${res}",
        "res": 224,
        "crop": {"ratios": [0.5, 1.0], "mode": None},
    }
