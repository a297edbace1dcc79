"""Frozen DINO backbone: names, shapes at 224/320, attention, freezing, weights resolution (depthg.model.backbone)."""

import pytest
import timm
import torch

from depthg.errors import ConfigError, WeightsError
from depthg.model.backbone import BACKBONES, DinoBackbone, block_attention, hub_weights_file, interpolate_pos_embed
from depthg.model.segmenter import DepthGModel


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return DinoBackbone("vit_tiny_patch8", "random")


@pytest.fixture(
    scope="module", params=[("vit_small_patch8", 384, 6), ("vit_base_patch8", 768, 12)], ids=["vits8", "vitb8"]
)
def dino8(request):
    torch.manual_seed(0)
    name, C, heads = request.param
    return DinoBackbone(name, "random"), C, heads


@pytest.mark.parametrize("res", [224, 320])
def test_dino8_shapes_and_attention(dino8, res):
    backbone, C, heads = dino8
    g = res // 8  # 28 at 224, 40 at 320 (METHOD §2.1)
    x = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(1))
    feats, attn = backbone(x)
    assert feats.shape == (1, C, g, g) and feats.dtype == torch.float32
    assert attn.shape == (1, heads, g * g + 1, g * g + 1)
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, heads, g * g + 1))
    assert torch.isfinite(feats).all()


# The checkpoint each backbone name must load (issue 8 item 1): DG src/modules.py:41-50 and ST src/modules.py:38 for
# DINO (ViT-S/8 is the 300-epoch file, not timm's vit_small_patch8_224.dino = dino_deitsmall8_pretrain); DINOv2 README.
EXPECTED_CHECKPOINTS = {
    "vit_small_patch8": "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_300ep_pretrain/"
    "dino_deitsmall8_300ep_pretrain.pth",
    "vit_base_patch8": "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
    "vit_small_patch16": "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    "vit_base_patch16": "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    "dinov2_vits14": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
    "dinov2_vitb14": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
    "vit_tiny_patch8": None,
}


def test_every_name_maps_to_a_timm_model_and_its_exact_checkpoint():
    assert set(BACKBONES) == set(EXPECTED_CHECKPOINTS)
    for name, spec in BACKBONES.items():
        assert timm.is_model(spec.timm_arch), name
        assert spec.url == EXPECTED_CHECKPOINTS[name], name
    assert BACKBONES["vit_small_patch8"].checkpoint_name == "dino_deitsmall8_300ep_pretrain"


@pytest.mark.parametrize("name", [n for n, url in EXPECTED_CHECKPOINTS.items() if url])
def test_hub_weights_fetch_the_exact_file_into_the_torch_hub_cache(name, monkeypatch, tmp_path):
    """No download: the downloader is replaced; it must be asked for the release's URL, into <hub>/checkpoints/."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # `make test` exports both (Makefile), which forbids asking
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    asked = []
    monkeypatch.setattr(
        torch.hub,
        "download_url_to_file",
        lambda url, dst, progress=True: (asked.append((url, dst)), open(dst, "wb").close()),
    )
    url = EXPECTED_CHECKPOINTS[name]
    path = hub_weights_file(name)
    assert asked == [(url, str(tmp_path / "checkpoints" / url.rsplit("/", 1)[-1]))] and path.is_file()
    assert hub_weights_file(name) == path and len(asked) == 1, "a cached file is used without a download"


def test_hub_weights_load_from_the_cache_and_record_name_and_sha256(tiny, monkeypatch, tmp_path):
    """The whole "hub" path on the tiny architecture, given a (test-only) checkpoint URL: cache file -> weights."""
    import dataclasses
    import hashlib

    from depthg.model import backbone as bb

    spec = dataclasses.replace(BACKBONES["vit_tiny_patch8"], url="https://example.invalid/x/dino_tiny_test.pth")
    monkeypatch.setitem(bb.BACKBONES, "vit_tiny_patch8", spec)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    cached = tmp_path / "checkpoints" / "dino_tiny_test.pth"
    torch.save(tiny.vit.state_dict(), cached)
    loaded = DinoBackbone("vit_tiny_patch8", "hub")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x)[0], tiny(x)[0], rtol=0, atol=0)
    assert loaded.weights_record == {
        "name": "dino_tiny_test",
        "sha256": hashlib.sha256(cached.read_bytes()).hexdigest(),
    }
    assert loaded.weights_source.startswith("dino_tiny_test (")


@pytest.mark.parametrize("name", ["vit_small_patch16", "dinov2_vits14"])
def test_other_patch_sizes_run(name):
    """Patch 16 and DINOv2's patch 14 (position grid 37x37 interpolated to 8x8 at 112 px)."""
    backbone = DinoBackbone(name, "random")
    feats, attn = backbone(torch.randn(1, 3, 112, 112))
    g = 112 // backbone.patch_size
    assert feats.shape == (1, 384, g, g) and attn.shape == (1, 6, g * g + 1, g * g + 1)
    assert backbone.weights_source.startswith("random(seed=0")


def test_features_equal_timm_at_native_size(tiny):
    x = torch.randn(2, 3, 224, 224)
    feats, _ = tiny(x, attention=False)
    with torch.no_grad():
        ref = tiny.vit.forward_features(x)[:, 1:]  # [B,784,C] after the final norm, CLS dropped
    torch.testing.assert_close(feats, ref.reshape(2, 28, 28, -1).permute(0, 3, 1, 2))


