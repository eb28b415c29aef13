"""Sanity checks: cascading randomisation and random logit, on a small CNN trained on
generated images whose two classes differ only in where a bright square sits."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from sightline import explain
from sightline.evaluate.sanity import (PASS_THRESHOLD, cascade, copy_model, reinitialize,
                                       sanity_checks)
from tests.models import keras_module
from tests.tolerances import KERNEL_ATOL, MODEL_ATOL

SIZE = 16
METHODS = ("saliency", "gradcam")


def squares(count, seed):
    """(images[N,16,16,1], labels[N]): noise, and a bright 3x3 square in the top half
    (class 0) or the bottom half (class 1), anywhere along the row."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count).astype(np.int32)
    images = rng.normal(0.0, 0.25, (count, SIZE, SIZE, 1)).astype(np.float32)
    for image, label in zip(images, labels):
        row = rng.integers(1, 5) + 8 * label
        column = rng.integers(1, SIZE - 4)
        image[row:row + 3, column:column + 3] += 2.5
    return images, labels


def edge_map(images):
    """The control: Sobel gradient magnitude of the image, max over channels; it knows
    nothing about the model."""
    edges = tf.image.sobel_edges(tf.constant(images, tf.float32))  # [N,H,W,C,2]
    return tf.reduce_max(tf.norm(edges, axis=-1), axis=-1).numpy()


def small_cnn(flavor, seed=0):
    K = keras_module(flavor)
    K.utils.set_random_seed(seed)
    return K.Sequential([
        K.Input((SIZE, SIZE, 1)),
        K.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a"),
        K.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_b"),
        K.layers.MaxPooling2D(name="pool"),
        K.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_c"),
        K.layers.GlobalAveragePooling2D(name="gap"),
        K.layers.Dense(2, activation="softmax", name="logits"),
    ])


def weights_of(model):
    return [np.array(value) for value in model.get_weights()]


