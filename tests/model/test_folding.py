"""Batch normalisation folded into convolutions: the adapter's forward pass computes what
the model computes, with the weights as they are when it runs, and leaves alone what it
must not fold."""

import re

import numpy as np
import pytest
import tensorflow as tf

from sightline import adapt_model, explain
from tests.models import FLAVORS, keras_module
from tests.tolerances import MIXED_PRECISION_MIN_CORRELATION, MODEL_RELATIVE_ATOL

FOLDABLE = {"bn_first", "bn_depthwise", "bn_last"}


def batch_normalized_cnn(flavor, seed=0):
    """Conv(strided, bias) -> BN -> ReLU6 -> DepthwiseConv(x2) -> BN(no scale) -> ReLU ->
    Conv 1x1 read by its BN(no centre) and by an Add -> Conv(valid) -> BN -> ReLU (the
    default target) -> GAP -> Dense "logits" -> Softmax. The 1x1 convolution's output is
    read twice, so its normalisation cannot be folded."""
    K = keras_module(flavor)
    K.utils.set_random_seed(seed)
    layers = K.layers
    inputs = K.Input((12, 12, 3))
    x = layers.Conv2D(6, 3, strides=2, padding="same", name="conv_first")(inputs)
    x = layers.BatchNormalization(name="bn_first")(x)
    x = layers.ReLU(6.0)(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False,
                               name="depthwise")(x)
    x = layers.BatchNormalization(scale=False, name="bn_depthwise")(x)
    x = layers.ReLU()(x)
    shared = layers.Conv2D(8, 1, use_bias=False, name="conv_shared")(x)
    x = layers.Add()([shared, layers.BatchNormalization(center=False, name="bn_shared")(shared)])
    x = layers.Conv2D(8, 3, padding="valid", name="conv_last")(x)
    x = layers.BatchNormalization(name="bn_last")(x)
    x = layers.ReLU(name="last_relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(4, name="logits")(x)
    model = K.Model(inputs, layers.Softmax()(x))
    # Statistics far from the initial ones (mean 0, variance 1, gamma 1, beta 0), which
    # make a normalisation nearly the identity and would hide a mistake in folding it.
    rng = np.random.default_rng(seed)
    first = model.get_layer("conv_first")
    first.bias.assign(rng.uniform(-1, 1, first.bias.shape).astype(np.float32))  # not zeros
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([_statistic(rng, weight) for weight in zip(
                layer.get_weights(), _statistic_kinds(layer))])
    return model


def _statistic_kinds(layer):
    return [kind for kind, present in (("gamma", layer.scale), ("beta", layer.center),
                                       ("mean", True), ("variance", True)) if present]


def _statistic(rng, weight_and_kind):
    weight, kind = weight_and_kind
    low, high = {"gamma": (0.5, 2.0), "beta": (-1.0, 1.0), "mean": (-1.0, 1.0),
                 "variance": (0.2, 3.0)}[kind]
    return rng.uniform(low, high, weight.shape).astype(np.float32)


def _images(n=4, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, 12, 12, 3)).astype(np.float32)


def _reference(flavor, model, layer_name):
    """The model's own layers (normalisations unfolded) up to `layer_name`; built before
    adapting, from the tensors the model was built with."""
    K = keras_module(flavor)
    return K.Model(model.inputs[0], model.get_layer(layer_name).output)


def _input_gradient(reference, images, targets):
    """The reference's d logit_target / d x, eagerly."""
    images = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = reference(images, training=False)
        score = tf.reduce_sum(logits * tf.one_hot(targets, logits.shape[-1]), axis=-1)
    return tape.gradient(score, images).numpy()


def _normalizations_computed(adapter):
    """Names of the normalisation layers ("bn_...") whose own ops compute something in the
    traced forward pass: a folded one has none (Keras 3 scopes ops as "bn_first_1/...",
    tf_keras as "bn_first/...")."""
    graph = tf.function(adapter.forward).get_concrete_function(
        tf.TensorSpec([2, 12, 12, 3], tf.float32)).graph
    bookkeeping = {"Placeholder", "Const", "ReadVariableOp", "Identity", "NoOp"}
    return {match.group(1) for op in graph.get_operations() if op.type not in bookkeeping
            for match in [re.search(r"(?:^|/)(bn_[a-z]+)(?:_\d+)?/", op.name)] if match}


def _check_saliency(model, logits_reference, images, targets):
    """explain()'s raw saliency (run on the folded twin) equals max |d logit / d input|
    over channels of the unfolded reference."""
    targets = np.array(targets, np.int32)
    expected = np.abs(_input_gradient(logits_reference, images, targets)).max(axis=-1)
    maps = explain(model, images, ("saliency",), targets=targets, normalize=False,
                   batch_size=4).heatmaps["saliency"]
    _close_relative(maps, expected)


def _close_relative(actual, expected, tolerance=MODEL_RELATIVE_ATOL):
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual / scale, expected / scale, rtol=0, atol=tolerance)


@pytest.fixture(scope="module", params=FLAVORS)
def flavor(request):
    return request.param


