"""The model adapter: loading, safe mode, target layer, logits, head split."""

import types
import warnings

import numpy as np
import pytest
import tensorflow as tf

import sightline.model.adapter as adapter_module
from sightline import adapt_model, explain, load_model
from tests import models
from tests.models import FLAVORS, keras_module
from tests.tolerances import MODEL_RELATIVE_ATOL


def _images(shape, n=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_sequential_cnn_adapts_to_last_conv_and_pre_softmax_logits(flavor):
    model = models.fashion_cnn(flavor)
    adapter = adapt_model(model)
    assert adapter.layer_name == "last_conv"
    assert adapter.activation_shape == (3, 3, 32)
    assert adapter.output_kind == "softmax"
    assert adapter.head is not None
    images = _images((28, 28, 1))
    activations, logits = adapter.forward(tf.constant(images))
    # Independent reference: GAP of the conv output, then the dense kernel, in float64.
    dense = model.get_layer("classifier")
    kernel, bias = [np.asarray(w, np.float64) for w in dense.get_weights()]
    expected = activations.numpy().astype(np.float64).mean(axis=(1, 2)) @ kernel + bias
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-5)
    # The probabilities the adapter derives are what the model outputs.
    np.testing.assert_allclose(adapter.probabilities(logits).numpy(), model(images).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adapter.cam_weights.numpy(), kernel, rtol=0, atol=0)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_functional_softmax_layer_explains_the_logits_layer(flavor):
    model = models.functional_cnn(flavor, head="gap_dense")
    adapter = adapt_model(model)
    assert adapter.layer_name == "conv_c"
    assert adapter.output_kind == "softmax"
    K = keras_module(flavor)
    images = _images((16, 16, 3))
    expected = K.Model(model.inputs[0], model.get_layer("logits").output)(images).numpy()
    _, logits = adapter.forward(tf.constant(images))
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert adapter.cam_weights is not None  # GAP -> Dropout -> Dense counts as a CAM head


@pytest.mark.parametrize("flavor", FLAVORS)
def test_nested_mobilenet_base_is_the_default_target(flavor):
    model = models.nested_mobilenet(flavor, input_shape=(64, 64, 3))
    adapter = adapt_model(model)
    base = model.layers[1]
    assert adapter.layer_name == base.name
    assert adapter.activation_shape == (2, 2, 1280)
    assert adapter.cam_weights.shape == (1280, 3)
    images = _images((64, 64, 3), n=2)
    activations, logits = adapter.forward(tf.constant(images))
    np.testing.assert_allclose(activations.numpy(), base(images, training=False).numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adapter.probabilities(logits).numpy(), model(images).numpy(),
                               rtol=1e-4, atol=1e-6)
    result = explain(model, images, methods=("cam", "gradcam"), map_size="native")
    assert result.heatmaps["gradcam"].shape == (2, 2, 2)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_default_target_skips_1x1_maps_after_a_keepdims_pool(flavor):
    """MobileNetV3's head: pooling with keepdims, then 1x1 convolutions on a 1x1 map.
    The default target is the last map with more than one position."""
    K = keras_module(flavor)
    K.utils.set_random_seed(0)
    inputs = K.Input((16, 16, 3))
    x = K.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(inputs)
    x = K.layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
    x = K.layers.Conv2D(6, 1, activation="relu", name="head_conv")(x)
    x = K.layers.Flatten()(x)
    model = K.Model(inputs, K.layers.Dense(3, activation="softmax")(x))
    adapter = adapt_model(model)
    assert adapter.layer_name == "features"
    assert adapter.activation_shape == (16, 16, 8)
    # Asked for by name, a 1x1 layer is still the caller's to choose.
    assert adapt_model(model, layer="head_conv").activation_shape == (1, 1, 6)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_named_layer_is_used(flavor):
    model = models.functional_cnn(flavor)
    adapter = adapt_model(model, layer="conv_b")
    assert adapter.layer_name == "conv_b"
    assert adapter.activation_shape == (16, 16, 8)
    # conv_b does not feed a GAP + dense head directly, so CAM is unavailable there.
    assert adapter.cam_weights is None and "gradcam" in adapter.cam_unsupported