@pytest.fixture(scope="module")
def trained():
    """(model, its weights before the checks, sample images, their labels)."""
    model = small_cnn("keras3")
    images, labels = squares(640, seed=0)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(images, labels, epochs=8, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.9, "the model must have learnt the task"
    sample, sample_labels = squares(48, seed=1)
    return model, weights_of(model), sample, sample_labels


@pytest.fixture(scope="module")
def checks(trained):
    model, _, sample, labels = trained
    return sanity_checks(model, sample, labels, METHODS, controls={"edge": edge_map}, seed=3,
                         batch_size=32)


def test_gradients_and_gradcam_pass_and_the_edge_control_fails(checks):
    for method in METHODS:
        summary = checks.summary(method)
        assert summary["passes"], (method, summary)
        assert summary["relative_similarity"] <= PASS_THRESHOLD
    edge = checks.summary("edge")
    assert not edge["passes"]
    assert edge["relative_similarity"] == pytest.approx(1.0)
    assert checks.passing == METHODS


def test_randomising_changes_the_maps_of_gradients_and_gradcam_and_not_the_edge_map(checks):
    for method in METHODS:
        result = checks.results[method]
        floor = result.floor_spearman.mean()
        final = np.nan_to_num(result.spearman[result.verdict_step]).mean()
        # Beyond the threshold: nearer to unrelated maps than to the original ones.
        assert final < floor + PASS_THRESHOLD * (1 - floor), method
        assert not np.allclose(result.strip[0], result.strip[-1], atol=0.05), method
    edge = checks.results["edge"]
    np.testing.assert_allclose(edge.spearman, 1.0, rtol=1e-6)
    np.testing.assert_allclose(edge.ssim, 1.0, rtol=1e-6)
    np.testing.assert_allclose(edge.random_logit_spearman, 1.0, rtol=1e-6)
    assert edge.floor_spearman.mean() < 0.5


def test_the_cascade_runs_top_down_to_the_first_layer_for_gradients_of_the_input(checks):
    """Saliency's maps depend on every layer: with it among the methods the cascade goes
    on below the target layer, and Grad-CAM's verdict is still read where the target
    layer turned random (its step), saliency's and the controls' at the last."""
    assert checks.target_layer == "conv_c"
    assert checks.layers == ("logits", "conv_c", "conv_b", "conv_a")
    for result in checks.results.values():
        assert result.spearman.shape == result.ssim.shape == (4, 48)
        assert result.strip.shape[0] == 5
    assert checks.summary("gradcam")["verdict_layer"] == "conv_c"
    assert checks.summary("saliency")["verdict_layer"] == "conv_a"
    assert checks.summary("edge")["verdict_layer"] == "conv_a"
    for method in METHODS:
        result = checks.results[method]
        floor = result.floor_spearman.mean()
        expected = (np.nan_to_num(result.spearman[result.verdict_step]).mean() - floor) / (1 - floor)
        assert checks.summary(method)["relative_similarity"] == pytest.approx(expected)


def test_the_user_model_is_unchanged(trained, checks):
    model, before, _, _ = trained
    for value, original in zip(weights_of(model), before):
        np.testing.assert_array_equal(value, original)


def test_per_step_values_match_scipy_on_the_thumbnail_strip(checks):
    """The strip holds image 0's maps (|map| / max): Spearman is unchanged by a positive
    scale, so scipy on the strip gives the step's value for image 0."""
    for name, result in checks.results.items():
        for step in range(len(checks.layers)):
            original, randomised = result.strip[0].ravel(), result.strip[step + 1].ravel()
            if np.ptp(randomised) == 0:
                assert np.isnan(result.spearman[step, 0])
                continue
            expected = scipy.stats.spearmanr(original, randomised).statistic
            assert result.spearman[step, 0] == pytest.approx(expected, abs=KERNEL_ATOL), name


def test_random_logit_and_floor_against_explain_and_scipy(trained, checks):
    """Two classes: the random other class is the other one. The model's own maps of
    both classes, compared by scipy, give the check's values; the floor pairs each image
    with a different one."""
    model, _, sample, labels = trained
    np.testing.assert_array_equal(checks.other_classes, 1 - labels)
    own = explain(model, sample, ["gradcam"], targets=labels, normalize=False).heatmaps["gradcam"]
    other = explain(model, sample, ["gradcam"], targets=1 - labels,
                    normalize=False).heatmaps["gradcam"]
    result = checks.results["gradcam"]
    partner = checks.partner
    assert (partner != np.arange(len(sample))).all()
    assert sorted(partner) == list(range(len(sample)))
    for index in range(len(sample)):
        pairs = ((own[index], other[index], result.random_logit_spearman[index]),
                 (own[index], own[partner[index]], result.floor_spearman[index]))
        for map_a, map_b, actual in pairs:
            if np.ptp(map_a) == 0 or np.ptp(map_b) == 0:
                assert np.isnan(actual)
                continue
            expected = scipy.stats.spearmanr(map_a.ravel(), map_b.ravel()).statistic
            assert actual == pytest.approx(expected, abs=MODEL_ATOL)
    # The trained model's Grad-CAM of the other class points elsewhere.
    assert result.random_logit_spearman[np.isfinite(result.random_logit_spearman)].mean() < 0.5


def test_the_same_seed_gives_the_same_numbers_and_another_seed_others(trained, checks):
    model, _, sample, labels = trained
    again = sanity_checks(model, sample, labels, METHODS, controls={"edge": edge_map}, seed=3,
                          batch_size=32)
    for name, result in checks.results.items():
        for field in ("spearman", "ssim", "floor_spearman", "floor_ssim",
                      "random_logit_spearman", "random_logit_ssim", "strip"):
            np.testing.assert_array_equal(getattr(again.results[name], field),
                                          getattr(result, field), err_msg=f"{name} {field}")
    assert again.summary("gradcam") == checks.summary("gradcam")
    other = sanity_checks(model, sample, labels, ["gradcam"], seed=4, batch_size=32)
    assert not np.array_equal(other.partner, checks.partner)
    assert not np.array_equal(other.results["gradcam"].spearman,
                              checks.results["gradcam"].spearman)


# --- The cascade and the re-initialisation, on untrained models --------------------------

def initializer_model(flavor):
    """Layers with initializers of their own, a normalisation and a depthwise convolution."""
    K = keras_module(flavor)
    K.utils.set_random_seed(0)
    inputs = K.Input((12, 12, 3))
    x = K.layers.Conv2D(4, 3, name="conv")(inputs)
    x = K.layers.BatchNormalization(name="norm", gamma_initializer=K.initializers.Constant(2.0))(x)
    x = K.layers.DepthwiseConv2D(3, name="depthwise",
                                 depthwise_initializer=K.initializers.RandomUniform(-9.0, -8.0))(x)
    x = K.layers.ReLU(name="relu")(x)
    x = K.layers.SeparableConv2D(5, 3, name="separable",
                                 bias_initializer=K.initializers.Constant(0.25))(x)
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = K.layers.Dense(3, name="logits",
                             kernel_initializer=K.initializers.RandomUniform(3.0, 4.0))(x)
    return K.Model(inputs, outputs)


@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
def test_each_layer_gets_values_from_its_own_initializer_with_a_fixed_seed(flavor):
    model = initializer_model(flavor)
    before = weights_of(model)
    clone, clone_flavor = copy_model(model)
    steps = cascade(clone, "norm")
    assert [layer.name for _, layer in steps] == ["logits", "separable", "depthwise", "norm"]
    given = {layer.name: reinitialize(layer, clone_flavor, 7, position)
             for position, layer in steps}
    assert given["logits"] == ("kernel: RandomUniform", "bias: Zeros")
    logits, separable = clone.get_layer("logits"), clone.get_layer("separable")
    kernel = np.array(logits.kernel)
    assert kernel.min() >= 3.0 and kernel.max() < 4.0 and np.ptp(kernel) > 0.1
    np.testing.assert_array_equal(np.array(separable.bias), 0.25)
    depthwise_kernel = [np.array(w) for w in clone.get_layer("depthwise").weights][0]
    assert depthwise_kernel.max() < -8.0
    norm = {w.name.split("/")[-1].split(":")[0]: np.array(w) for w in clone.get_layer("norm").weights}
    np.testing.assert_array_equal(norm["gamma"], 2.0)
    np.testing.assert_array_equal(norm["moving_variance"], 1.0)
    # Below the target layer nothing changes, and neither does the user's model.
    np.testing.assert_array_equal(np.array(clone.get_layer("conv").kernel),
                                  np.array(model.get_layer("conv").kernel))
    for value, original in zip(weights_of(model), before):
        np.testing.assert_array_equal(value, original)
    # The same seed gives the same values; another seed, others.
    second, _ = copy_model(model)
    for position, layer in cascade(second, "norm"):
        reinitialize(layer, clone_flavor, 7, position)
    for value, expected in zip(weights_of(second), weights_of(clone)):
        np.testing.assert_array_equal(value, expected)
    third, _ = copy_model(model)
    position, layer = cascade(third, "logits")[0]
    reinitialize(layer, clone_flavor, 8, position)
    assert not np.array_equal(np.array(third.get_layer("logits").kernel), kernel)


def test_tf_keras_model_checked_and_left_unchanged():
    model = small_cnn("tf_keras")
    before = weights_of(model)
    images, labels = squares(8, seed=2)
    checks = sanity_checks(model, images, labels, ["gradcam"], controls={"edge": edge_map},
                           batch_size=8)
    assert checks.layers == ("logits", "conv_c")
    assert not checks.results["edge"].passes
    assert np.isfinite(checks.results["gradcam"].ssim).all()
    for value, original in zip(weights_of(model), before):
        np.testing.assert_array_equal(value, original)


@pytest.mark.parametrize("arguments, message", [
    (dict(methods=["nope"]), "unknown method"),
    (dict(methods=[], controls={}), "at least one method or control"),
    (dict(controls={"gradcam": edge_map}), "also method names"),
    (dict(controls={"edge": 3}), "must be a function"),
    (dict(seed=-1), "seed must be an integer"),
    (dict(normalize=True), "sets normalize itself"),
    (dict(count=1), "at least 2 images"),
    (dict(targets=np.zeros(3, np.float32)), "one class index per image"),
])
def test_bad_arguments_stop_with_one_clear_line(arguments, message):
    model = small_cnn("keras3")
    count = arguments.pop("count", 4)
    images, labels = squares(count, seed=0)
    arguments.setdefault("methods", ["gradcam"])
    arguments.setdefault("targets", labels)
    with pytest.raises((ValueError, TypeError), match=message):
        sanity_checks(model, images, arguments.pop("targets"), arguments.pop("methods"),
                      **arguments)

