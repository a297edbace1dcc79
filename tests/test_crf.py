"""DenseCRF: released parameters and BGR order, sharpening, and a worker pool that fails loudly instead of hanging."""

import os
import time

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
import torch
from pydensecrf.utils import unary_from_softmax

from depthg.evaluation.crf import (
    CRFError,
    CRFPool,
    batched_crf,
    crf_from_probabilities,
    dense_crf,
    image_to_uint8,
    upsampled_softmax,
)

H = W = 64


@pytest.fixture(scope="module")
def scene():
    """A two-region image (plus a disc) with its labels, and noisy logits whose argmax is ~35% wrong."""
    rng = np.random.default_rng(0)
    labels = np.zeros((H, W), dtype=np.int64)
    labels[:, W // 2 :] = 1
    yy, xx = np.mgrid[:H, :W]
    labels[(yy - 20) ** 2 + (xx - 16) ** 2 < 100] = 2
    colours = np.array([[40, 60, 200], [200, 180, 40], [30, 200, 60]])
    image = np.clip(colours[labels] + rng.normal(0, 8, (H, W, 3)), 0, 255).astype(np.uint8)
    logits = (np.eye(3)[labels].transpose(2, 0, 1) + rng.normal(0, 1, (3, H, W))).astype(np.float32)
    return image, logits, labels


@pytest.fixture(scope="module")
def noise_batch():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    logits = rng.normal(0, 1, (3, 4, 16, 16)).astype(np.float32)  # low-res logits: exercises the resize
    return images, logits


def test_crf_sharpens_a_noisy_segmentation(scene):
    image, logits, labels = scene
    q = dense_crf(image, torch.from_numpy(logits))
    assert q.shape == (3, H, W) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)  # Q is a distribution per pixel
    before, after = (logits.argmax(0) == labels).mean(), (q.argmax(0) == labels).mean()
    assert before < 0.75 and after > 0.95, (before, after)


def released_crf(image_for_pydensecrf, probs):
    """The released pipeline written out with literal parameters; the image is handed over as given."""
    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image_for_pydensecrf), compat=4)
    return np.array(crf.inference(10)).reshape(c, h, w)


def test_released_parameters_and_bgr_order(noise_batch):
    images, logits = noise_batch
    image = images[0]
    probs = (
        torch.nn.functional.interpolate(torch.from_numpy(logits[:1]), size=(H, W), mode="bilinear", align_corners=False)
        .softmax(1)[0]
        .numpy()
    )
    np.testing.assert_allclose(upsampled_softmax(logits[:1], (H, W))[0], probs, atol=1e-7)
    ours = dense_crf(image, logits[0])
    np.testing.assert_array_equal(ours, released_crf(image[:, :, ::-1], probs))  # BGR, as the release
    rgb = released_crf(image, probs)
    assert np.abs(ours - rgb).max() > 0.1  # the channel order changes the result on a noise image


def test_pool_equals_in_process_and_is_reused(noise_batch):
    images, logits = noise_batch
    expected = np.stack([dense_crf(im, lg) for im, lg in zip(images, logits)])
    np.testing.assert_array_equal(batched_crf(images, logits, workers=0), expected)
    with CRFPool(workers=2, timeout=30) as pool:
        np.testing.assert_array_equal(pool(torch.from_numpy(images), torch.from_numpy(logits)), expected)
        pids = pool.pids
        np.testing.assert_array_equal(batched_crf(images[:2], logits[:2], pool=pool), expected[:2])
        assert pool.pids == pids and len(pids) == 2  # the second batch reused the running workers


def test_image_to_uint8_truncates_like_to_pil_image():
    from torchvision.transforms.functional import to_pil_image

    x = torch.rand(2, 3, 5, 7)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 1.0, 0.0
    ours = image_to_uint8(x)
    assert ours.shape == (2, 5, 7, 3) and ours.dtype == np.uint8
    for b in range(2):
        np.testing.assert_array_equal(ours[b], np.array(to_pil_image(x[b])))


@pytest.fixture(scope="module")
def fragile_pool():
    with CRFPool(workers=1, timeout=2.0) as pool:
        yield pool


def test_error_inside_worker_surfaces(fragile_pool, noise_batch):
    images, logits = noise_batch
    start = time.monotonic()
    with pytest.raises(CRFError, match="item 0.*image must be uint8"):
        fragile_pool(images.astype(np.float32), logits)  # wrong dtype: raises inside the worker
    with pytest.raises(CRFError, match="probabilities"):  # wrong shapes, raised inside the worker
        fragile_pool._map(crf_from_probabilities, [(images[0], np.ones((4, 8, 8), np.float32))])
    assert time.monotonic() - start < 20


def test_dead_worker_surfaces_and_pool_recovers(fragile_pool, noise_batch):
    images, logits = noise_batch
    with pytest.raises(CRFError, match="died"):
        fragile_pool._map(os._exit, [(3,)])  # the worker process exits abruptly (like an OOM kill)
    np.testing.assert_array_equal(fragile_pool(images[:1], logits[:1])[0], dense_crf(images[0], logits[0]))


def test_stuck_worker_times_out(fragile_pool):
    start = time.monotonic()
    with pytest.raises(CRFError, match="within"):
        fragile_pool._map(time.sleep, [(60,)])
    assert time.monotonic() - start < 20  # 2 s timeout + kill, not 60 s (nor forever)
