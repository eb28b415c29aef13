"""sightline.report.overlay: colormap, overlays, grids, PNG files. (The demo is tested in
test_demo.py.)"""

import os

import numpy as np
import pytest
import tensorflow as tf

from sightline.report.overlay import (INFERNO, clip_percentile, colorize, grid, overlay, to_display_rgb,
                            upscale, write_png)


def luminance(rgb_uint8):
    """Relative luminance (Rec. 709) of sRGB colours [...,3]."""
    c = np.asarray(rgb_uint8, np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


# --- colormap ------------------------------------------------------------------------

def test_colormap_endpoints_are_inferno_black_and_pale_yellow():
    assert INFERNO.shape == (256, 3) and INFERNO.dtype == np.uint8
    np.testing.assert_array_equal(colorize(np.array(0.0)), [0, 0, 4])
    np.testing.assert_array_equal(colorize(np.array(1.0)), [252, 255, 164])


def test_colormap_luminance_rises_monotonically():
    steps = np.diff(luminance(INFERNO))
    assert np.all(steps >= 0)
    assert luminance(INFERNO[-1]) - luminance(INFERNO[0]) > 0.9


def test_colorize_clips_out_of_range_and_nan():
    values = np.array([[-3.0, np.nan], [7.0, 0.5]])
    colours = colorize(values)
    assert colours.shape == (2, 2, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[0, 0], INFERNO[0])
    np.testing.assert_array_equal(colours[0, 1], INFERNO[0])
    np.testing.assert_array_equal(colours[1, 0], INFERNO[-1])
    np.testing.assert_array_equal(colours[1, 1], INFERNO[128])


# --- overlay -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12, 10), (12, 10, 1), (12, 10, 3)])
def test_overlay_shape_and_dtype(rng, shape):
    image = rng.normal(5.0, 30.0, shape)  # any range
    heatmap = rng.uniform(0, 1, (12, 10))
    out = overlay(image, heatmap)
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8


def test_grey_image_becomes_grey_rgb_min_max_scaled(rng):
    image = rng.uniform(-2, 3, (6, 7))
    shown = overlay(image, np.zeros((6, 7)), alpha=0.0)
    np.testing.assert_array_equal(shown[..., 0], shown[..., 1])
    np.testing.assert_array_equal(shown[..., 0], shown[..., 2])
    assert shown.min() == 0 and shown.max() == 255
    expected = np.round((image - image.min()) / (image.max() - image.min()) * 255)
    np.testing.assert_array_equal(shown[..., 0], expected.astype(np.uint8))


def test_overlay_alpha_blends_image_and_colours(rng):
    image = rng.uniform(0, 1, (5, 5, 3))
    heatmap = rng.uniform(0, 1, (5, 5))
    np.testing.assert_array_equal(overlay(image, heatmap, alpha=1.0), colorize(heatmap))
    half = overlay(image, heatmap, alpha=0.5).astype(int)
    mean = (to_display_rgb(image).astype(int) + colorize(heatmap).astype(int)) / 2
    assert np.abs(half - mean).max() <= 1


def test_overlay_resizes_a_smaller_heatmap():
    heatmap = np.zeros((4, 4))
    heatmap[:2, :2] = 1.0  # hot top-left quadrant
    out = overlay(np.zeros((16, 16, 3)), heatmap, alpha=1.0)
    assert out.shape == (16, 16, 3)
    assert luminance(out[2, 2]) > 0.5 > 0.01 > luminance(out[13, 13])


def test_overlay_of_a_constant_image_is_finite():
    out = overlay(np.full((4, 4, 3), 7.0), np.full((4, 4), 0.5), alpha=0.5)
    assert out.dtype == np.uint8


def test_overlay_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((4, 4)), np.zeros((4, 4)), alpha=1.5)
    with pytest.raises(ValueError, match="heatmap"):
        overlay(np.zeros((4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="image"):
        overlay(np.zeros((4, 4, 2)), np.zeros((4, 4)))


def test_clip_percentile_and_upscale():
    heatmap = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    clipped = clip_percentile(heatmap, 50)
    assert clipped.max() == 1.0 and np.mean(clipped == 1.0) == pytest.approx(0.5, abs=0.02)
    assert np.all(clip_percentile(np.zeros((3, 3))) == 0)
    sparse = np.zeros((10, 10), np.float32)
    sparse[0, 0] = 0.2  # the 99th percentile is 0 here: fall back to the maximum
    assert clip_percentile(sparse)[0, 0] == 1.0
    big = upscale(np.arange(6).reshape(2, 3), 2)
    np.testing.assert_array_equal(big, [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2],
                                        [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]])


# --- grid ----------------------------------------------------------------------------

def test_grid_dimensions_and_placement():
    tiles = [[np.full((5, 7, 3), 10 * (3 * r + c), np.uint8) for c in range(3)]
             for r in range(2)]
    out = grid(tiles, pad=2)
    assert out.shape == (2 * 5 + 3 * 2, 3 * 7 + 4 * 2, 3) and out.dtype == np.uint8
    for r in range(2):
        for c in range(3):
            top, left = 2 + r * 7, 2 + c * 9
            assert np.all(out[top:top + 5, left:left + 7] == 10 * (3 * r + c))
    assert np.all(out[:2] == 255) and np.all(out[:, :2] == 255)


def test_grid_without_padding_and_with_a_short_row():
    tile = np.zeros((3, 4, 3), np.uint8)
    assert grid([[tile, tile]], pad=0).shape == (3, 8, 3)
    out = grid([[tile, tile], [tile]], pad=1)
    assert out.shape == (2 * 3 + 3, 2 * 4 + 3, 3)
    assert np.all(out[5:8, 6:10] == 255)  # the missing tile is background


def test_grid_rejects_mismatched_tiles():
    with pytest.raises(ValueError, match="same shape"):
        grid([[np.zeros((3, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)]])
    with pytest.raises(ValueError, match="at least one"):
        grid([[]])


# --- write_png -----------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3, 4])
def test_write_png_round_trip(tmp_path, rng, channels):
    image = rng.integers(0, 256, (9, 13, channels), dtype=np.uint8)
    path = tmp_path / "picture.png"
    assert write_png(path, image) == str(path)
    decoded = tf.io.decode_png(path.read_bytes(), channels=channels).numpy()
    np.testing.assert_array_equal(decoded, image)
    assert os.listdir(tmp_path) == ["picture.png"]  # no .tmp left behind


def test_write_png_overwrites_and_takes_2d(tmp_path, rng):
    path = str(tmp_path / "grey.png")
    write_png(path, np.zeros((4, 4, 3), np.uint8))
    image = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    write_png(path, image)
    decoded = tf.io.decode_png(open(path, "rb").read()).numpy()
    np.testing.assert_array_equal(decoded[..., 0], image)


def test_write_png_refuses_float_images(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    assert not os.listdir(tmp_path)
