"""Gradient kernels against analytic functions whose gradients and path integrals are
known in closed form, evaluated in float64 NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from sightline.kernels import (CHANNEL_REDUCTIONS, integrated_gradients, mean_gradient_over_copies,
                     saliency, smoothgrad)
from tests.tolerances import IG_COMPLETENESS_RTOL, KERNEL_ATOL, KERNEL_RTOL

B, H, W, C = 4, 7, 8, 3
NUM_CLASSES = 5


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                               rtol=KERNEL_RTOL, atol=KERNEL_ATOL)


def channel_reduce_reference(values, how):
    """values[B,H,W,C] float64 -> [B,H,W], one pixel at a time."""
    out = np.zeros(values.shape[:3])
    for b in range(values.shape[0]):
        for i in range(values.shape[1]):
            for j in range(values.shape[2]):
                pixel = [abs(v) for v in values[b, i, j]]
                out[b, i, j] = max(pixel) if how == "max" else sum(pixel)
    return out


class AnalyticModel:
    """Per-class weight tensors W_c[H,W,C]; y_c(x) and dy_c/dx in closed form.

    `input_gradient(images[n,H,W,C], targets[n])` gathers each image's W_c by its
    target, as the engine's gradient function gathers the explained logit.
    """

    def __init__(self, weights, kind):
        self.weights = np.asarray(weights, np.float64)  # [NUM_CLASSES,H,W,C]
        self.kind = kind
        self.calls = []  # batch sizes seen by input_gradient, when run eagerly

    def input_gradient(self, images, targets):
        if tf.executing_eagerly():
            self.calls.append(int(images.shape[0]))
        w = tf.gather(tf.constant(self.weights, tf.float32), targets)
        if self.kind == "linear":  # y = sum W x
            return w * tf.ones_like(images)
        if self.kind == "quadratic":  # y = sum W x^2
            return 2.0 * w * images
        if self.kind == "sine":  # y = sum sin(W x)
            return w * tf.cos(w * images)
        raise AssertionError(self.kind)

    def logit(self, x, c):
        """float64 y_c(x) for one image."""
        x = np.asarray(x, np.float64)
        wc = self.weights[c]
        if self.kind == "linear":
            return float(np.sum(wc * x))
        if self.kind == "quadratic":
            return float(np.sum(wc * x ** 2))
        return float(np.sum(np.sin(wc * x)))


def random_weights(rng, low=-1.0, high=1.0):
    return rng.uniform(low, high, (NUM_CLASSES, H, W, C))


def random_images(rng, n=B, low=0.0, high=1.0, shape=(H, W, C)):
    return rng.uniform(low, high, (n,) + shape).astype(np.float32)


def distinct_targets(n=B):
    return np.arange(n, dtype=np.int32) % NUM_CLASSES  # every image a different class


# --- saliency --------------------------------------------------------------------------

@pytest.mark.parametrize("how", CHANNEL_REDUCTIONS)
def test_saliency_matches_reference(rng, how):
    grads = rng.normal(size=(B, H, W, C)).astype(np.float32)
    out = saliency(grads, how)
    assert out.shape == (B, H, W) and out.dtype == tf.float32
    assert_close(out, channel_reduce_reference(grads.astype(np.float64), how))


def test_saliency_default_is_max(rng):
    grads = rng.normal(size=(B, H, W, C)).astype(np.float32)
    assert_close(saliency(grads), channel_reduce_reference(grads.astype(np.float64), "max"))


def test_saliency_low_precision_gradients_give_float32(rng):
    grads = tf.constant(rng.normal(size=(B, H, W, C)), tf.bfloat16)
    out = saliency(grads, "sum")
    assert out.dtype == tf.float32
    assert_close(out, channel_reduce_reference(tf.cast(grads, tf.float64).numpy(), "sum"))


@pytest.mark.parametrize("bad", ["mean", "MAX", "", None])
def test_saliency_rejects_unknown_channel_reduce(rng, bad):
    grads = rng.normal(size=(B, H, W, C)).astype(np.float32)
    with pytest.raises(ValueError):
        saliency(grads, bad)


# --- Integrated Gradients --------------------------------------------------------------

def ig_quadratic_reference(model, images, targets, baselines):
    """For y = sum W x^2 the midpoint rule is exact: IG = sum_C W (x^2 - x'^2)."""
    x = images.astype(np.float64)
    xb = np.broadcast_to(np.asarray(baselines, np.float64), x.shape)
    out = np.zeros(x.shape[:3])
    for b in range(x.shape[0]):
        wc = model.weights[targets[b]]
        for ch in range(x.shape[3]):
            out[b] += wc[..., ch] * (x[b, ..., ch] ** 2 - xb[b, ..., ch] ** 2)
    return out


def ig_midpoint_reference(model, images, targets, baselines, num_steps):
    """The discretised IG of the docstring, one step at a time, in float64."""
    x = images.astype(np.float64)
    xb = np.broadcast_to(np.asarray(baselines, np.float64), x.shape)
    out = np.zeros(x.shape[:3])
    for b in range(x.shape[0]):
        wc = model.weights[targets[b]]
        grad_sum = np.zeros(x.shape[1:])
        for k in range(num_steps):
            point = xb[b] + (k + 0.5) / num_steps * (x[b] - xb[b])
            grad_sum += wc * np.cos(wc * point)
        out[b] = np.sum((x[b] - xb[b]) * grad_sum / num_steps, axis=-1)
    return out


@pytest.mark.parametrize("baseline_kind", ["zero_scalar", "per_image", "broadcast_one"])
def test_integrated_gradients_exact_on_quadratic(rng, baseline_kind):
    model = AnalyticModel(random_weights(rng), "quadratic")
    images = random_images(rng, low=-1.0)
    targets = distinct_targets()
    baselines = {
        "zero_scalar": np.float32(0.0),
        "per_image": random_images(rng, low=-1.0),
        "broadcast_one": random_images(rng, n=1, low=-1.0),
    }[baseline_kind]
    out = integrated_gradients(model.input_gradient, images, targets, baselines,
                               num_steps=5)
    assert out.shape == (B, H, W) and out.dtype == tf.float32
    expected = ig_quadratic_reference(model, images, targets, baselines)
    assert (expected < 0).any() and (expected > 0).any(), "IG maps are signed"
    assert_close(out, expected)


def test_integrated_gradients_completeness_on_quadratic(rng):
    model = AnalyticModel(random_weights(rng, 0.1, 1.0), "quadratic")
    images = random_images(rng, low=-1.0)
    baselines = random_images(rng, low=-0.5, high=0.5)
    targets = distinct_targets()
    out = integrated_gradients(model.input_gradient, images, targets, baselines,
                               num_steps=3).numpy()
    for b in range(B):
        delta = model.logit(images[b], targets[b]) - model.logit(baselines[b], targets[b])
        # A sum over H*W*C = 168 float32 terms: relative to the terms' total magnitude.
        magnitude = float(np.sum(np.abs(out[b].astype(np.float64))))
        np.testing.assert_allclose(out[b].astype(np.float64).sum(), delta,
                                   rtol=0, atol=KERNEL_RTOL * magnitude + KERNEL_ATOL)


def test_integrated_gradients_midpoint_rule_on_sine(rng):
    model = AnalyticModel(random_weights(rng, -3.0, 3.0), "sine")
    images = random_images(rng)
    targets = distinct_targets()
    out = integrated_gradients(model.input_gradient, images, targets, 0.0, num_steps=7)
    assert_close(out, ig_midpoint_reference(model, images, targets, 0.0, 7))


def test_integrated_gradients_completeness_on_sine_improves_with_steps(rng):
    """y = sum sin(W x) is separable, so the exact IG of each element is
    sin(W x) - sin(W x'); the midpoint rule's error falls as 1/num_steps^2."""
    model = AnalyticModel(random_weights(rng, -3.0, 3.0), "sine")
    images = random_images(rng)
    baselines = random_images(rng, low=-0.5, high=0.5)
    targets = distinct_targets()
    errors = {}
    for num_steps in (8, 32):
        out = integrated_gradients(model.input_gradient, images, targets, baselines,
                                   num_steps=num_steps).numpy().astype(np.float64)
        errors[num_steps] = []
        for b in range(B):
            delta = (model.logit(images[b], targets[b])
                     - model.logit(baselines[b], targets[b]))
            errors[num_steps].append(abs(out[b].sum() - delta) / abs(delta))
    assert max(errors[32]) < IG_COMPLETENESS_RTOL
    assert max(errors[32]) > 0, "the midpoint rule cannot be exact here"
    # 1/n^2: four times the steps, about a sixteenth of the error.
    for coarse, fine in zip(errors[8], errors[32]):
        assert fine < coarse / 8


@pytest.mark.parametrize("copies_per_call", [1, 3, 8, 20])
def test_integrated_gradients_independent_of_copies_per_call(rng, copies_per_call):
    model = AnalyticModel(random_weights(rng, -3.0, 3.0), "sine")
    images = random_images(rng)
    baselines = random_images(rng, low=-0.5, high=0.5)
    targets = distinct_targets()
    all_at_once = integrated_gradients(model.input_gradient, images, targets, baselines,
                                       num_steps=8, copies_per_call=None)
    chunked = integrated_gradients(model.input_gradient, images, targets, baselines,
                                   num_steps=8, copies_per_call=copies_per_call)
    assert_close(chunked, all_at_once.numpy().astype(np.float64))
    assert_close(chunked, ig_midpoint_reference(model, images, targets, baselines, 8))


@pytest.mark.parametrize("copies_per_call, expected_calls",
                         [(None, [8 * B]), (3, [3 * B] * 3), (8, [8 * B]), (20, [8 * B])])
def test_integrated_gradients_folds_steps_into_batched_calls(rng, copies_per_call,
                                                              expected_calls):
    model = AnalyticModel(random_weights(rng), "quadratic")
    integrated_gradients(model.input_gradient, random_images(rng), distinct_targets(), 0.0,
                         num_steps=8, copies_per_call=copies_per_call)
    assert model.calls == expected_calls


# --- mean_gradient_over_copies ---------------------------------------------------------

@pytest.mark.parametrize("num_copies, copies_per_call",
                         [(1, None), (5, None), (5, 1), (5, 2), (7, 3), (4, 4), (3, 10)])
def test_mean_gradient_over_copies(rng, num_copies, copies_per_call):
    base = rng.normal(size=(B, H, W, C)).astype(np.float32)
    offsets = rng.normal(size=(num_copies, 1, H, W, C)).astype(np.float32)
    weights = random_weights(rng)
    targets = distinct_targets()
    seen_ids = []

    def make_copies(copy_ids):
        seen_ids.extend(copy_ids.numpy().tolist())
        return base[None] * tf.cast(copy_ids + 1, tf.float32)[:, None, None, None, None] \
            + tf.gather(offsets, copy_ids)

    def input_gradient(images, targets):  # x * W_target, so targets must line up
        return images * tf.gather(tf.constant(weights, tf.float32), targets)

    out = mean_gradient_over_copies(input_gradient, make_copies, targets, num_copies,
                                    copies_per_call)
    assert out.shape == (B, H, W, C) and out.dtype == tf.float32
    expected = np.zeros((B, H, W, C))
    for b in range(B):
        for j in range(num_copies):
            copy = base[b].astype(np.float64) * (j + 1) + offsets[j, 0]
            expected[b] += copy * weights[targets[b]]
    expected /= num_copies
    assert_close(out, expected)
    assert set(seen_ids) == set(range(num_copies)), "ids outside the copies were made"


@pytest.mark.parametrize("num_copies", [0, -1])
def test_mean_gradient_over_copies_rejects_no_copies(num_copies):
    images = tf.zeros((1, 2, 2, 1))
    with pytest.raises(ValueError):
        mean_gradient_over_copies(lambda x, t: x, lambda ids: images[None], tf.zeros([1], tf.int32),
                                  num_copies)


# --- SmoothGrad ------------------------------------------------------------------------

@pytest.mark.parametrize("how", CHANNEL_REDUCTIONS)
def test_smoothgrad_on_linear_function_is_saliency_of_the_weights(rng, how):
    model = AnalyticModel(random_weights(rng), "linear")
    targets = distinct_targets()
    out = smoothgrad(model.input_gradient, random_images(rng), targets, np.arange(B),
                     num_copies=6, noise_sigma=0.5, noise_seed=3, channel_reduce=how)
    assert out.shape == (B, H, W) and out.dtype == tf.float32
    assert_close(out, channel_reduce_reference(model.weights[targets], how))


@pytest.mark.parametrize("how", CHANNEL_REDUCTIONS)
def test_smoothgrad_without_noise_is_saliency(rng, how):
    model = AnalyticModel(random_weights(rng, -3.0, 3.0), "sine")
    images = random_images(rng)
    targets = distinct_targets()
    out = smoothgrad(model.input_gradient, images, targets, np.arange(B), num_copies=3,
                     noise_sigma=0.0, channel_reduce=how)
    x = images.astype(np.float64)
    plain_grads = np.stack([model.weights[targets[b]] * np.cos(model.weights[targets[b]] * x[b])
                            for b in range(B)])
    assert_close(out, channel_reduce_reference(plain_grads, how))


@pytest.mark.parametrize("how", CHANNEL_REDUCTIONS)
def test_smoothgrad_matches_reference_on_the_noisy_copies_it_made(rng, how):
    """Record the noisy copies the kernel feeds the gradient function; then, in
    float64: each image's copies are its own image plus noise of std sigma * spread,
    and the map is reduce_C |mean over copies of the gradient| (the mean before the
    absolute value: the sine's gradients change sign between copies)."""
    model = AnalyticModel(random_weights(rng, -3.0, 3.0), "sine")
    images = random_images(rng)
    targets = distinct_targets()  # distinct: a copy's target says whose copy it is
    num_copies, sigma = 6, 0.3
    recorded = []

    def input_gradient(copies, copy_targets):
        recorded.append((copies.numpy().astype(np.float64), copy_targets.numpy()))
        return model.input_gradient(copies, copy_targets)

    out = smoothgrad(input_gradient, images, targets, np.arange(B), num_copies=num_copies,
                     noise_sigma=sigma, noise_seed=2, copies_per_call=2,
                     channel_reduce=how).numpy()
    copies = np.concatenate([c for c, _ in recorded])
    copy_targets = np.concatenate([t for _, t in recorded])
    expected = np.zeros((B, H, W))
    for b in range(B):
        mine = copies[copy_targets == targets[b]]
        assert len(mine) == num_copies
        x = images[b].astype(np.float64)
        noise = (mine - x) / (sigma * (x.max() - x.min()))
        assert abs(noise.mean()) < 0.15 and 0.9 < noise.std() < 1.1
        wc = model.weights[targets[b]]
        mean_grad = sum(wc * np.cos(wc * copy) for copy in mine) / num_copies
        expected[b] = channel_reduce_reference(mean_grad[None], how)[0]
    assert_close(out, expected)


def noisy_images(rng, n, spreads, shape=(32, 32, 1)):
    """Images 50 + U(0, spread): positive far beyond any noise, so with the gradient of
    y = sum x^2 / 2 (the input itself) and one channel, SmoothGrad's map is x + noise."""
    images = np.stack([50.0 + rng.uniform(0, s, shape) for s in spreads[:n]])
    for b, s in enumerate(spreads[:n]):  # make max - min exactly the spread
        images[b].flat[0], images[b].flat[1] = 50.0, 50.0 + s
    return images.astype(np.float32)


def identity_gradient(images, targets):
    return images


def recovered_noise(images, **options):
    out = smoothgrad(identity_gradient, images, np.zeros(len(images), np.int32),
                     options.pop("sample_index", np.arange(len(images))), **options)
    return out.numpy().astype(np.float64) - images[..., 0].astype(np.float64)


def test_smoothgrad_noise_std_is_sigma_times_image_spread(rng):
    spreads = [1.0, 4.0, 0.25]
    images = noisy_images(rng, 3, spreads)
    for sigma in (0.1, 0.3):
        noise = recovered_noise(images, num_copies=1, noise_sigma=sigma, noise_seed=11)
        for b, spread in enumerate(spreads):
            # 1024 standard normals: the std estimate is within ~2.2% (1 sigma).
            assert abs(noise[b].mean()) < 0.15 * sigma * spread
            np.testing.assert_allclose(noise[b].std(), sigma * spread, rtol=0.1)
            # Roughly normal: about 68% within one standard deviation.
            inside = np.mean(np.abs(noise[b]) < sigma * spread)
            assert 0.62 < inside < 0.75


def test_smoothgrad_noise_scales_linearly_with_sigma(rng):
    images = noisy_images(rng, 2, [1.0, 2.0])
    small = recovered_noise(images, num_copies=2, noise_sigma=0.1, noise_seed=4)
    large = recovered_noise(images, num_copies=2, noise_sigma=0.3, noise_seed=4)
    assert np.abs(small).max() > 0.01
    # Same draws, three times the std; float32 resolution at 50 is ~4e-6.
    np.testing.assert_allclose(large, 3.0 * small, rtol=0, atol=2e-5)


def test_smoothgrad_mean_noise_shrinks_as_one_over_sqrt_samples(rng):
    """The copies of a sample draw independent noise: their mean's std is
    sigma * spread / sqrt(num_copies)."""
    images = noisy_images(rng, 2, [1.0, 2.0])
    sigma = 0.2
    for num_copies in (1, 4, 16, 64):
        noise = recovered_noise(images, num_copies=num_copies, noise_sigma=sigma,
                                noise_seed=5, copies_per_call=16)
        for b, spread in enumerate([1.0, 2.0]):
            expected = sigma * spread / np.sqrt(num_copies)
            np.testing.assert_allclose(np.sqrt(np.mean(noise[b] ** 2)), expected, rtol=0.1)


def test_smoothgrad_on_quadratic_approaches_gradient_at_the_image(rng):
    """y = sum W x^2: the mean gradient is 2 W (x + mean noise) -> 2 W x."""
    weights = random_weights(rng, 0.5, 1.0)
    model = AnalyticModel(weights, "quadratic")
    images = (50.0 + rng.uniform(0, 1, (2, H, W, C))).astype(np.float32)
    targets = np.array([1, 3], np.int32)
    sigma = 0.2
    spread = images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))
    clean = np.stack([np.sum(2.0 * weights[t] * images[b], axis=-1)
                      for b, t in enumerate(targets)])
    for num_copies in (4, 64):
        out = smoothgrad(model.input_gradient, images, targets, np.arange(2),
                         num_copies=num_copies, noise_sigma=sigma, channel_reduce="sum")
        error = out.numpy().astype(np.float64) - clean
        # error = sum_C 2 W nbar, nbar ~ N(0, (sigma spread)^2 / n) per element.
        for b, t in enumerate(targets):
            expected_std = (2.0 * sigma * spread[b] / np.sqrt(num_copies)
                            * np.sqrt(np.sum(weights[t] ** 2, axis=-1)))
            np.testing.assert_allclose(np.sqrt(np.mean(error[b] ** 2)),
                                       np.sqrt(np.mean(expected_std ** 2)), rtol=0.3)


