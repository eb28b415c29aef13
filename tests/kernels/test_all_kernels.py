"""Contract of every method in the table of methods: its kernel's shape, dtype,
batch-size invariance, and the same numbers eagerly, traced, and compiled with XLA.

The inputs come from each row's arguments and options: a new row is tested here
without any edit, and a new kind of step value fails
`test_every_step_value_and_option_has_a_maker` until it has a maker.
"""

import numpy as np
import pytest
import tensorflow as tf

from sightline.kernels import methods
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


# One maker per step value a kernel can ask for (methods.STEP_VALUES): make(rng, n) ->
# an array batched along axis 0, or a function of (images, targets) standing in for
# the model. Kernels are built from the table, so a new row is enrolled here as is.
VALUE_MAKERS = {
    methods.ACTIVATIONS: _activations,
    methods.CAM_ACTIVATIONS: _activations,
    methods.ACTIVATION_GRADS: lambda rng, n: rng.normal(size=(n,) + MAP_SHAPE + (K,)).astype(np.float32),
    methods.CLASS_WEIGHTS: lambda rng, n: rng.normal(size=(n, K)).astype(np.float32),
    methods.INPUT_GRADS: lambda rng, n: rng.normal(size=(n,) + IMAGE_SHAPE).astype(np.float32),
    methods.IMAGES: _images,
    methods.TARGETS: _targets,
    methods.SAMPLE_INDEX: lambda rng, n: rng.permutation(100)[:n].astype(np.int64),
    methods.INPUT_GRADIENT: lambda rng, n: analytic_input_gradient,
    methods.TARGET_PROBABILITY: lambda rng, n: analytic_score,
}
# Small, non-default values for every option, so the options really reach the kernels.
OPTION_VALUES = {"channel_reduce": "sum", "num_copies": 5, "noise_sigma": 0.2, "noise_seed": 7,
                 "num_steps": 6, "baseline": 0.25}
CHUNK = 2  # copies or channels per call: below every count above, so chunking runs

NAMES = list(methods.METHODS)


def test_every_step_value_and_option_has_a_maker():
    assert set(VALUE_MAKERS) == set(methods.STEP_VALUES)
    assert set(OPTION_VALUES) == set(methods.OPTIONS) - {methods.MEMORY_BUDGET}


def make_inputs(name, rng, n):
    """{argument: array or function} for the row's kernel arguments."""
    return {argument: VALUE_MAKERS[argument](rng, n) for argument in methods.METHODS[name].arguments}


def map_shape(name):
    return MAP_SHAPE if methods.METHODS[name].resolution == methods.LAYER else IMAGE_SHAPE[:2]


def sliced(inputs, b):
    return {key: value if callable(value) else value[b:b + 1] for key, value in inputs.items()}


def run(name, inputs, mode="eager"):
    row = methods.METHODS[name]
    kernel = row.load_kernel()
    functions = {key: value for key, value in inputs.items() if callable(value)}
    arrays = {key: tf.constant(value) for key, value in inputs.items() if not callable(value)}
    keywords = {option: OPTION_VALUES[option] for option in row.options}
    if row.chunk_keyword:
        keywords[row.chunk_keyword] = CHUNK

    def call(arrays):
        values = {**functions, **arrays}
        return kernel(*(values[a] for a in row.arguments), **keywords)

    if mode == "function":
        call = tf.function(call)
    elif mode == "xla":
        call = tf.function(call, jit_compile=True)
    return call(arrays)


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64),
                               np.asarray(expected, np.float64),
                               rtol=KERNEL_RTOL, atol=KERNEL_ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_dtype(rng, name):
    out = run(name, make_inputs(name, rng, B))
    assert out.dtype == tf.float32
    assert tuple(out.shape) == (B,) + map_shape(name)
    assert np.isfinite(out.numpy()).all()
    assert np.abs(out.numpy()).max() > 0, "all-zero maps would make the other checks vacuous"


@pytest.mark.parametrize("name", NAMES)
def test_batch_size_invariance(rng, name):
    inputs = make_inputs(name, rng, B)
    full = run(name, inputs).numpy()
    for b in range(B):
        single = run(name, sliced(inputs, b)).numpy()
        assert_close(single[0], full[b])


@pytest.mark.parametrize("mode", ["function", "xla"])
@pytest.mark.parametrize("name", NAMES)
def test_eager_traced_and_xla_agree(rng, name, mode):
    inputs = make_inputs(name, rng, B)
    assert_close(run(name, inputs, mode), run(name, inputs, "eager"))