def test_unknown_layer_lists_candidates():
    model = models.functional_cnn("keras3")
    with pytest.raises(ValueError, match=r"layer 'nope' is not in the model; layers with 4-D "
                                         r"outputs: conv_a, conv_b, pool, conv_c"):
        adapt_model(model, layer="nope")


def test_layer_without_feature_map_is_refused():
    model = models.functional_cnn("keras3")
    with pytest.raises(ValueError, match=r"layer 'gap' has output shape \(None, 12\), not a 4-D "
                                         r"feature map"):
        adapt_model(model, layer="gap")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_flatten_head_refuses_cam_and_names_gradcam(flavor):
    model = models.functional_cnn(flavor, head="flatten")
    images = _images((16, 16, 3))
    with pytest.raises(ValueError, match=r"method 'cam' cannot run: CAM needs a head of global "
                                         r"average pooling then one dense layer.*use gradcam"):
        explain(model, images, methods=("cam",))
    result = explain(model, images, methods=("gradcam",), map_size="input")
    assert result.heatmaps["gradcam"].shape == (3, 16, 16)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_skip_connection_head_falls_back_to_whole_tape(flavor):
    """The head reads a tensor from before the target layer: no separate head, and the
    Grad-CAM from the whole-model tape still matches an eager per-image reference."""
    model = models.functional_cnn(flavor, head="skip")
    with pytest.warns(UserWarning, match="skip connection"):
        adapter = adapt_model(model)
    assert adapter.head is None and adapter.layer_name == "conv_c"
    K = keras_module(flavor)
    classifier = model.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    features = K.Model(model.inputs[0], [model.get_layer("conv_c").output,
                                      model.get_layer("concat").output])
    images = _images((16, 16, 3), n=2)
    with pytest.warns(UserWarning, match="skip connection") as caught:
        result = explain(model, images, methods=("gradcam",), normalize=False, targets=1)
    assert all(w.filename == __file__ for w in caught), "the warning must point at the caller"
    for i in range(2):
        x = tf.constant(images[i:i + 1])
        with tf.GradientTape() as tape:
            activations, concat = features(x)
            logit = tf.matmul(concat, kernel)[0, 1] + bias[1]
        grads = tape.gradient(logit, activations).numpy()[0].astype(np.float64)
        a = activations.numpy()[0].astype(np.float64)
        expected = np.maximum((a * grads.mean(axis=(0, 1))).sum(-1), 0)
        scale = max(np.abs(expected).max(), 1e-12)
        np.testing.assert_allclose(result.heatmaps["gradcam"][i] / scale, expected / scale,
                                   atol=MODEL_RELATIVE_ATOL)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_model_without_conv_layer(flavor):
    model = models.dense_only(flavor)
    images = _images((8, 8, 1))
    with pytest.raises(ValueError, match=r"method 'gradcam' cannot run: the model has no layer "
                                         r"with a 4-D output.*use saliency"):
        explain(model, images, methods=("gradcam",))
    result = explain(model, images, methods=("saliency",))
    assert result.layer is None and result.heatmaps["saliency"].shape == (3, 8, 8)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_binary_sigmoid_head_explains_both_classes(flavor):
    model = models.binary_sigmoid_cnn(flavor)
    adapter = adapt_model(model)
    assert adapter.output_kind == "binary_sigmoid" and adapter.num_classes == 2
    images = _images((16, 16, 3), n=4)
    probability = model(images).numpy()[:, 0]
    result = explain(model, images, methods=("cam", "gradcam"), map_size="native", normalize=False,
                     targets=np.array([0, 1, 0, 1]))
    np.testing.assert_array_equal(result.predictions, (probability > 0.5).astype(np.int32))
    np.testing.assert_allclose(result.scores, np.maximum(probability, 1 - probability), rtol=1e-5)
    # Class 1 is explained by the logit z, class 0 by -z: CAM maps are exact negatives.
    both = explain(model, images, methods=("cam",), map_size="native", normalize=False, targets=1)
    np.testing.assert_allclose(result.heatmaps["cam"][0], -both.heatmaps["cam"][0], rtol=1e-6)
    np.testing.assert_allclose(result.heatmaps["cam"][1], both.heatmaps["cam"][1], rtol=1e-6)


# ----------------------------------------------------------------------------- files