def test_smoothgrad_noise_depends_only_on_seed_sample_index_and_copy(rng):
    """The same image at sample_index 5 gives the same map alone, inside batches of
    other sizes and compositions, and at other positions."""
    model = AnalyticModel(random_weights(rng, -3.0, 3.0), "sine")
    image = random_images(rng, n=1)
    others = random_images(rng, n=7)
    options = dict(num_copies=4, noise_sigma=0.3, noise_seed=9)

    def explain_in(batch, target, indices, position):
        out = smoothgrad(model.input_gradient, batch, target, np.asarray(indices), **options)
        return out.numpy()[position]

    alone = explain_in(image, np.array([2], np.int32), [5], 0)
    contexts = [
        (np.concatenate([others[:1], image, others[1:3]]), [0, 2, 4, 1], [0, 5, 7, 1], 1),
        (np.concatenate([image, others[3:4]]), [2, 1], [5, 6], 0),
        (np.concatenate([others, image]), [0, 1, 3, 4, 0, 1, 3, 2], [0, 1, 2, 3, 4, 6, 7, 5], 7),
    ]
    for batch, targets, indices, position in contexts:
        np.testing.assert_allclose(
            explain_in(batch, np.asarray(targets, np.int32), indices, position), alone,
            rtol=KERNEL_RTOL, atol=KERNEL_ATOL)

    # ... and the noise does matter: other seeds and other sample indices change the map.
    plain = explain_in(image, np.array([2], np.int32), [5], 0)
    for changed in (dict(noise_seed=10), dict(sample_index=[6]),
                    dict(sample_index=[5 + 2 ** 32])):
        seed = changed.get("noise_seed", options["noise_seed"])
        index = np.asarray(changed.get("sample_index", [5]), np.int64)
        other = smoothgrad(model.input_gradient, image, np.array([2], np.int32), index,
                           num_copies=4, noise_sigma=0.3, noise_seed=seed).numpy()[0]
        assert np.abs(other - plain).max() > 0.05, changed


