"""Contract of every kernel in `kernels.KERNELS`: shape, dtype, batch-size invariance,
and the same numbers eagerly, traced, and compiled with XLA.

One table describes every kernel; a kernel missing from it fails
`test_table_covers_every_kernel`.
"""

import numpy as np
import pytest
import tensorflow as tf

from sightline import kernels
from tests.tolerances import KERNEL_ATOL, KERNEL_RTOL

B = 5
MAP_SHAPE = (5, 6)  # activation maps, h != w so a transpose cannot pass
IMAGE_SHAPE = (7, 8, 3)  # images, H != W
K = 4  # activation channels
NUM_CLASSES = 3

_WEIGHTS = np.random.default_rng(99).uniform(-2.0, 2.0, (NUM_CLASSES,) + IMAGE_SHAPE)


def analytic_input_gradient(images, targets):
    """d/dx of y_c = sum sin(W_c x) + 0.1 x^2: nonlinear, and different per class."""
    w = tf.gather(tf.constant(_WEIGHTS, tf.float32), targets)
    return w * tf.cos(w * images) + 0.2 * images


def analytic_score(images, targets):
    """A bounded, class-dependent score of (masked) images: sigmoid of a weighted sum."""
    w = tf.gather(tf.constant(_WEIGHTS, tf.float32), targets)
    return tf.sigmoid(tf.reduce_sum(w * images, axis=(1, 2, 3)) / 20.0)


def _activations(rng, n):
    return np.maximum(rng.normal(0.3, 1.0, (n,) + MAP_SHAPE + (K,)), 0).astype(np.float32)


def _images(rng, n):
    return rng.uniform(0, 1, (n,) + IMAGE_SHAPE).astype(np.float32)


def _targets(rng, n):
    return rng.integers(0, NUM_CLASSES, n).astype(np.int32)


class Entry:
    """How to build a batch of inputs for one kernel and how to call it.

    make(rng, n) -> tuple of arrays, each batched along axis 0 (so a batch can be
    sliced image by image); call(kernel, *tensors) -> heatmaps[n, *map_shape].
    """

    def __init__(self, make, call, map_shape):
        self.make, self.call, self.map_shape = make, call, map_shape


TABLE = {
    "cam": Entry(
        make=lambda rng, n: (_activations(rng, n),
                             rng.normal(size=(n, K)).astype(np.float32)),
        call=lambda kernel, activations, weights: kernel(activations, weights),
        map_shape=MAP_SHAPE),
    "gradcam": Entry(
        make=lambda rng, n: (_activations(rng, n),
                             rng.normal(size=(n,) + MAP_SHAPE + (K,)).astype(np.float32)),
        call=lambda kernel, activations, grads: kernel(activations, grads),
        map_shape=MAP_SHAPE),
    "gradcam_plus_plus": Entry(
        make=lambda rng, n: (_activations(rng, n),
                             rng.normal(size=(n,) + MAP_SHAPE + (K,)).astype(np.float32)),
        call=lambda kernel, activations, grads: kernel(activations, grads),
        map_shape=MAP_SHAPE),
    "scorecam": Entry(
        make=lambda rng, n: (_images(rng, n), _targets(rng, n), _activations(rng, n)),
        call=lambda kernel, images, targets, activations: kernel(
            analytic_score, images, targets, activations, channels_per_call=3),
        map_shape=MAP_SHAPE),
    "saliency": Entry(
        make=lambda rng, n: (rng.normal(size=(n,) + IMAGE_SHAPE).astype(np.float32),),
        call=lambda kernel, grads: kernel(grads, "sum"),
        map_shape=IMAGE_SHAPE[:2]),
    "smoothgrad": Entry(
        make=lambda rng, n: (_images(rng, n), _targets(rng, n),
                             rng.permutation(100)[:n].astype(np.int64)),
        call=lambda kernel, images, targets, sample_index: kernel(
            analytic_input_gradient, images, targets, sample_index, num_samples=5,
            noise_sigma=0.2, noise_seed=7, copies_per_call=2),
        map_shape=IMAGE_SHAPE[:2]),
    "integrated_gradients": Entry(
        make=lambda rng, n: (_images(rng, n), _targets(rng, n),
                             rng.uniform(-0.5, 0.5, (n,) + IMAGE_SHAPE).astype(np.float32)),
        call=lambda kernel, images, targets, baselines: kernel(
            analytic_input_gradient, images, targets, baselines, num_steps=6,
            copies_per_call=4),
        map_shape=IMAGE_SHAPE[:2]),
}

NAMES = sorted(TABLE)


def test_table_covers_every_kernel():
    assert set(TABLE) == set(kernels.KERNELS)


def run(name, inputs, mode="eager"):
    entry, kernel = TABLE[name], kernels.KERNELS[name]
    tensors = [tf.constant(x) for x in inputs]

    def call(*tensors):
        return entry.call(kernel, *tensors)

    if mode == "function":
        call = tf.function(call)
    elif mode == "xla":
        call = tf.function(call, jit_compile=True)
    return call(*tensors)


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64),
                               np.asarray(expected, np.float64),
                               rtol=KERNEL_RTOL, atol=KERNEL_ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_dtype(rng, name):
    out = run(name, TABLE[name].make(rng, B))
    assert out.dtype == tf.float32
    assert tuple(out.shape) == (B,) + TABLE[name].map_shape
    assert np.isfinite(out.numpy()).all()
    assert np.abs(out.numpy()).max() > 0, "all-zero maps would make the other checks vacuous"


@pytest.mark.parametrize("name", NAMES)
def test_batch_size_invariance(rng, name):
    inputs = TABLE[name].make(rng, B)
    full = run(name, inputs).numpy()
    for b in range(B):
        single = run(name, [x[b:b + 1] for x in inputs]).numpy()
        assert_close(single[0], full[b])


@pytest.mark.parametrize("mode", ["function", "xla"])
@pytest.mark.parametrize("name", NAMES)
def test_eager_traced_and_xla_agree(rng, name, mode):
    inputs = TABLE[name].make(rng, B)
    assert_close(run(name, inputs, mode), run(name, inputs, "eager"))