def _lambda_model(flavor):
    K = keras_module(flavor)
    inputs = K.Input((8, 8, 3))
    x = K.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = K.layers.Lambda(lambda t: t * 2.0, name="doubler")(x)
    x = K.layers.GlobalAveragePooling2D()(x)
    return K.Model(inputs, K.layers.Dense(2)(x))


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("extension", [".keras", ".h5"])
def test_model_files_round_trip_and_writer_is_detected(flavor, extension, tmp_path):
    model = models.functional_cnn(flavor)
    path = tmp_path / f"model{extension}"
    model.save(path)
    loaded, detected = load_model(str(path))
    assert detected == flavor
    images = _images((16, 16, 3))
    from_file = explain(str(path), images, methods=("cam", "saliency"))
    in_memory = explain(model, images, methods=("cam", "saliency"))
    for method in ("cam", "saliency"):
        np.testing.assert_allclose(from_file.heatmaps[method], in_memory.heatmaps[method],
                                   atol=1e-5)


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("extension", [".keras", ".h5"])
def test_lambda_layers_are_refused_unless_unsafe(flavor, extension, tmp_path):
    path = tmp_path / f"lambda{extension}"
    _lambda_model(flavor).save(path)
    with pytest.raises(ValueError, match=r"Lambda layer\(s\) 'doubler' holding Python code.*"
                                         r"unsafe=True"):
        explain(str(path), _images((8, 8, 3)), methods=("gradcam",))
    result = explain(str(path), _images((8, 8, 3)), methods=("gradcam",), unsafe=True)
    assert result.heatmaps["gradcam"].shape == (3, 8, 8)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_saved_model_supports_gradient_methods_only(flavor, tmp_path):
    model = models.functional_cnn(flavor, head="gap_dense")
    path = str(tmp_path / "saved")
    if flavor == "keras3":
        model.export(path, verbose=False)
    else:
        tf.saved_model.save(model, path)
    images = _images((16, 16, 3), n=2)
    with pytest.raises(ValueError, match=r"method 'gradcam' cannot run: a SavedModel exposes no "
                                         r"layers.*save the model as .keras or .h5"), \
            pytest.warns(UserWarning, match="serves probabilities"):
        explain(path, images, methods=("gradcam",))
    with pytest.warns(UserWarning, match="serves probabilities"):
        result = explain(path, images, methods=("saliency",), normalize=False, targets=2)
    # A SavedModel serves probabilities: the explained score is the served output.
    for i in range(2):
        x = tf.constant(images[i:i + 1])
        with tf.GradientTape() as tape:
            tape.watch(x)
            probability = model(x)[0, 2]
        expected = np.abs(tape.gradient(probability, x).numpy()[0]).max(axis=-1)
        np.testing.assert_allclose(result.heatmaps["saliency"][i], expected, rtol=1e-4, atol=1e-7)


def test_missing_model_file(tmp_path):
    with pytest.raises(ValueError, match=r"model file not found: '.*missing.keras'"):
        explain(str(tmp_path / "missing.keras"), _images((8, 8, 3)))


def test_wrong_model_type():
    with pytest.raises(TypeError, match=r"model must be a Keras model .* got dict"):
        explain({"not": "a model"}, _images((8, 8, 3)))


def test_directory_without_saved_model(tmp_path):
    with pytest.raises(ValueError, match=r"holds no saved_model.pb"):
        explain(str(tmp_path), _images((8, 8, 3)), methods=("saliency",))


def test_unknown_file_kind(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"unrecognised model file"):
        explain(str(path), _images((8, 8, 3)))


# ----------------------------------------------------------------------------- fully convolutional heads


def fully_convolutional_cnn(flavor, *, num_classes=3, seed=0):
    """A mini-Xception-style head: a convolution with one channel per class, global
    average pooling, softmax. `more` has the class maps' resolution, `features` twice it."""
    K = keras_module(flavor)
    K.utils.set_random_seed(seed)
    inputs = K.Input((12, 12, 3))
    x = K.layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(inputs)
    x = K.layers.MaxPooling2D(name="pool")(x)
    x = K.layers.Conv2D(8, 3, padding="same", activation="relu", name="more")(x)
    x = K.layers.Conv2D(num_classes, 3, padding="same", name="class_maps")(x)
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    return K.Model(inputs, K.layers.Activation("softmax", name="probabilities")(x))


