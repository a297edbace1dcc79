"""Frozen-feature probes of depthg.evaluation.feature_quality: they separate informative features from noise."""

import pytest
import torch
import torch.nn.functional as F

from depthg.evaluation.feature_quality import kmeans_miou, linear_probe_miou, patch_features, render_split
from depthg.model.backbone import DinoBackbone

K, N, G = 3, 12, 4  # classes, images, patch grid (labels at 8 px per patch)


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    patch_labels = torch.randint(0, K, (N, G, G), generator=g)
    labels = patch_labels.repeat_interleave(8, 1).repeat_interleave(8, 2)  # [N,32,32], constant per patch
    informative = F.one_hot(patch_labels, K).permute(0, 3, 1, 2).float() * 3  # [N,K,G,G]
    feats = torch.cat([informative, torch.randn(N, 5, G, G, generator=g)], 1)
    return feats, torch.randn(N, K + 5, G, G, generator=g), labels


def test_kmeans_finds_the_classes_of_informative_features_not_of_noise():
    feats, noise, labels = _data(0)
    assert kmeans_miou(feats, labels, K)["miou"] > 90
    assert kmeans_miou(noise, labels, K)["miou"] < 50


@pytest.mark.slow
def test_linear_probe_learns_informative_features_not_noise():
    (ft, nt, lt), (fv, nv, lv) = _data(1), _data(2)
    good = linear_probe_miou(ft, lt, fv, lv, K, steps=100)
    bad = linear_probe_miou(nt, lt, nv, lv, K, steps=100)
    assert good["miou"] > 80 and bad["miou"] < 50, (good, bad)


def test_render_split_and_features_shapes():
    img, lab = render_split("val", 2, res=32)
    assert img.shape == (2, 32, 32, 3) and img.dtype == torch.uint8 and lab.shape == (2, 32, 32)
    assert not torch.equal(img, render_split("train", 2, res=32)[0]), "val scenes are not the training scenes"
    f = patch_features(DinoBackbone("vit_tiny_patch8", "random"), img)
    assert f.shape == (2, 192, 4, 4) and torch.isfinite(f).all()
