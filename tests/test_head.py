"""Segmentation head, cluster probe and linear probe (depthg.model.head), and DepthGModel's code paths."""

import pytest
import torch
import torch.nn.functional as F

from depthg.model.head import ClusterProbe, LinearProbe, SegmentationHead
from depthg.model.segmenter import DepthGModel


def _feats(B=2, C=24, h=6, w=5, seed=0):
    return torch.randn(B, C, h, w, generator=torch.Generator().manual_seed(seed))


def test_head_shapes_and_released_key_names():
    head = SegmentationHead(24, 7)
    teacher, z = head.eval()(_feats())
    assert teacher.shape == (2, 24, 6, 5) and z.shape == (2, 7, 6, 5)
    assert set(head.state_dict()) == {
        "cluster1.0.weight",
        "cluster1.0.bias",
        "cluster2.0.weight",
        "cluster2.0.bias",
        "cluster2.2.weight",
        "cluster2.2.bias",
    }
    assert set(ClusterProbe(7, 5).state_dict()) == {"clusters"}
    assert set(LinearProbe(7, 3).state_dict()) == {"weight", "bias"}


def test_head_eval_is_deterministic_and_exact():
    torch.manual_seed(0)
    head = SegmentationHead(24, 7).eval()
    f = _feats()
    teacher, z = head(f)
    assert teacher is f
    torch.testing.assert_close(z, head.cluster1(f) + head.cluster2(f))
    w1, b1 = head.cluster1[0].weight[:, :, 0, 0], head.cluster1[0].bias  # the formula of METHOD §2.2
    w2, b2 = head.cluster2[0].weight[:, :, 0, 0], head.cluster2[0].bias
    w3, b3 = head.cluster2[2].weight[:, :, 0, 0], head.cluster2[2].bias
    lin = torch.einsum("kc,bchw->bkhw", w1, f) + b1[:, None, None]
    hidden = torch.relu(torch.einsum("dc,bchw->bdhw", w2, f) + b2[:, None, None])
    torch.testing.assert_close(z, lin + torch.einsum("kd,bdhw->bkhw", w3, hidden) + b3[:, None, None])


@pytest.mark.parametrize("teacher_dropout", [True, False])
def test_head_training_three_independent_dropout_draws(teacher_dropout):
    torch.manual_seed(0)
    head = SegmentationHead(64, 7, dropout=teacher_dropout).train()
    f = _feats(B=4, C=64) + 3.0  # no zero channels before dropout
    torch.manual_seed(123)
    teacher, z = head(f)
    torch.manual_seed(123)  # replay the draws in the release's order: linear, nonlinear, teacher
    drop = torch.nn.Dropout2d(p=0.1).train()
    d1, d2, d3 = drop(f), drop(f), drop(f)
    torch.testing.assert_close(z, head.cluster1(d1) + head.cluster2(d2))
    masks = [(d != 0).all(dim=(2, 3)) for d in (d1, d2, d3)]  # [B,C] kept channels of each draw
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    assert all(0.75 < m.float().mean() < 0.98 for m in masks)  # p = 0.1 channel dropout
    torch.testing.assert_close(
        d1[masks[0][..., None, None].expand_as(d1)], (f / 0.9)[masks[0][..., None, None].expand_as(f)]
    )  # kept channels rescaled
    if teacher_dropout:
        torch.testing.assert_close(teacher, d3)
    else:
        assert teacher is f


def test_cluster_probe_loss_and_inference():
    torch.manual_seed(0)
    probe = ClusterProbe(7, 5)
    assert probe.clusters.shape == (5, 7) and probe.clusters.requires_grad
    code = _feats(C=7)
    cos = torch.einsum("bkhw,nk->bnhw", F.normalize(code, dim=1), F.normalize(probe.clusters, dim=1))
    torch.testing.assert_close(probe(code), cos)
    torch.testing.assert_close(probe.loss(code), -cos.max(dim=1).values.mean())
    log_p = probe.log_probs(code)  # alpha = 2 by default (METHOD §6.2)
    torch.testing.assert_close(log_p, torch.log_softmax(2 * cos, dim=1))
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(2, 6, 5))
    assert torch.equal(probe.predict(code), cos.argmax(1))
    # codes that sit exactly on centroids (any length) reach the minimum -1
    on_centroids = 3.0 * probe.clusters.detach()[torch.tensor([0, 4, 2])].T.reshape(1, 7, 1, 3)
    torch.testing.assert_close(probe.loss(on_centroids), torch.tensor(-1.0))
    probe.loss(code).backward()
    assert probe.clusters.grad is not None and probe.clusters.grad.abs().sum() > 0


def test_linear_probe_loss_ignores_invalid_labels():
    torch.manual_seed(0)
    probe = LinearProbe(7, 3)
    code = _feats(C=7, h=4, w=4)
    labels = torch.randint(0, 3, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    labels[0, :4] = -1
    labels[1, -3:] = 255  # outside [0, n): ignored (METHOD §2.3)
    logits = F.interpolate(probe(code), size=(16, 16), mode="bilinear", align_corners=False)
    valid = (labels >= 0) & (labels < 3)
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], labels[valid])
    torch.testing.assert_close(probe.loss(code, labels), expected)
    assert probe.predict(code).shape == (2, 4, 4)
    torch.testing.assert_close(probe.log_probs(code).exp().sum(1), torch.ones(2, 4, 4))
    empty = probe.loss(code, torch.full((2, 16, 16), -1))
    assert empty.item() == 0.0 and empty.requires_grad


def test_model_forward_and_flip_averaged_prediction():
    torch.manual_seed(0)
    model = DepthGModel("vit_tiny_patch8", "random", dim=16, n_classes=4, extra_clusters=2)
    assert model.cluster_probe.clusters.shape == (6, 16) and model.linear_probe.weight.shape == (4, 16, 1, 1)
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x, attention=True)
    assert out["feats"].shape == (2, 192, 8, 8) and out["code"].shape == (2, 16, 8, 8)
    assert out["attn"].shape == (2, 3, 65, 65)
    assert "attn" not in model(x)
    model.eval()
    with pytest.raises(AssertionError, match="eval"):
        model.train().predict_code(x)
    model.eval()
    code = model.predict_code(x)
    expected = (model(x)["code"] + model(x.flip(-1))["code"].flip(-1)) / 2
    torch.testing.assert_close(code, expected)
    torch.testing.assert_close(model.predict_code(x, flip=False), model(x)["code"])
    # flip-averaged codes are flip-equivariant: predicting on the mirrored image mirrors the code
    torch.testing.assert_close(model.predict_code(x.flip(-1)), code.flip(-1), atol=1e-5, rtol=1e-4)
    f, attn = model.features(x)
    assert attn is None and not f.requires_grad


def test_model_from_config_section():
    from types import SimpleNamespace

    section = SimpleNamespace(
        backbone="vit_tiny_patch8", weights="random", dim=12, dropout=False, n_classes=5, extra_clusters=1
    )
    model = DepthGModel.from_config(section)
    assert model.head.cluster1[0].out_channels == 12 and model.head.teacher_dropout is False
    assert model.cluster_probe.clusters.shape == (6, 12) and model.linear_probe.n_classes == 5
