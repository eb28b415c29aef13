"""Spearman rank correlation and SSIM, pair by pair, against scipy and a float64 loop."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from sightline.kernels import spearman, ssim
from sightline.kernels.similarity import ssim_window
from tests.tolerances import KERNEL_ATOL, KERNEL_RTOL


def _tied_maps(rng, shape):
    """Signed maps with many ties: values on a coarse grid, a third of them zero."""
    maps = np.round(rng.normal(size=shape) * 2.0) / 2.0
    maps[rng.uniform(size=shape) < 0.33] = 0.0
    return maps.astype(np.float32)


@pytest.mark.parametrize("shape", [(6, 5, 7), (3, 28, 28)])
def test_spearman_matches_scipy_on_absolute_values_with_ties(rng, shape):
    maps_a = _tied_maps(rng, shape)
    # Correlated with maps_a, so the values are not all near zero.
    maps_b = (maps_a + _tied_maps(rng, shape)).astype(np.float32)
    expected = [scipy.stats.spearmanr(np.abs(a).ravel(), np.abs(b).ravel()).statistic
                for a, b in zip(maps_a.astype(np.float64), maps_b.astype(np.float64))]
    assert len(np.unique(np.abs(maps_a[0]))) < maps_a[0].size / 3, "the maps must have ties"
    actual = spearman(maps_a, maps_b)
    assert actual.shape == (shape[0],) and actual.dtype == tf.float32
    np.testing.assert_allclose(actual.numpy(), expected, rtol=KERNEL_RTOL, atol=KERNEL_ATOL)


def test_spearman_ranks_absolute_values_so_a_sign_flip_is_perfect_agreement(rng):
    maps = rng.normal(size=(4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(spearman(maps, -maps).numpy(), 1.0, rtol=KERNEL_RTOL)
    # Reversed order of magnitudes: -1.
    magnitudes = np.arange(1, 37, dtype=np.float32).reshape(1, 6, 6)
    np.testing.assert_allclose(spearman(magnitudes, 1.0 / magnitudes).numpy(), -1.0,
                               rtol=KERNEL_RTOL)


def test_spearman_is_nan_where_a_map_is_constant_as_in_scipy(rng):
    maps_a = rng.normal(size=(3, 4, 5)).astype(np.float32)
    maps_b = rng.normal(size=(3, 4, 5)).astype(np.float32)
    maps_b[1] = 0.0
    with np.errstate(invalid="ignore"), pytest.warns(scipy.stats.ConstantInputWarning):
        assert np.isnan(scipy.stats.spearmanr(maps_a[1].ravel(), maps_b[1].ravel()).statistic)
    actual = spearman(maps_a, maps_b).numpy()
    assert np.isnan(actual[1]) and np.isfinite(actual[[0, 2]]).all()


# --- SSIM --------------------------------------------------------------------------------

def reference_ssim(map_a, map_b, side, sigma, data_range=1.0):
    """One pair, float64: every window position inside the map, Gaussian-weighted central
    moments (sum w (x - mu)^2, not E[x^2] - mu^2), the index of Wang et al. 2004."""
    map_a, map_b = np.asarray(map_a, np.float64), np.asarray(map_b, np.float64)
    grid = np.arange(side) - (side - 1) / 2
    weights = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma ** 2))
    weights /= weights.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    indices = []
    for i in range(map_a.shape[0] - side + 1):
        for j in range(map_a.shape[1] - side + 1):
            a, b = map_a[i:i + side, j:j + side], map_b[i:i + side, j:j + side]
            mu_a, mu_b = (weights * a).sum(), (weights * b).sum()
            var_a = (weights * (a - mu_a) ** 2).sum()
            var_b = (weights * (b - mu_b) ** 2).sum()
            cov = (weights * (a - mu_a) * (b - mu_b)).sum()
            indices.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                           / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(indices))


# (h, w) -> the documented window: 11x11 of sigma 1.5 where it fits, else the largest odd
# side that fits with sigma 1.5 * side / 11.
WINDOWS = {(16, 18): (11, 1.5), (7, 7): (7, 1.5 * 7 / 11), (4, 6): (3, 1.5 * 3 / 11),
           (2, 5): (1, 1.5 / 11), (12, 9): (9, 1.5 * 9 / 11)}


@pytest.mark.parametrize("size", sorted(WINDOWS))
def test_ssim_matches_float64_reference(rng, size):
    side, sigma = WINDOWS[size]
    assert ssim_window(*size) == pytest.approx((side, sigma))
    maps_a = rng.uniform(0, 1, (4, *size)).astype(np.float32)
    # Related maps: smoothed and noisy versions of maps_a, and one unrelated.
    maps_b = np.clip(0.6 * maps_a + 0.4 * rng.uniform(0, 1, maps_a.shape), 0, 1).astype(np.float32)
    maps_b[3] = rng.uniform(0, 1, size)
    expected = [reference_ssim(a, b, side, sigma) for a, b in zip(maps_a, maps_b)]
    actual = ssim(maps_a, maps_b)
    assert actual.shape == (4,) and actual.dtype == tf.float32
    np.testing.assert_allclose(actual.numpy(), expected, rtol=KERNEL_RTOL, atol=KERNEL_ATOL)


def test_ssim_data_range_sets_the_constants(rng):
    maps_a = rng.uniform(0, 255, (2, 9, 9)).astype(np.float32)
    maps_b = rng.uniform(0, 255, (2, 9, 9)).astype(np.float32)
    side, sigma = ssim_window(9, 9)
    expected = [reference_ssim(a, b, side, sigma, data_range=255.0) for a, b in zip(maps_a, maps_b)]
    np.testing.assert_allclose(ssim(maps_a, maps_b, data_range=255.0).numpy(), expected,
                               rtol=1e-4, atol=KERNEL_ATOL)


def test_ssim_identity_symmetry_and_constant_maps(rng):
    maps_a = rng.uniform(0, 1, (3, 8, 10)).astype(np.float32)
    maps_b = rng.uniform(0, 1, (3, 8, 10)).astype(np.float32)
    np.testing.assert_allclose(ssim(maps_a, maps_a).numpy(), 1.0, rtol=KERNEL_RTOL)
    np.testing.assert_allclose(ssim(maps_a, maps_b).numpy(), ssim(maps_b, maps_a).numpy(),
                               rtol=KERNEL_RTOL, atol=KERNEL_ATOL)
    assert (ssim(maps_a, maps_b).numpy() < 0.5).all()
    zeros = np.zeros((1, 8, 10), np.float32)
    np.testing.assert_allclose(ssim(zeros, zeros).numpy(), 1.0, rtol=KERNEL_RTOL)


def test_both_measures_give_the_same_numbers_traced(rng):
    maps_a = rng.uniform(0, 1, (5, 7, 9)).astype(np.float32)
    maps_b = _tied_maps(rng, (5, 7, 9))
    for measure in (spearman, ssim):
        eager = measure(maps_a, maps_b).numpy()
        traced = tf.function(measure)(tf.constant(maps_a), tf.constant(maps_b)).numpy()
        np.testing.assert_allclose(traced, eager, rtol=KERNEL_RTOL, atol=KERNEL_ATOL)
