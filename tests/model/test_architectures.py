"""The default target layer on real architectures (keras.applications, random weights,
small inputs): the feature map the head reads, and Grad-CAM there equal to a plain
GradientTape on that tensor. Each model is built once per module."""

import numpy as np
import pytest
import tensorflow as tf

from sightline import adapt_model, explain
from tests.models import keras_module
from tests.tolerances import MODEL_RELATIVE_ATOL

SIDE = 64


def _images(side, n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, side, side, 3)).astype(np.float32)


def _application(flavor, name, side=SIDE):
    K = keras_module(flavor)
    K.utils.set_random_seed(0)
    # Logits as the output, so that the reference differentiates the model's own output.
    return getattr(K.applications, name)(weights=None, input_shape=(side, side, 3), classes=4,
                                         classifier_activation=None)


def _read_by(layer):
    """The tensor `layer` reads where the model calls it, found from Keras's own node."""
    tensors = layer._inbound_nodes[0].input_tensors
    return tensors[0] if isinstance(tensors, (list, tuple)) else tensors


def _last(model, kind):
    return [layer for layer in model.layers if type(layer).__name__ == kind][-1]


def _eager_gradcam(flavor, model, feature_tensor, images, targets):
    """ReLU(sum_k mean_ij(dy_c/dA) A[...,k]) [B,h,w] float64, A the given tensor, from
    one eager GradientTape over the model's own layers."""
    K = keras_module(flavor)
    features = K.Model(model.inputs[0], [feature_tensor, model.outputs[0]])
    with tf.GradientTape() as tape:
        activations, logits = features(images, training=False)
        # Images do not interact in inference: the sum's gradient is each image's own.
        score = tf.reduce_sum(tf.gather(logits, targets, batch_dims=1))
    grads = tape.gradient(score, activations).numpy().astype(np.float64)  # [B,h,w,K]
    a = activations.numpy().astype(np.float64)
    return np.maximum((a * grads.mean(axis=(1, 2), keepdims=True)).sum(-1), 0)  # [B,h,w]


def _check_gradcam(flavor, model, feature_tensor, side=SIDE, layer=None):
    images = _images(side)
    targets = np.array([1, 3])
    result = explain(model, images, methods=("gradcam",), targets=targets, normalize=False,
                     layer=layer, batch_size=2)
    expected = _eager_gradcam(flavor, model, feature_tensor, images, targets)
    assert expected.max() > 0, "a map of zeros would compare equal to anything"
    scale = np.abs(expected).max()
    np.testing.assert_allclose(result.heatmaps["gradcam"] / scale, expected / scale,
                               atol=MODEL_RELATIVE_ATOL)
    return result


@pytest.fixture(scope="module", params=["keras3", "tf_keras"])
def mobilenet_v3(request):
    return request.param, _application(request.param, "MobileNetV3Small")


def test_mobilenet_v3_default_is_the_map_the_head_pools_not_the_squeeze_excite(mobilenet_v3):
    flavor, model = mobilenet_v3
    head_map = _read_by(_last(model, "GlobalAveragePooling2D"))  # [B,2,2,C]
    adapter = adapt_model(model)
    assert adapter.activation_shape == tuple(head_map.shape[1:])
    assert adapter.activation_shape == (2, 2, 576)
    assert adapter.layer_name == head_map._keras_history[0].name
    if flavor == "tf_keras":
        # The same walk as Keras 3's (checked against the tape there), through tf_keras's
        # own hard-swish (a Multiply of TensorFlow ops): its activations are the head's.
        images = _images(SIDE)
        activations, _ = adapter.forward(tf.constant(images))
        expected = keras_module(flavor).Model(model.inputs[0], head_map)(images).numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(activations.numpy() / scale, expected / scale,
                                   atol=MODEL_RELATIVE_ATOL)
        return
    _check_gradcam(flavor, model, head_map)


@pytest.fixture(scope="module")
def convnext():
    return _application("keras3", "ConvNeXtTiny")


def test_convnext_default_is_the_last_residual_add_operation(convnext):
    """Keras 3 writes ConvNeXt's residual as `x + y`, an operation and not a layer: the
    head reads the sum, not the branch before it."""
    head_map = _read_by(convnext.get_layer("convnext_tiny_head_gap"))
    operation = head_map._keras_history[0]
    assert type(operation).__name__ == "Add" and operation not in convnext.layers
    result = _check_gradcam("keras3", convnext, head_map)
    assert result.layer == operation.name
    # The operation can be named, as any tensor of the graph.
    named = adapt_model(convnext, layer=operation.name)
    assert named.layer_name == operation.name and named.activation_shape == (2, 2, 768)


def test_vgg16_flatten_head_explains_the_last_convolution_not_its_pooling():
    """tf_keras builds VGG16 the same way; its Flatten head is in test_targets.py."""
    flavor = "keras3"
    model = _application(flavor, "VGG16", side=32)
    adapter = adapt_model(model)
    assert adapter.layer_name == "block5_conv3" and adapter.activation_shape == (2, 2, 512)
    _check_gradcam(flavor, model, model.get_layer("block5_conv3").output, side=32)
