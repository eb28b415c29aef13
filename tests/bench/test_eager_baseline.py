"""The naive eager loop (sightline.bench.eager_baseline) as a second reference: `explain` with
raw, native-size maps must give the same maps, method by method. The loop shares nothing
with the engine's adapter or kernels (its own target layer, logits and noise), so a wrong
layer, logit or noise in the engine shows up here."""

import numpy as np
import pytest

from sightline import explain
from sightline.bench.eager_baseline import EAGER_FUNCTIONS, eager_maps, smoothgrad_noise
from tests import models
from tests.models import FLAVORS
from tests.tolerances import MODEL_RELATIVE_ATOL

NUM_IMAGES = 6
OPTIONS = {"smoothgrad": dict(num_copies=3, noise_sigma=0.2, noise_seed=5),
           "integrated_gradients": dict(num_steps=4)}


@pytest.fixture(scope="module", params=FLAVORS)
def model(request):
    return models.fashion_cnn(request.param, seed=11)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(21).uniform(0, 1, (NUM_IMAGES, 28, 28, 1)).astype(np.float32)


def _close_relative(actual, expected, atol):
    scale = np.maximum(np.abs(expected).max(axis=(1, 2), keepdims=True), 1e-12)
    np.testing.assert_allclose(actual / scale, expected / scale, atol=atol)


@pytest.mark.parametrize("method", sorted(EAGER_FUNCTIONS))
@pytest.mark.parametrize("targets", [None, "fixed"])
def test_explain_matches_the_eager_loop(model, images, method, targets):
    if targets == "fixed":
        targets = np.arange(NUM_IMAGES, dtype=np.int32) % 10
    options = OPTIONS.get(method, {})
    expected = eager_maps(method, model, images, targets, **options)
    result = explain(model, images, methods=(method,), targets=targets, normalize=False,
                     map_size="native", batch_size=4, xla=False, **options)
    assert result.heatmaps[method].shape == expected.shape
    assert expected.dtype == np.float32
    _close_relative(result.heatmaps[method], expected, MODEL_RELATIVE_ATOL)


def test_unknown_method_is_refused(model, images):
    with pytest.raises(ValueError, match="no method"):
        eager_maps("scorecam", model, images)


# The baseline finds the target layer and the logits by itself: other model shapes than
# the course's Sequential CNN, each against `explain`.
OTHER_MODELS = {
    # A Softmax layer of its own after Dropout and a linear "logits" Dense.
    "functional_gap_dense": (lambda: models.functional_cnn("keras3", seed=2),
                             ("gradcam", "saliency", "cam")),
    # One sigmoid unit: class 0 is explained by -z, class 1 by z.
    "binary_sigmoid": (lambda: models.binary_sigmoid_cnn("tf_keras", seed=4),
                       ("cam", "gradcam", "saliency")),
    # No 4-D layer at all: gradient methods only.
    "dense_only": (lambda: models.dense_only("keras3", seed=6),
                   ("saliency", "integrated_gradients")),
    # A flatten head: no CAM, Grad-CAM at the last convolution.
    "flatten_head": (lambda: models.functional_cnn("keras3", head="flatten", seed=8),
                     ("gradcam", "gradcam_plus_plus")),
}


@pytest.mark.parametrize("name", sorted(OTHER_MODELS))
def test_explain_matches_the_eager_loop_on_other_model_shapes(name):
    build, methods = OTHER_MODELS[name]
    other = build()
    shape = tuple(other.inputs[0].shape[1:])
    pixels = np.random.default_rng(3).uniform(0, 1, (4, *shape)).astype(np.float32)
    num_classes = max(int(other.outputs[0].shape[-1]), 2)  # one sigmoid unit: 2 classes
    targets = np.arange(4, dtype=np.int32) % num_classes
    for method in methods:
        expected = eager_maps(method, other, pixels, targets, **OPTIONS.get(method, {}))
        result = explain(other, pixels, methods=(method,), targets=targets, normalize=False,
                         map_size="native", batch_size=4, xla=False, **OPTIONS.get(method, {}))
        assert np.abs(expected).max() > 0, (name, method)
        _close_relative(result.heatmaps[method], expected, MODEL_RELATIVE_ATOL)


def test_an_explicit_layer_is_explained(model, images):
    second_conv = model.layers[2].name  # conv 8, pooling, conv 16: at 14x14
    expected = eager_maps("gradcam", model, images, layer=second_conv)
    result = explain(model, images, methods=("gradcam",), layer=second_conv,
                     normalize=False, map_size="native", batch_size=4, xla=False)
    assert expected.shape == (NUM_IMAGES, 14, 14)
    _close_relative(result.heatmaps["gradcam"], expected, MODEL_RELATIVE_ATOL)


def test_heads_without_cam_are_refused():
    flatten = models.functional_cnn("keras3", head="flatten", seed=8)
    with pytest.raises(ValueError, match="CAM cannot run: the head after 'conv_c'"):
        eager_maps("cam", flatten, np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="need a layer with a 4-D output"):
        eager_maps("gradcam", models.dense_only("keras3"), np.zeros((1, 8, 8, 1), np.float32))


@pytest.mark.parametrize("sample_index", [0, 41, 2 ** 32 + 7])  # the last one has high bits
def test_smoothgrad_noise_is_the_kernels_and_standard_normal(sample_index):
    import tensorflow as tf
    from sightline.kernels.gradient_maps import sample_noise
    shape = (6, 5, 3)
    ours = np.stack([smoothgrad_noise(9, sample_index, copy, shape) for copy in range(4)])
    kernel = sample_noise(9, tf.constant([sample_index], tf.int64), tf.range(4),
                          tf.constant(shape))[:, 0].numpy()  # [copies,H,W,C]
    np.testing.assert_allclose(kernel, ours, atol=1e-5)  # float32 against float64
    # 360 draws of N(0, 1): mean within 4 standard errors, spread near 1.
    assert abs(ours.mean()) < 4 / np.sqrt(ours.size) and 0.85 < ours.std() < 1.15
    assert not np.allclose(ours[0], ours[1])