def test_folded_forward_and_saliency_equal_the_model(flavor):
    model = batch_normalized_cnn(flavor)
    logits_reference = _reference(flavor, model, "logits")
    activations_reference = _reference(flavor, model, "last_relu")
    adapter = adapt_model(model)
    assert set(adapter.folded_normalizations) == FOLDABLE
    assert _normalizations_computed(adapter) == {"bn_shared"}
    assert adapter.layer_name == "last_relu"
    images = _images()
    activations, logits = adapter.forward(tf.constant(images))
    _close_relative(logits.numpy(), logits_reference(images).numpy())
    _close_relative(activations.numpy(), activations_reference(images).numpy())
    # The model the user holds still computes what it did.
    np.testing.assert_allclose(model(images).numpy(),
                               tf.nn.softmax(logits_reference(images)).numpy(), atol=1e-6)
    _check_saliency(model, logits_reference, images, [0, 1, 2, 3])


def test_folding_reads_the_weights_when_it_runs(flavor):
    model = batch_normalized_cnn(flavor)
    reference = _reference(flavor, model, "logits")
    images = _images()
    explain(model, images, ("gradcam",), batch_size=4)  # compiles and caches the step
    first, depthwise = model.get_layer("bn_first"), model.get_layer("depthwise")
    first.moving_mean.assign(first.moving_mean.numpy() + 0.5)
    first.moving_variance.assign(first.moving_variance.numpy() * 3.0)
    first.gamma.assign(-first.gamma.numpy())
    kernel = depthwise.weights[0]
    kernel.assign(kernel.numpy()[::-1])
    _check_saliency(model, reference, images, [3, 2, 1, 0])
    _, logits = adapt_model(model).forward(tf.constant(images))
    _close_relative(logits.numpy(), reference(images).numpy())


def test_target_convolution_keeps_its_output_before_normalization(flavor):
    model = batch_normalized_cnn(flavor)
    logits_reference = _reference(flavor, model, "logits")
    convolution_reference = _reference(flavor, model, "conv_last")
    adapter = adapt_model(model, layer="conv_last")
    assert set(adapter.folded_normalizations) == FOLDABLE - {"bn_last"}
    images = _images()
    activations, logits = adapter.forward(tf.constant(images))
    _close_relative(activations.numpy(), convolution_reference(images).numpy())
    _close_relative(logits.numpy(), logits_reference(images).numpy())


def test_target_normalization_is_folded_and_keeps_its_output(flavor):
    model = batch_normalized_cnn(flavor)
    normalization_reference = _reference(flavor, model, "bn_last")
    adapter = adapt_model(model, layer="bn_last")
    assert set(adapter.folded_normalizations) == FOLDABLE
    images = _images()
    activations, _ = adapter.forward(tf.constant(images))
    _close_relative(activations.numpy(), normalization_reference(images).numpy())


def test_mixed_precision_twin_folds_too(flavor):
    model = batch_normalized_cnn(flavor)
    adapter = adapt_model(model, precision="mixed_bfloat16")
    assert set(adapter.folded_normalizations) == FOLDABLE
    images = _images()
    mixed = explain(model, images, ("saliency",), precision="mixed_bfloat16",
                    batch_size=4).heatmaps["saliency"]
    full = explain(model, images, ("saliency",), batch_size=4).heatmaps["saliency"]
    correlation = np.corrcoef(mixed.ravel(), full.ravel())[0, 1]
    assert correlation >= MIXED_PRECISION_MIN_CORRELATION["saliency"]


def test_nested_base_is_folded_inside(flavor):
    K = keras_module(flavor)
    cnn = batch_normalized_cnn(flavor)
    base = K.Model(cnn.inputs[0], cnn.get_layer("last_relu").output, name="base")
    inputs = K.Input((12, 12, 3))
    features = base(inputs, training=False)
    logits = K.layers.Dense(4, name="logits")(K.layers.GlobalAveragePooling2D()(features))
    model = K.Model(inputs, K.layers.Softmax()(logits))
    logits_reference = _reference(flavor, model, "logits")
    adapter = adapt_model(model)
    assert adapter.layer_name == "base"
    assert set(adapter.folded_normalizations) == {f"base/{name}" for name in FOLDABLE}
    assert _normalizations_computed(adapter) == {"bn_shared"}
    images = _images()
    activations, logits = adapter.forward(tf.constant(images))
    _close_relative(activations.numpy(), base(images, training=False).numpy())
    _close_relative(logits.numpy(), logits_reference(images).numpy())
    _check_saliency(model, logits_reference, images, [1, 1, 0, 3])


def test_sequential_model_is_folded(flavor):
    K = keras_module(flavor)
    K.utils.set_random_seed(0)
    model = K.Sequential([
        K.Input((12, 12, 3)),
        K.layers.Conv2D(6, 3, strides=2, padding="same", name="conv_first"),
        K.layers.BatchNormalization(name="bn_first"),
        K.layers.ReLU(),
        K.layers.GlobalAveragePooling2D(),
        K.layers.Dense(4, activation="softmax", name="classifier"),
    ])
    normalization = model.get_layer("bn_first")
    rng = np.random.default_rng(0)
    normalization.set_weights([_statistic(rng, weight) for weight in zip(
        normalization.get_weights(), _statistic_kinds(normalization))])
    adapter = adapt_model(model)
    assert adapter.folded_normalizations == ("bn_first",)
    assert _normalizations_computed(adapter) == set()
    images = _images()
    _, logits = adapter.forward(tf.constant(images))
    np.testing.assert_allclose(adapter.probabilities(logits).numpy(), model(images).numpy(),
                               rtol=1e-5, atol=1e-6)