@pytest.mark.parametrize("flavor", FLAVORS)
def test_cam_on_fully_convolutional_head_is_the_class_channel(flavor):
    model = fully_convolutional_cnn(flavor)
    K = keras_module(flavor)
    layers = K.Model(model.inputs[0], [model.get_layer("class_maps").output,
                                       model.get_layer("gap").output])
    images = _images((12, 12, 3), n=4, seed=2)
    targets = np.array([0, 1, 2, 1])
    class_maps, logits = [t.numpy().astype(np.float64) for t in layers(images)]
    expected = class_maps[np.arange(4), :, :, targets]  # [4,6,6]
    # The logit is the spatial mean of its channel: the map CAM shows is the evidence.
    np.testing.assert_allclose(expected.mean(axis=(1, 2)), logits[np.arange(4), targets],
                               rtol=1e-5, atol=1e-6)
    adapter = adapt_model(model)
    assert adapter.layer_name == "class_maps" and adapter.cam_unsupported is None
    result = explain(model, images, methods=("cam", "gradcam"), targets=targets, normalize=False)
    assert result.heatmaps["cam"].shape == (4, 6, 6)
    assert (expected < 0).any(), "CAM is signed: the check needs negative values"
    _close_relative(result.heatmaps["cam"], expected)
    # Grad-CAM at the class maps: d logit_c / d A[i,j,k] = [k == c] / (h*w).
    _close_relative(result.heatmaps["gradcam"], np.maximum(expected, 0) / 36)
    # With an earlier target layer of the same resolution, CAM still reads the class
    # maps and Grad-CAM moves to the named layer.
    earlier = explain(model, images, methods=("cam", "gradcam"), targets=targets,
                      normalize=False, layer="more")
    _close_relative(earlier.heatmaps["cam"], expected)
    assert earlier.layer == "more"
    # A target layer at another resolution cannot give the class maps' CAM.
    with pytest.raises(ValueError, match=r"method 'cam' cannot run: CAM reads the class "
                                         r"convolution 'class_maps'.*use layer='class_maps'"):
        explain(model, images, methods=("cam",), layer="features")


def test_convolution_with_wrong_channel_count_is_no_cam_head():
    K = keras_module("keras3")
    inputs = K.Input((8, 8, 3))
    x = K.layers.Conv2D(5, 3, padding="same", name="five")(inputs)
    x = K.layers.GlobalAveragePooling2D()(x)
    model = K.Model(inputs, K.layers.Dense(3, name="logits")(K.layers.Activation("relu")(x)))
    with pytest.raises(ValueError, match=r"method 'cam' cannot run: CAM needs a head"):
        explain(model, _images((8, 8, 3)), methods=("cam",))
    pooled = K.Model(inputs, K.layers.Softmax()(x))  # 5 channels, 5 classes: a class head
    assert adapt_model(pooled).cam_unsupported is None


def _close_relative(actual, expected):
    scale = max(np.abs(expected).max(), 1e-12)
    np.testing.assert_allclose(np.asarray(actual, np.float64) / scale, expected / scale,
                               atol=MODEL_RELATIVE_ATOL)


# ----------------------------------------------------------------------------- head split


@pytest.mark.parametrize("flavor", FLAVORS)
def test_slow_path_is_announced_once_naming_the_layer(flavor):
    with pytest.warns(UserWarning, match=r"target layer 'conv_c' also read tensors from "
                                         r"before it \(a skip connection\).*slower") as caught:
        adapt_model(models.functional_cnn(flavor, head="skip"))
    assert len(caught) == 1 and caught[0].filename == __file__


@pytest.mark.parametrize("flavor", FLAVORS)
def test_fast_path_is_silent(flavor):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapter = adapt_model(models.functional_cnn(flavor, head="gap_dense"))
    assert adapter.head is not None


@pytest.mark.parametrize("error", [ValueError("the dtype policy is broken"),
                                   RuntimeError("out of memory")])
def test_other_failures_building_the_head_are_not_swallowed(error):
    """Only Keras's refusal of a disconnected graph means "no separate head"; any other
    failure is a real one and must reach the user instead of a silent slow path."""
    def refuse(inputs, outputs):
        raise error

    with pytest.raises(type(error), match=str(error)):
        adapter_module._sub_model(types.SimpleNamespace(Model=refuse), None, None)