def test_attention_is_the_last_blocks_attention(tiny):
    """The recomputed probabilities reproduce the block's own (fused) attention output."""
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        tokens = tiny._embed(x, (14, 14))
        for block in tiny.vit.blocks[:-1]:
            tokens = block(tokens)
        last = tiny.vit.blocks[-1]
        normed = last.norm1(tokens)
        probs = block_attention(last.attn, normed)  # [B,heads,T,T]
        B, T, C = normed.shape
        v = last.attn.qkv(normed).reshape(B, T, 3, tiny.num_heads, -1)[:, :, 2].transpose(1, 2)  # [B,nh,T,hd]
        manual = last.attn.proj((probs @ v).transpose(1, 2).reshape(B, T, C))
        torch.testing.assert_close(manual, last.attn(normed), atol=1e-5, rtol=1e-4)
    _, attn = tiny(x)
    torch.testing.assert_close(attn, probs)


def test_position_embedding_interpolation():
    pos = torch.randn(1, 28 * 28, 8)
    assert interpolate_pos_embed(pos, (28, 28)) is pos  # native grid: untouched (DINO returns it as is)
    assert interpolate_pos_embed(pos, (40, 40)).shape == (1, 1600, 8)
    assert interpolate_pos_embed(pos, (20, 36)).shape == (1, 720, 8)
    const = torch.full((1, 784, 4), 0.5)  # bicubic weights sum to 1: a constant field stays constant
    torch.testing.assert_close(interpolate_pos_embed(const, (40, 40)), torch.full((1, 1600, 4), 0.5))


def test_non_square_and_bad_sizes(tiny):
    feats, attn = tiny(torch.randn(1, 3, 96, 160))
    assert feats.shape == (1, 192, 12, 20) and attn.shape == (1, 3, 241, 241)
    with pytest.raises(ConfigError, match="multiple of the patch size 8"):
        tiny(torch.randn(1, 3, 100, 100))


def test_frozen_no_grads_and_always_eval():
    torch.manual_seed(0)
    model = DepthGModel("vit_tiny_patch8", "random", dim=16, n_classes=4)
    model.train()
    assert model.head.training and not model.backbone.training and not model.backbone.vit.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    out = model(torch.randn(2, 3, 64, 64))
    assert not out["feats"].requires_grad  # teacher features carry no graph back into the backbone
    out["code"].square().mean().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    groups = model.trainable_parameters()
    assert set(groups) == {"head", "cluster_probe", "linear_probe"}
    assert sum(len(g) for g in groups.values()) == len([p for p in model.parameters() if p.requires_grad])


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        DinoBackbone("vit_huge_patch3", "random")
    for name in ("vit_small_patch8", "vit_base_patch8", "dinov2_vits14", "vit_tiny_patch8"):
        assert name in str(err.value)


def test_hub_offline_error_names_the_exact_file_url_and_options(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache

    def offline(url, dst, progress=True):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as err:
        DinoBackbone("vit_small_patch8", "hub")
    message = str(err.value)
    assert "dino_deitsmall8_300ep_pretrain.pth" in message and EXPECTED_CHECKPOINTS["vit_small_patch8"] in message
    assert "model.weights=<file>" in message and "--weights" in message and "-p weights" in message
    assert ".ckpt" in message and str(tmp_path / "checkpoints") in message
    with pytest.raises(WeightsError, match="random"):
        DinoBackbone("vit_tiny_patch8", "hub")  # no released weights for the synthetic architecture


def test_hf_hub_offline_forbids_the_download_and_names_the_file(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 (as `make test` and offline clusters set it): the downloader is never asked."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    asked = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, progress=True: asked.append(url))
    with pytest.raises(WeightsError, match=r"dino_vitbase8_pretrain\.pth.*HF_HUB_OFFLINE"):
        hub_weights_file("vit_base_patch8")
    assert asked == []


def test_no_network_fails_at_once_without_hf_hub_offline(monkeypatch, tmp_path):
    import dataclasses
    import time

    from depthg.model import backbone as bb

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache
    url = "http://127.0.0.1:9/dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain.pth"  # nobody listens
    monkeypatch.setitem(
        bb.BACKBONES, "vit_small_patch8", dataclasses.replace(bb.BACKBONES["vit_small_patch8"], url=url)
    )
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match=r"dino_deitsmall8_300ep_pretrain\.pth"):
        DinoBackbone("vit_small_patch8", "hub")
    assert time.perf_counter() - t0 < 20, "no network must not mean minutes of retries"


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        DinoBackbone("vit_tiny_patch8", path)


def test_dino_teacher_file_and_timm_file_load(tiny, tmp_path):
    """A DINO training checkpoint (teacher, module./backbone. prefixes, projection head) and a timm file."""
    vit_state = tiny.vit.state_dict()
    dino = {"teacher": {f"module.backbone.{k}": v for k, v in vit_state.items()}, "student": {}, "epoch": 3}
    dino["teacher"]["module.head.mlp.0.weight"] = torch.zeros(4, 192)
    torch.save(dino, tmp_path / "dino.pth")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in vit_state.items()}, tmp_path / "model.safetensors")

    x = torch.randn(1, 3, 64, 64)
    ref, ref_attn = tiny(x)
    for file in ("dino.pth", "model.safetensors"):
        loaded = DinoBackbone("vit_tiny_patch8", tmp_path / file)
        feats, attn = loaded(x)
        torch.testing.assert_close(feats, ref, rtol=0, atol=0)
        torch.testing.assert_close(attn, ref_attn, rtol=0, atol=0)
        assert loaded.weights_source.startswith(f"file:{tmp_path / file} sha256:")
        assert len(loaded.weights_source.split("sha256:")[1]) == 12


def test_wrong_architecture_file(tiny, tmp_path):
    torch.save(tiny.vit.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(WeightsError, match="tiny.pth"):
        DinoBackbone("vit_small_patch16", tmp_path / "tiny.pth")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(WeightsError, match="no tensor state dict"):
        DinoBackbone("vit_tiny_patch8", tmp_path / "empty.pth")