def test_smoothgrad_different_sample_index_gives_different_noise(rng):
    images = noisy_images(rng, 1, [1.0])
    twice = np.concatenate([images, images])
    noise = recovered_noise(twice, num_copies=1, noise_sigma=0.2, sample_index=[3, 4])
    # Independent draws: the difference has std sqrt(2) * 0.2, nowhere near 0.
    assert np.std(noise[0] - noise[1]) > 0.2
    same = recovered_noise(twice, num_copies=1, noise_sigma=0.2, sample_index=[3, 3])
    np.testing.assert_array_equal(same[0], same[1])


@pytest.mark.parametrize("copies_per_call", [1, 3, 8])
def test_smoothgrad_independent_of_copies_per_call(rng, copies_per_call):
    model = AnalyticModel(random_weights(rng, -3.0, 3.0), "sine")
    images = random_images(rng)
    targets = distinct_targets()
    sample_index = np.array([3, 0, 12, 7])
    options = dict(num_copies=8, noise_sigma=0.2, noise_seed=1)
    all_at_once = smoothgrad(model.input_gradient, images, targets, sample_index,
                             copies_per_call=None, **options)
    chunked = smoothgrad(model.input_gradient, images, targets, sample_index,
                         copies_per_call=copies_per_call, **options)
    assert_close(chunked, all_at_once.numpy().astype(np.float64))


def test_smoothgrad_rejects_unknown_channel_reduce(rng):
    model = AnalyticModel(random_weights(rng), "linear")
    with pytest.raises(ValueError):
        smoothgrad(model.input_gradient, random_images(rng), distinct_targets(), np.arange(B),
                   num_copies=2, channel_reduce="mean")
