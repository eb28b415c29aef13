"""Score-CAM against a float64 NumPy reference: per image, per channel, a masked input
scored by an analytic function."""

import numpy as np
import pytest
import tensorflow as tf

from sightline.kernels import scorecam
from tests.references import reference_bilinear
from tests.tolerances import KERNEL_ATOL, KERNEL_RTOL

B, H, W, C = 3, 9, 7, 2
h, w, K = 4, 3, 5
_WEIGHTS = np.random.default_rng(5).normal(size=(4, H, W, C))


def score(images, targets):
    weights = tf.gather(tf.constant(_WEIGHTS, tf.float32), targets)
    return tf.sigmoid(tf.reduce_sum(weights * images, axis=(1, 2, 3)))


def reference_scorecam(images, targets, activations):
    images = images.astype(np.float64)
    activations = activations.astype(np.float64)
    maps = np.zeros((B, h, w))
    for b in range(B):
        weights = np.zeros(K)
        for k in range(K):
            upsampled = reference_bilinear(activations[b:b + 1, :, :, k], (H, W))[0]
            low, high = upsampled.min(), upsampled.max()
            mask = (upsampled - low) / (high - low) if high > low else np.zeros_like(upsampled)
            masked = images[b] * mask[..., None]
            weights[k] = 1 / (1 + np.exp(-(_WEIGHTS[targets[b]] * masked).sum()))
        maps[b] = np.maximum((activations[b] * weights).sum(-1), 0)
    return maps


@pytest.mark.parametrize("channels_per_call", [None, 1, 2, 5])
def test_scorecam_matches_reference(rng, channels_per_call):
    images = rng.uniform(0, 1, (B, H, W, C)).astype(np.float32)
    targets = rng.integers(0, 4, B).astype(np.int32)
    activations = rng.normal(0.2, 1.0, (B, h, w, K)).astype(np.float32)
    activations[0, :, :, 1] = 0.7  # a constant channel: its mask is 0, its weight score(0)
    result = scorecam(score, images, targets, activations, channels_per_call=channels_per_call)
    expected = reference_scorecam(images, targets, activations)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(result.numpy(), expected, rtol=KERNEL_RTOL, atol=KERNEL_ATOL)


def test_scorecam_calls_the_score_once_per_chunk_of_channels(rng):
    calls = []

    def counting_score(images, targets):
        calls.append(images.shape[0])
        return score(images, targets)

    images = rng.uniform(0, 1, (B, H, W, C)).astype(np.float32)
    activations = rng.normal(size=(B, h, w, K)).astype(np.float32)
    scorecam(counting_score, images, np.zeros(B, np.int32), activations, channels_per_call=2)
    # Eagerly the graph loop runs its body once per chunk: 3 chunks of 2 channels x B.
    assert calls == [2 * B] * 3
