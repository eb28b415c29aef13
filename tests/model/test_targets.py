"""Target layers the old rule could not reach: layers inside a nested base, Keras 3
operations, Flatten heads, subclassed models; and the warnings when the default or the
explained score is not what a user would assume."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from sightline import adapt_model, explain
from tests import models
from tests.models import FLAVORS, keras_module
from tests.tolerances import MODEL_RELATIVE_ATOL


def _images(shape, n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


def _close_relative(actual, expected):
    assert np.abs(expected).max() > 0, "a map of zeros would compare equal to anything"
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(actual, np.float64) / scale, expected / scale,
                               atol=MODEL_RELATIVE_ATOL)


def _gradcam(activations, grads):
    """Grad-CAM [B,h,w] float64 from activations and their gradients [B,h,w,K]."""
    a, g = (np.asarray(t, np.float64) for t in (activations, grads))
    return np.maximum((a * g.mean(axis=(1, 2), keepdims=True)).sum(-1), 0)


def _silently(build):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return build()


# ----------------------------------------------------------------------------- nested base


def _transfer_model(flavor):
    """A small base (conv, batch normalisation, residual add) used as a layer, with a
    GAP + dense head: transfer learning in miniature."""
    K = keras_module(flavor)
    K.utils.set_random_seed(0)
    inputs = K.Input((12, 12, 3))
    x = K.layers.Conv2D(6, 3, padding="same", name="stem")(inputs)
    x = K.layers.ReLU(name="stem_relu")(K.layers.BatchNormalization(name="stem_bn")(x))
    branch = K.layers.Conv2D(6, 3, padding="same", activation="relu", name="branch")(x)
    x = K.layers.Add(name="merge")([x, branch])
    x = K.layers.Conv2D(8, 3, strides=2, activation="relu", name="top")(x)
    base = K.Model(inputs, x, name="base")
    outer = K.Input((12, 12, 3))
    pooled = K.layers.GlobalAveragePooling2D()(base(outer, training=False))
    return K.Model(outer, K.layers.Dense(3, name="logits")(pooled))


@pytest.mark.parametrize("flavor", FLAVORS)
def test_layer_inside_a_nested_base_is_explained(flavor):
    K = keras_module(flavor)
    model = _transfer_model(flavor)
    base, dense = model.get_layer("base"), model.get_layer("logits")
    images = _images((12, 12, 3))
    targets = np.array([2, 0])
    result = explain(model, images, methods=("gradcam",), layer="base/stem_relu",
                     targets=targets, normalize=False, batch_size=2)
    assert result.layer == "base/stem_relu"
    # Reference: the base's own layers up to the inner layer and to its output, then the
    # head's pooling and dense layer written out.
    inner = K.Model(base.inputs[0], [base.get_layer("stem_relu").output, base.outputs[0]])
    kernel, bias = dense.get_weights()
    with tf.GradientTape() as tape:
        activations, features = inner(images, training=False)
        logits = tf.reduce_mean(features, axis=(1, 2)) @ kernel + bias
        score = tf.reduce_sum(tf.gather(logits, targets, batch_dims=1))
    expected = _gradcam(activations, tape.gradient(score, activations))
    assert expected.shape == (2, 12, 12)
    _close_relative(result.heatmaps["gradcam"], expected)
    # Named without its base, a layer found in exactly one nested model is that one.
    assert adapt_model(model, layer="merge").layer_name == "base/merge"


def test_layer_inside_nested_mobilenet_v2():
    """The issue's case: MobileNetV2 as a layer, `block_13_expand_relu` inside it."""
    model = models.nested_mobilenet("keras3", input_shape=(32, 32, 3))
    base = model.layers[1]
    name = f"{base.name}/block_13_expand_relu"
    with pytest.raises(ValueError, match=rf"layer 'block_13_expand_rel' is not in the model; "
                                         rf"nearest layers with 4-D outputs: .*{name}"):
        adapt_model(model, layer="block_13_expand_rel")
    adapter = adapt_model(model, layer=name)
    assert adapter.layer_name == name and adapter.head is not None
    images = _images((32, 32, 3))
    activations, logits = adapter.forward(tf.constant(images))
    inner = keras_module("keras3").Model(base.inputs[0],
                                         base.get_layer("block_13_expand_relu").output)
    _close_relative(activations.numpy(), inner(images, training=False).numpy().astype(np.float64))
    np.testing.assert_allclose(adapter.probabilities(logits).numpy(), model(images).numpy(),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_base_with_its_own_pooling_is_opened_for_the_default(flavor):
    """A base built with pooling="avg" outputs vectors: the map the head reads is inside."""
    K = keras_module(flavor)
    K.utils.set_random_seed(0)
    inputs = K.Input((12, 12, 3))
    x = K.layers.Conv2D(4, 3, activation="relu", name="inner_conv")(inputs)
    base = K.Model(inputs, K.layers.GlobalAveragePooling2D()(x), name="base")
    outer = K.Input((12, 12, 3))
    model = K.Model(outer, K.layers.Dense(3, name="logits")(base(outer)))
    adapter = _silently(lambda: adapt_model(model))
    assert adapter.layer_name == "base/inner_conv" and adapter.activation_shape == (10, 10, 4)
    assert adapter.cam_unsupported is None  # GAP -> dense, once the base is opened
    images = _images((12, 12, 3))
    activations, logits = adapter.forward(tf.constant(images))
    np.testing.assert_allclose(logits.numpy(), model(images).numpy(), rtol=1e-5, atol=1e-5)
    expected = K.Model(inputs, base.get_layer("inner_conv").output)(images).numpy()
    np.testing.assert_allclose(activations.numpy(), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- operations, Flatten


def test_keras3_residual_operation_is_the_default_and_nameable():
    K = keras_module("keras3")
    K.utils.set_random_seed(0)
    inputs = K.Input((10, 10, 3))
    x = K.layers.Conv2D(5, 3, padding="same", activation="relu", name="stem")(inputs)
    branch = K.layers.Conv2D(5, 3, padding="same", name="branch")(x)
    total = x + branch  # an operation, not a layer
    model = K.Model(inputs, K.layers.Dense(3)(K.layers.GlobalAveragePooling2D()(total)))
    operation = total._keras_history[0]
    assert operation not in model.layers
    images = _images((10, 10, 3))
    result = explain(model, images, methods=("gradcam", "cam"), targets=1, normalize=False)
    assert result.layer == operation.name
    reference = K.Model(inputs, [total, model.outputs[0]])
    with tf.GradientTape() as tape:
        activations, logits = reference(images)
        score = tf.reduce_sum(logits[:, 1])
    _close_relative(result.heatmaps["gradcam"],
                    _gradcam(activations, tape.gradient(score, activations)))
    assert adapt_model(model, layer=operation.name).layer_name == operation.name


@pytest.mark.parametrize("flavor", FLAVORS)
def test_sequential_flatten_head_explains_the_convolution_before_the_pooling(flavor):
    K = keras_module(flavor)
    K.utils.set_random_seed(0)
    model = K.Sequential([
        K.Input((12, 12, 3)),
        K.layers.Conv2D(4, 3, activation="relu", name="first"),
        K.layers.Conv2D(6, 3, activation="relu", name="last_conv"),
        K.layers.MaxPooling2D(name="pool"),
        K.layers.Flatten(),
        K.layers.Dense(3, activation="softmax", name="classifier"),
    ])
    adapter = adapt_model(model)
    assert adapter.layer_name == "last_conv" and adapter.activation_shape == (8, 8, 6)


# ----------------------------------------------------------------------------- subclassed


def _subclassed(flavor, *, opaque=False):
    K = keras_module(flavor)
    K.utils.set_random_seed(0)

    class Net(K.Model):
        def __init__(self):
            super().__init__()
            self.first = K.layers.Conv2D(4, 3, activation="relu", name="first")
            self.second = K.layers.Conv2D(6, 3, name="second")
            self.pool = K.layers.GlobalAveragePooling2D()
            self.classifier = K.layers.Dense(3, name="classifier")

        def features(self, x):
            x = self.second(self.first(x))
            # tf.nn on a Keras 3 symbolic tensor fails: the model can only run whole.
            return tf.nn.relu(x) if opaque else K.layers.ReLU(name="relu")(x)

        def call(self, x, training=False):
            return self.classifier(self.pool(self.features(x)))

    return Net()


@pytest.mark.parametrize("flavor", FLAVORS)
def test_subclassed_model_is_traced_through_its_layers(flavor):
    model = _subclassed(flavor)  # never built nor called: explain() builds it
    images = _images((12, 12, 3))
    result = explain(model, images, methods=("gradcam", "saliency"), targets=2,
                     normalize=False)
    with tf.GradientTape() as tape:
        activations = model.features(images)
        score = tf.reduce_sum(model.classifier(model.pool(activations))[:, 2])
    _close_relative(result.heatmaps["gradcam"],
                    _gradcam(activations, tape.gradient(score, activations)))
    assert result.layer == "relu"


def test_untraceable_subclassed_model_gets_gradient_methods_and_says_so():
    model = _subclassed("keras3", opaque=True)
    model(np.zeros((1, 12, 12, 3), np.float32))
    images = tf.constant(_images((12, 12, 3)))
    with pytest.warns(UserWarning, match=r"subclassed model .* is explained as a whole.*"
                                         r"saliency, smoothgrad and integrated_gradients") as caught:
        result = explain(model, images, methods=("saliency",), targets=0, normalize=False)
    assert len(caught) == 1 and caught[0].filename == __file__
    with tf.GradientTape() as tape:
        tape.watch(images)
        score = tf.reduce_sum(model(images)[:, 0])
    expected = np.abs(tape.gradient(score, images).numpy()).max(axis=-1)
    _close_relative(result.heatmaps["saliency"], expected)
    with pytest.raises(ValueError, match=r"method 'gradcam' cannot run: the subclassed model "
                                         r".* is explained as a whole"):
        explain(model, images, methods=("gradcam",))
    with pytest.raises(ValueError, match=r"layer='first' cannot be used: the subclassed model"), \
            pytest.warns(UserWarning, match="explained as a whole"):
        adapt_model(model, layer="first")


def test_unbuilt_subclassed_model_without_images_says_how_to_build_it():
    with pytest.raises(ValueError, match=r"never built or called: call it once on a batch"):
        adapt_model(_subclassed("keras3"))


# ----------------------------------------------------------------------------- warnings


def test_patch_embedding_default_is_announced():
    K = keras_module("keras3")
    K.utils.set_random_seed(0)
    inputs = K.Input((16, 16, 3))
    patches = K.layers.Conv2D(8, 4, strides=4, name="patch_embedding")(inputs)
    tokens = K.layers.Reshape((16, 8))(patches)
    tokens = tokens + K.layers.MultiHeadAttention(2, 4)(tokens, tokens)
    pooled = K.layers.GlobalAveragePooling1D()(K.layers.LayerNormalization()(tokens))
    model = K.Model(inputs, K.layers.Dense(3)(pooled))
    with pytest.warns(UserWarning, match=r"default target layer 'patch_embedding' is the "
                                         r"model's first feature map") as caught:
        adapter = adapt_model(model)
    assert len(caught) == 1 and adapter.layer_name == "patch_embedding"
    # Named by the user, it is the user's choice: nothing to say.
    _silently(lambda: adapt_model(model, layer="patch_embedding"))


def test_convolutional_models_are_silent():
    for build in (lambda: models.fashion_cnn("keras3"), lambda: models.binary_sigmoid_cnn("tf_keras")):
        _silently(lambda: adapt_model(build()))


def test_saved_model_serving_probabilities_is_announced(tmp_path):
    model = models.functional_cnn("keras3", head="gap_dense")
    probabilities, logits = str(tmp_path / "probabilities"), str(tmp_path / "logits")
    model.export(probabilities, verbose=False)
    K = keras_module("keras3")
    K.Model(model.inputs[0], model.get_layer("logits").output).export(logits, verbose=False)
    with pytest.warns(UserWarning, match=r"serves probabilities.*the explained score is a "
                                         r"probability") as caught:
        adapt_model(probabilities)
    assert len(caught) == 1
    _silently(lambda: adapt_model(logits))
