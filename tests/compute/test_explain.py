"""`explain` against independent references: an eager per-image loop in float64,
finite differences, and the methods' known properties."""

import numpy as np
import pytest
import tensorflow as tf

import sightline.compute.explain
import sightline.compute.step
from sightline import explain
from sightline.kernels.methods import METHODS
from tests import models
from tests.models import FLAVORS, keras_module
from tests.tolerances import (FINITE_DIFFERENCE_ATOL, GRADCAM_CAM_RTOL, IG_COMPLETENESS_RTOL,
                              MIXED_PRECISION_MIN_CORRELATION, MODEL_ATOL,
                              MODEL_RELATIVE_ATOL)

ALL_METHODS = tuple(METHODS)
FAST_OPTIONS = dict(num_copies=4, num_steps=8)
NUM_IMAGES = 70  # with batch_size 64 the last batch is short
REFERENCE_METHODS = ("cam", "gradcam", "gradcam_plus_plus", "saliency", "layercam", "hirescam",
                     "xgradcam", "eigencam")


@pytest.fixture(scope="module")
def model():
    return models.functional_cnn("keras3", head="gap_dense", seed=3)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).uniform(0, 1, (NUM_IMAGES, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def fixed_targets():
    return np.random.default_rng(8).integers(0, 4, NUM_IMAGES).astype(np.int32)


@pytest.fixture(scope="module")
def reference(model, images, fixed_targets):
    """Eager, one image at a time, float64 arithmetic on the tape's gradients."""
    K = keras_module("keras3")
    features = K.Model(model.inputs[0], [model.get_layer("conv_c").output,
                                         model.get_layer("logits").output])
    kernel = np.asarray(model.get_layer("logits").get_weights()[0], np.float64)
    maps = {m: [] for m in REFERENCE_METHODS}
    for image, target in zip(images, fixed_targets):
        x = tf.constant(image[None])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            activations, logits = features(x)
            score = logits[0, target]
        a = activations.numpy()[0].astype(np.float64)  # [h,w,K]
        g = tape.gradient(score, activations).numpy()[0].astype(np.float64)
        gx = tape.gradient(score, x).numpy()[0].astype(np.float64)
        maps["cam"].append((a * kernel[:, target]).sum(-1))
        maps["gradcam"].append(np.maximum((a * g.mean(axis=(0, 1))).sum(-1), 0))
        alpha_den = 2 * g ** 2 + a.sum(axis=(0, 1)) * g ** 3
        alpha = np.where(alpha_den != 0, g ** 2 / np.where(alpha_den != 0, alpha_den, 1), 0)
        weights = (alpha * np.maximum(g, 0)).sum(axis=(0, 1))
        maps["gradcam_plus_plus"].append(np.maximum((a * weights).sum(-1), 0))
        maps["saliency"].append(np.abs(gx).max(-1))
        maps["layercam"].append(np.maximum((a * np.maximum(g, 0)).sum(-1), 0))
        maps["hirescam"].append(np.maximum((a * g).sum(-1), 0))
        channel_sums = a.sum(axis=(0, 1))
        x_weights = np.where(channel_sums != 0, (a * g).sum(axis=(0, 1))
                             / np.where(channel_sums != 0, channel_sums, 1), 0)
        maps["xgradcam"].append(np.maximum((a * x_weights).sum(-1), 0))
        positions = a.reshape(-1, a.shape[-1])
        centred = positions - positions.mean(axis=0)
        _, _, right = np.linalg.svd(centred, full_matrices=False)
        projection = centred @ right[0]
        if projection @ positions.mean(axis=1) < 0:
            projection = -projection
        maps["eigencam"].append(np.maximum(projection, 0).reshape(a.shape[:2]))
    return {m: np.stack(v) for m, v in maps.items()}


def _close_relative(actual, expected, atol):
    """Compare maps relative to each reference map's largest magnitude."""
    scale = np.maximum(np.abs(expected).max(axis=(1, 2), keepdims=True), 1e-12)
    np.testing.assert_allclose(actual / scale, expected / scale, atol=atol)


@pytest.mark.parametrize("method", REFERENCE_METHODS)
def test_raw_maps_match_eager_per_image_reference(model, images, fixed_targets, reference,
                                                  method):
    result = explain(model, images, methods=(method,), targets=fixed_targets, map_size="native",
                     normalize=False)
    _close_relative(result.heatmaps[method], reference[method], MODEL_RELATIVE_ATOL)


def test_scorecam_matches_eager_masked_inputs(model, images, fixed_targets):
    """Per image and channel: mask the input with the channel's upsampled, [0, 1]-scaled
    map, take the model's probability of the target, weigh the channel by it."""
    from tests.references import reference_bilinear
    K = keras_module("keras3")
    features = K.Model(model.inputs[0], model.get_layer("conv_c").output)
    count = 3
    result = explain(model, images[:count], methods=("scorecam",), targets=fixed_targets[:count],
                     map_size="native", normalize=False, memory_budget_mb=1)
    for i in range(count):
        a = features(images[i:i + 1]).numpy()[0].astype(np.float64)  # [h,w,K]
        weights = []
        for k in range(a.shape[-1]):
            upsampled = reference_bilinear(a[None, :, :, k], images.shape[1:3])[0]
            span = upsampled.max() - upsampled.min()
            mask = (upsampled - upsampled.min()) / span if span > 0 else 0 * upsampled
            masked = (images[i] * mask[..., None]).astype(np.float32)
            weights.append(model(masked[None]).numpy()[0, fixed_targets[i]])
        expected = np.maximum((a * np.asarray(weights)).sum(-1), 0)
        _close_relative(result.heatmaps["scorecam"][i:i + 1], expected[None], MODEL_RELATIVE_ATOL)


def test_one_step_gives_every_method_and_matches_single_method_runs(model, images,
                                                                    fixed_targets, reference):
    together = explain(model, images, methods=REFERENCE_METHODS,
                       targets=fixed_targets, map_size="native", normalize=False)
    for method, expected in reference.items():
        _close_relative(together.heatmaps[method], expected, MODEL_RELATIVE_ATOL)


@pytest.fixture(scope="module")
def batch_runs(model, images, fixed_targets):
    return {batch: explain(model, images, methods=ALL_METHODS, targets=fixed_targets,
                           batch_size=batch, map_size="input", **FAST_OPTIONS)
            for batch in (1, 7, 64)}


@pytest.mark.parametrize("method", ALL_METHODS)
def test_batch_size_does_not_change_maps(batch_runs, method):
    base = batch_runs[64].heatmaps[method]
    assert base.shape == (NUM_IMAGES, 16, 16) and base.dtype == np.float32
    for batch in (1, 7):
        np.testing.assert_allclose(batch_runs[batch].heatmaps[method], base, atol=MODEL_ATOL)


def test_batch_size_does_not_change_predictions(batch_runs, fixed_targets):
    for batch in (1, 7):
        np.testing.assert_array_equal(batch_runs[batch].predictions, batch_runs[64].predictions)
        np.testing.assert_allclose(batch_runs[batch].scores, batch_runs[64].scores, rtol=1e-5)
    np.testing.assert_array_equal(batch_runs[64].targets, fixed_targets)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_xla_equals_graph_mode(model, images, fixed_targets, batch_runs, method):
    xla = explain(model, images[:16], methods=(method,), targets=fixed_targets[:16],
                  batch_size=8, xla=True, map_size="input", **FAST_OPTIONS)
    np.testing.assert_allclose(xla.heatmaps[method], batch_runs[64].heatmaps[method][:16],
                               atol=MODEL_ATOL)


def _compiled(model):
    """(steps, batch functions) explain() keeps for `model`."""
    entries = [(key, function) for _, cache in sightline.compute.explain._COMPILED[model].values()
               for key, function in cache.items()]
    return ([f for key, f in entries if key[0] != "batches"],
            [f for key, f in entries if key[0] == "batches"])


def test_short_last_batch_traces_once():
    model = models.functional_cnn("keras3", seed=5)
    images = np.random.default_rng(0).uniform(0, 1, (10, 16, 16, 3)).astype(np.float32)
    explain(model, images, methods=("gradcam", "saliency"), batch_size=4)  # 4 + 4 + 2
    explain(model, images[:9], methods=("gradcam", "saliency"), batch_size=4)  # again: cached
    steps, batch_functions = _compiled(model)
    assert len(steps) == 1 and len(batch_functions) == 1
    assert steps[0].experimental_get_tracing_count() == 1
    # Any number of images: one trace of the function that loops over the batches.
    assert batch_functions[0].experimental_get_tracing_count() == 1
    # Fewer images than batch_size: 5, 6, 7 and 8 images share one step of batch 8.
    for count in (5, 6, 7, 8):
        explain(model, images[:count], methods=("gradcam", "saliency"), batch_size=64)
    steps, batch_functions = _compiled(model)
    assert len(steps) == 2 and len(batch_functions) == 2
    assert all(f.experimental_get_tracing_count() == 1 for f in steps + batch_functions)


def test_batches_of_one_call_match_one_call_per_batch(model, images, monkeypatch):
    """Many batches in one compiled call, and several calls over a large array, give
    what one call per image gives, in order, padding dropped; SmoothGrad's noise follows
    the sample index across calls."""
    count, methods = 21, ("gradcam", "saliency", "smoothgrad")
    together = explain(model, images[:count], methods=methods, batch_size=4, num_copies=2)
    monkeypatch.setattr(sightline.compute.step, "CALL_BATCHES", 2)  # 8 images per call
    in_calls = explain(model, images[:count], methods=methods, batch_size=4, num_copies=2)
    for method in methods:
        assert together.heatmaps[method].shape[0] == count
        np.testing.assert_array_equal(in_calls.heatmaps[method], together.heatmaps[method])
    for i in (0, 5, 20):
        alone = explain(model, images[i:i + 1], methods=methods[:2], batch_size=4)
        for method in methods[:2]:
            np.testing.assert_allclose(together.heatmaps[method][i], alone.heatmaps[method][0],
                                       atol=1e-6)
        assert together.predictions[i] == alone.predictions[0]


def test_read_only_and_shared_arrays_give_the_same_maps(model, images):
    """explain() hands its batches to TensorFlow without a copy (DLPack) when it can; a
    read-only array (np.load with mmap_mode="r", a frozen view) cannot be shared and is
    copied. Both give the same maps, and the caller's array is left as it was."""
    writable = np.array(images[:9])
    before = writable.copy()
    frozen = np.array(images[:9])
    frozen.setflags(write=False)
    shared = explain(model, writable, methods=("gradcam", "saliency"), batch_size=4)
    copied = explain(model, frozen, methods=("gradcam", "saliency"), batch_size=4)
    for method in ("gradcam", "saliency"):
        np.testing.assert_array_equal(shared.heatmaps[method], copied.heatmaps[method])
    np.testing.assert_array_equal(writable, before)


def test_predicted_targets_are_argmax_and_scores_are_probabilities(model, images):
    result = explain(model, images[:12], methods=("gradcam",))
    probabilities = model(images[:12]).numpy()
    np.testing.assert_array_equal(result.predictions, probabilities.argmax(-1))
    np.testing.assert_array_equal(result.targets, result.predictions)
    np.testing.assert_allclose(result.scores, probabilities.max(-1), rtol=1e-5)


def test_int_target_explains_that_class(model, images, fixed_targets):
    single = explain(model, images[:5], methods=("gradcam",), targets=2)
    np.testing.assert_array_equal(single.targets, [2] * 5)
    array = explain(model, images[:5], methods=("gradcam",), targets=np.full(5, 2))
    np.testing.assert_allclose(single.heatmaps["gradcam"], array.heatmaps["gradcam"], atol=1e-6)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_gradcam_equals_relu_cam_over_area_on_gap_dense_heads(flavor):
    """The head's gradient W[k,c]/(h*w) is the same at every position, so Grad-CAM,
    HiResCAM and XGrad-CAM (post-ReLU activations: a channel summing to 0 is all 0)
    all equal ReLU(CAM)/(h*w)."""
    model = models.fashion_cnn(flavor, seed=11)
    images = np.random.default_rng(1).uniform(0, 1, (6, 28, 28, 1)).astype(np.float32)
    result = explain(model, images, methods=("cam", "gradcam", "hirescam", "xgradcam"),
                     normalize=False)
    h, w = result.heatmaps["cam"].shape[1:]
    expected = np.maximum(result.heatmaps["cam"], 0) / (h * w)
    for method in ("gradcam", "hirescam", "xgradcam"):
        np.testing.assert_allclose(result.heatmaps[method], expected, rtol=GRADCAM_CAM_RTOL,
                                   atol=1e-7 * np.abs(expected).max(), err_msg=method)
    assert np.abs(expected).max() > 0


def test_normalized_maps_undo_with_scales(model, images, fixed_targets):
    raw = explain(model, images[:8], methods=ALL_METHODS, targets=fixed_targets[:8],
                  normalize=False, **FAST_OPTIONS)
    scaled = explain(model, images[:8], methods=ALL_METHODS, targets=fixed_targets[:8],
                     **FAST_OPTIONS)
    for method in ALL_METHODS:
        maps = scaled.heatmaps[method]
        assert maps.min() >= 0 and maps.max() <= 1
        if method not in ("cam", "integrated_gradients"):  # non-negative maps reach 1
            np.testing.assert_allclose(maps.max(axis=(1, 2))[scaled.scales[method] > 0], 1,
                                       rtol=1e-6, err_msg=method)
        np.testing.assert_allclose(scaled.scales[method], np.abs(raw.heatmaps[method]).max(
            axis=(1, 2)), rtol=1e-5, err_msg=method)
        np.testing.assert_allclose(maps * scaled.scales[method][:, None, None],
                                   np.maximum(raw.heatmaps[method], 0), rtol=1e-5,
                                   atol=1e-6 * scaled.scales[method].max(), err_msg=method)


def test_native_and_input_sizes(model, images):
    native = explain(model, images[:3], methods=("cam", "saliency"), map_size="native")
    assert native.heatmaps["cam"].shape == (3, 8, 8)
    assert native.heatmaps["saliency"].shape == (3, 16, 16)
    resized = explain(model, images[:3], methods=("cam",), map_size="input")
    assert resized.heatmaps["cam"].shape == (3, 16, 16)


def test_saliency_matches_float64_finite_differences():
    """A dense network small enough to run in float64 NumPy: central differences of the
    class logit against the saliency map (max over channels of |gradient|)."""
    model = models.dense_only("keras3", input_shape=(4, 5, 2), seed=2)
    w1, b1, w2, b2 = [np.asarray(w, np.float64) for w in model.get_weights()]
    images = np.random.default_rng(3).uniform(-1, 1, (3, 4, 5, 2)).astype(np.float32)
    targets = np.array([0, 2, 1])
    result = explain(model, images, methods=("saliency",), targets=targets, normalize=False)

    def logit(x, c):
        return (np.tanh(x.reshape(-1) @ w1 + b1) @ w2 + b2)[c]

    step = 1e-3
    for i, (image, c) in enumerate(zip(images.astype(np.float64), targets)):
        grads = np.zeros_like(image)
        for index in np.ndindex(image.shape):
            up, down = image.copy(), image.copy()
            up[index] += step
            down[index] -= step
            grads[index] = (logit(up, c) - logit(down, c)) / (2 * step)
        np.testing.assert_allclose(result.heatmaps["saliency"][i], np.abs(grads).max(-1),
                                   atol=FINITE_DIFFERENCE_ATOL)
        sums = explain(model, images[i:i + 1], methods=("saliency",), targets=int(c),
                       normalize=False, channel_reduce="sum")
        np.testing.assert_allclose(sums.heatmaps["saliency"][0], np.abs(grads).sum(-1),
                                   atol=FINITE_DIFFERENCE_ATOL)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_integrated_gradients_completeness_at_default_steps(flavor):
    model = models.functional_cnn(flavor, head="gap_dense", seed=4)
    K = keras_module(flavor)
    logits_model = K.Model(model.inputs[0], model.get_layer("logits").output)
    images = np.random.default_rng(5).uniform(0, 2, (5, 16, 16, 3)).astype(np.float32)
    targets = np.arange(5) % 4
    result = explain(model, images, methods=("integrated_gradients",), targets=targets,
                     normalize=False)
    logits = logits_model(images).numpy().astype(np.float64)
    baseline = logits_model(np.zeros_like(images[:1])).numpy()[0].astype(np.float64)
    expected = logits[np.arange(5), targets] - baseline[targets]
    totals = result.heatmaps["integrated_gradients"].astype(np.float64).sum(axis=(1, 2))
    assert np.all(np.abs(expected) > 1e-3)  # a meaningful difference to integrate
    np.testing.assert_allclose(totals, expected, rtol=IG_COMPLETENESS_RTOL)


def test_integrated_gradients_memory_budget_does_not_change_maps(model, images,
                                                                 fixed_targets):
    whole = explain(model, images[:4], methods=("integrated_gradients",),
                    targets=fixed_targets[:4], num_steps=10, normalize=False)
    chunked = explain(model, images[:4], methods=("integrated_gradients",),
                      targets=fixed_targets[:4], num_steps=10, normalize=False,
                      memory_budget_mb=1)  # a few steps per gradient call
    np.testing.assert_allclose(chunked.heatmaps["integrated_gradients"],
                               whole.heatmaps["integrated_gradients"], rtol=1e-4, atol=1e-6)


def test_smoothgrad_without_noise_is_saliency(model, images, fixed_targets):
    result = explain(model, images[:6], methods=("saliency", "smoothgrad"),
                     targets=fixed_targets[:6], noise_sigma=0.0, num_copies=3)
    np.testing.assert_allclose(result.heatmaps["smoothgrad"], result.heatmaps["saliency"],
                               atol=MODEL_ATOL)


def test_smoothgrad_seed_changes_maps(model, images, fixed_targets):
    first = explain(model, images[:4], methods=("smoothgrad",), targets=fixed_targets[:4],
                    num_copies=4, noise_seed=1)
    second = explain(model, images[:4], methods=("smoothgrad",), targets=fixed_targets[:4],
                     num_copies=4, noise_seed=2)
    assert np.abs(first.heatmaps["smoothgrad"] - second.heatmaps["smoothgrad"]).max() > 1e-3


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_maps_correlate_with_float32(precision):
    model = models.fashion_cnn("keras3", seed=9)
    images = np.random.default_rng(2).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    methods = ("cam", "gradcam", "saliency")
    float32 = explain(model, images, methods=methods)
    mixed = explain(model, images, methods=methods, precision=precision,
                    targets=float32.targets)
    for method in methods:
        assert mixed.heatmaps[method].dtype == np.float32
        assert float32.heatmaps[method].std() > 0.01, method  # a map worth correlating
        correlation = np.corrcoef(mixed.heatmaps[method].ravel(),
                                  float32.heatmaps[method].ravel())[0, 1]
        assert correlation >= MIXED_PRECISION_MIN_CORRELATION[method], (method, correlation)


def test_maps_follow_weights_changed_after_the_first_call():
    """`explain` keeps its compiled steps per model; a model that trains on between two
    calls must be explained with the weights it has at the second call."""
    model = models.fashion_cnn("keras3", seed=11)
    images = np.random.default_rng(4).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    targets = np.arange(8, dtype=np.int32) % 10
    explain(model, images, methods=("cam", "gradcam"), targets=targets, normalize=False,
            map_size="native")
    explain(model, images, methods=("gradcam",), targets=targets, precision="mixed_bfloat16")
    dense = model.get_layer("classifier")
    kernel, bias = dense.get_weights()
    dense.set_weights([-kernel[:, ::-1], bias])  # a different head: other classes' evidence
    after = explain(model, images, methods=("cam", "gradcam"), targets=targets, normalize=False,
            map_size="native")
    features = keras_module("keras3").Model(model.inputs[0], model.get_layer("last_conv").output)
    activations = features(images).numpy().astype(np.float64)  # [B,h,w,K]
    new_kernel = -kernel[:, ::-1].astype(np.float64)  # [K,classes]
    expected = np.einsum("bhwk,bk->bhw", activations, new_kernel[:, targets].T)
    _close_relative(after.heatmaps["cam"], expected, MODEL_RELATIVE_ATOL)
    area = activations.shape[1] * activations.shape[2]
    _close_relative(after.heatmaps["gradcam"], np.maximum(expected, 0) / area, MODEL_RELATIVE_ATOL)
    # The mixed-precision step runs a rebuilt copy of the model: it must follow too.
    mixed = explain(model, images, methods=("gradcam",), targets=targets,
                    precision="mixed_bfloat16")
    float32 = explain(model, images, methods=("gradcam",), targets=targets)
    correlation = np.corrcoef(mixed.heatmaps["gradcam"].ravel(),
                              float32.heatmaps["gradcam"].ravel())[0, 1]
    assert correlation >= MIXED_PRECISION_MIN_CORRELATION["gradcam"], correlation


# ----------------------------------------------------------------------------- bad input

BAD_CALLS = [
    (dict(methods=("gradcam", "lime")), ValueError, r"unknown method\(s\) 'lime'; choose from cam"),
    (dict(methods=()), TypeError, r"methods must be a non-empty sequence"),
    (dict(methods=("gradcam", "gradcam")), ValueError, r"methods must not repeat"),
    (dict(batch_size=0), ValueError, r"batch_size must be an integer >= 1; got 0"),
    (dict(batch_size=2.5), TypeError, r"batch_size must be an integer >= 1; got 2.5"),
    (dict(map_size="full"), ValueError, r"map_size must be one of 'native', 'input'; got 'full'"),
    (dict(precision="float16"), ValueError, r"precision must be one of 'float32'"),
    (dict(xla="yes"), ValueError, r"xla must be True, False or 'auto'; got 'yes'"),
    (dict(normalize=1), TypeError, r"normalize must be True or False; got 1"),
    (dict(num_steps=0), ValueError, r"num_steps must be an integer >= 1"),
    (dict(noise_sigma=-0.1), ValueError, r"noise_sigma must be a number >= 0"),
    (dict(channel_reduce="mean"), ValueError, r"channel_reduce must be one of 'max', 'sum'"),
    (dict(smoothing=3), TypeError, r"unknown option\(s\) smoothing; method options are"),
    (dict(targets=4), ValueError, r"targets must be class indices in \[0, 4\); got \[4, 4\]"),
    (dict(targets=np.array([0, 1, 2])), ValueError, r"targets must have one class per image, "
                                                    r"shape \(2,\); got shape \(3,\)"),
    (dict(targets=np.array([0.5, 1.0])), TypeError, r"targets must be None, an int or an int "
                                                    r"array"),
    (dict(layer="missing"), ValueError, r"layer 'missing' is not in the model"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_CALLS,
                         ids=[str(sorted(c[0]))[:40] for c in BAD_CALLS])
def test_bad_arguments_stop_with_one_clear_line(model, images, kwargs, error, message):
    with pytest.raises(error, match=message) as raised:
        explain(model, images[:2], **kwargs)
    assert "\n" not in str(raised.value)


BAD_IMAGES = [
    (np.zeros((16, 16, 3), np.float32), r"got one image of shape \(16, 16, 3\): add a batch axis"),
    (np.zeros((0, 16, 16, 3), np.float32), r"images is empty"),
    (np.zeros((2, 16, 16, 1), np.float32), r"images have shape \(16, 16, 1\) per image but the "
                                           r"model takes \(16, 16, 3\) \(channels differ\)"),
    (np.zeros((2, 12, 16, 3), np.float32), r"\(height differ\)"),
    (np.full((2, 16, 16, 3), np.nan, np.float32), r"images contain NaN or infinite values"),
    (np.zeros((2, 16, 16), np.float32) [None], r"images have shape"),
]


@pytest.mark.parametrize("bad, message", BAD_IMAGES, ids=range(len(BAD_IMAGES)))
def test_bad_images_stop_with_one_clear_line(model, bad, message):
    with pytest.raises(ValueError, match=message):
        explain(model, bad)


def test_non_numeric_images_are_a_type_error(model):
    with pytest.raises(TypeError, match=r"images must be a numeric array"):
        explain(model, np.array([["a"]]))


def test_copies_per_call_one_batch_on_cpu_budget_on_gpu():
    import types

    from sightline.compute.step import copies_per_call
    from sightline.config import make_config
    adapter = types.SimpleNamespace(values_per_image=1000)
    config = make_config(("smoothgrad",), memory_budget_mb=64)
    # 64 MiB over (1000 values x 12 bytes) per image at batch 8 and 4 bytes forward-only.
    gradient_fit = (64 * 2 ** 20) // (1000 * 12 * 8)
    forward_fit = (64 * 2 ** 20) // (1000 * 4 * 8)
    assert copies_per_call(adapter, config, 8, gradients=True, on_gpu=False) == 1
    assert copies_per_call(adapter, config, 8, gradients=True, on_gpu=True) == gradient_fit
    assert copies_per_call(adapter, config, 8, gradients=False, on_gpu=False) == forward_fit
    assert copies_per_call(adapter, config, 8, gradients=False, on_gpu=True) == forward_fit
    huge = types.SimpleNamespace(values_per_image=10 ** 9)
    assert copies_per_call(huge, config, 8, gradients=True, on_gpu=True) == 1
