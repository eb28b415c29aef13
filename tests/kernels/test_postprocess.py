"""Resizing and scaling of raw maps against float64 NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from sightline.kernels import resize_heatmaps, scale_heatmaps
from tests.references import reference_bilinear
from tests.tolerances import KERNEL_ATOL, KERNEL_RTOL

B, h, w = 5, 5, 6


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                               rtol=KERNEL_RTOL, atol=KERNEL_ATOL)


# --- scale_heatmaps --------------------------------------------------------------------

def reference_scale(maps):
    """One map at a time: scale = largest |value|; scaled = positive part / scale."""
    maps = np.asarray(maps, np.float64)
    scaled = np.zeros_like(maps)
    scales = np.zeros(len(maps))
    for b, m in enumerate(maps):
        scales[b] = max(abs(v) for v in m.ravel())
        if scales[b] > 0:
            scaled[b] = np.where(m > 0, m, 0.0) / scales[b]
    return scaled, scales


def test_scale_non_negative_maps_divides_by_max(rng):
    maps = rng.uniform(0, 3, (B, h, w)).astype(np.float32)
    scaled, scales = scale_heatmaps(maps)
    assert scaled.shape == (B, h, w) and scaled.dtype == tf.float32
    assert scales.shape == (B,) and scales.dtype == tf.float32
    assert_close(scales, maps.max(axis=(1, 2)))
    assert_close(scaled, maps.astype(np.float64) / maps.max(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(scaled.numpy().max(axis=(1, 2)), 1.0, rtol=KERNEL_RTOL)


def test_scale_signed_maps_keeps_positive_part_over_largest_magnitude(rng):
    maps = rng.normal(size=(B, h, w)).astype(np.float32)
    maps[0] -= 5.0  # mostly negative: its largest magnitude is a negative value
    maps[1] = -np.abs(maps[1])  # entirely non-positive
    expected_scaled, expected_scales = reference_scale(maps)
    assert expected_scales[0] > maps[0].max(), "the scale must come from a negative value"
    scaled, scales = scale_heatmaps(maps)
    assert_close(scales, expected_scales)
    assert_close(scaled, expected_scaled)
    np.testing.assert_array_equal(scaled.numpy()[1], 0.0)
    assert scales.numpy()[1] > 0


def test_scale_all_zero_map_gives_zeros_and_scale_zero(rng):
    maps = rng.uniform(0, 1, (3, h, w)).astype(np.float32)
    maps[1] = 0.0
    scaled, scales = scale_heatmaps(maps)
    assert np.isfinite(scaled.numpy()).all()
    np.testing.assert_array_equal(scaled.numpy()[1], 0.0)
    assert scales.numpy()[1] == 0.0
    # The other maps are untouched by their neighbour.
    assert_close(scaled.numpy()[[0, 2]], reference_scale(maps[[0, 2]])[0])


def test_scale_round_trip_relu_of_raw(rng):
    maps = (4.0 * rng.normal(size=(B, h, w))).astype(np.float32)
    scaled, scales = scale_heatmaps(maps)
    s = scaled.numpy().astype(np.float64)
    assert (s >= 0).all() and (s <= 1).all()
    assert_close(s * scales.numpy()[:, None, None], np.maximum(maps, 0.0).astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_scale_other_dtypes_give_float32(rng, dtype):
    maps = rng.normal(size=(B, h, w)).astype(dtype)
    scaled, scales = scale_heatmaps(maps)
    assert scaled.dtype == tf.float32 and scales.dtype == tf.float32
    expected_scaled, expected_scales = reference_scale(maps)
    assert_close(scaled, expected_scaled)
    assert_close(scales, expected_scales)


# --- resize_heatmaps -------------------------------------------------------------------

def test_resize_matches_half_pixel_bilinear_reference(rng):
    maps = rng.normal(size=(2, 3, 3)).astype(np.float32)
    out = resize_heatmaps(maps, (7, 5))
    assert out.shape == (2, 7, 5) and out.dtype == tf.float32
    assert_close(out, reference_bilinear(maps, (7, 5)))


def test_resize_downsampling_matches_reference(rng):
    maps = rng.normal(size=(2, 8, 9)).astype(np.float32)
    assert_close(resize_heatmaps(maps, (3, 4)), reference_bilinear(maps, (3, 4)))


@pytest.mark.parametrize("size", [(16, 12), (5, 6), (2, 3)])
def test_resize_keeps_batch_and_float32(rng, size):
    maps = rng.normal(size=(B, h, w)).astype(np.float16)
    out = resize_heatmaps(maps, size)
    assert out.shape == (B,) + size and out.dtype == tf.float32


def test_resize_constant_maps_stay_constant(rng):
    values = rng.normal(size=B).astype(np.float32)
    maps = np.broadcast_to(values[:, None, None], (B, h, w)).copy()
    out = resize_heatmaps(maps, (11, 13)).numpy()
    assert_close(out, np.broadcast_to(values[:, None, None].astype(np.float64), (B, 11, 13)))


def test_resize_to_own_size_is_identity(rng):
    maps = rng.normal(size=(B, h, w)).astype(np.float32)
    assert_close(resize_heatmaps(maps, (h, w)), maps.astype(np.float64))


def test_resize_stays_within_each_maps_extremes(rng):
    maps = rng.normal(size=(B, h, w)).astype(np.float32)
    maps[0] *= 10.0  # different ranges per map: one map must not bleed into another
    out = resize_heatmaps(maps, (17, 19)).numpy()
    for b in range(B):
        assert out[b].min() >= maps[b].min() - KERNEL_ATOL
        assert out[b].max() <= maps[b].max() + KERNEL_ATOL
