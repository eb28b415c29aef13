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


# --- the public helpers: sightline.overlay and sightline.show -------------------------

def reference_bilinear(heatmap, size):
    """float64 [H,W]: bilinear upsampling with half-pixel centres, one pixel at a time,
    coordinates clamped at the borders (the definition tf.image.resize follows)."""
    h, w = heatmap.shape
    height, width = size
    out = np.zeros(size)
    for i in range(height):
        y = min(max((i + 0.5) * h / height - 0.5, 0.0), h - 1.0)
        y0 = int(np.floor(y))
        y1, wy = min(y0 + 1, h - 1), y - np.floor(y)
        for j in range(width):
            x = min(max((j + 0.5) * w / width - 0.5, 0.0), w - 1.0)
            x0 = int(np.floor(x))
            x1, wx = min(x0 + 1, w - 1), x - np.floor(x)
            top = (1 - wx) * heatmap[y0, x0] + wx * heatmap[y0, x1]
            bottom = (1 - wx) * heatmap[y1, x0] + wx * heatmap[y1, x1]
            out[i, j] = (1 - wy) * top + wy * bottom
    return out


def reference_overlay(image_rgb_0_255, heatmap, alpha, colormap):
    """(1 - alpha) * image + alpha * matplotlib's own colour of the upsampled map."""
    import matplotlib
    values = np.clip(reference_bilinear(np.asarray(heatmap, np.float64),
                                        image_rgb_0_255.shape[:2]), 0, 1)
    colours = matplotlib.colormaps[colormap](values)[..., :3] * 255
    return (1 - alpha) * image_rgb_0_255 + alpha * colours


@pytest.mark.parametrize("kind", ["float_rgb", "uint8_gray", "float_gray_channel"])
def test_public_overlay_matches_an_upsample_colormap_blend_reference(rng, kind):
    import sightline
    heatmap = rng.uniform(0, 1, (3, 4))
    if kind == "float_rgb":  # floats in [0, 1] are fractions of 255, not rescaled
        image = rng.uniform(0.1, 0.7, (12, 16, 3))
        shown = image * 255
    elif kind == "uint8_gray":  # uint8 shown as is, grey to RGB
        image = rng.integers(20, 200, (12, 16)).astype(np.uint8)
        shown = np.repeat(image[..., None].astype(np.float64), 3, axis=-1)
    else:
        image = rng.uniform(0.0, 1.0, (12, 16, 1)).astype(np.float32)
        shown = np.repeat(image.astype(np.float64) * 255, 3, axis=-1)
    out = sightline.overlay(image, heatmap, alpha=0.4, colormap="viridis")
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    expected = reference_overlay(shown, heatmap, 0.4, "viridis")
    # The colour table has 256 entries, matplotlib's continuous lookup its own 256:
    # neighbouring entries of viridis differ by at most 2 levels.
    difference = np.abs(out.astype(np.float64) - expected)
    assert difference.max() <= 2.0 and difference.mean() < 0.75


def test_public_overlay_names_both_shapes_when_they_do_not_fit():
    import sightline
    with pytest.raises(ValueError, match=r"\(12, 16, 2\).*\(3, 4\)"):
        sightline.overlay(np.zeros((12, 16, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\(1, 3, 4\).*\(12, 16\)"):
        sightline.overlay(np.zeros((12, 16)), np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="colormap"):
        sightline.overlay(np.zeros((12, 16)), np.zeros((3, 4)), colormap="no-such-map")


def test_show_draws_a_grid_of_the_overlays_with_titles_and_a_colour_bar(rng):
    import sightline
    images = rng.uniform(0, 1, (5, 12, 16, 3))
    heatmaps = rng.uniform(0, 1, (5, 3, 4))
    titles = [f"image {i}" for i in range(5)]
    figure = sightline.show(images, heatmaps, titles=titles, columns=2, colormap="viridis",
                            alpha=0.3)
    drawn = [axis for axis in figure.axes if axis.images]
    assert len(drawn) == 5  # 3 rows of 2, the sixth cell empty
    for i, axis in enumerate(drawn):
        np.testing.assert_array_equal(
            np.asarray(axis.images[0].get_array()),
            sightline.overlay(images[i], heatmaps[i], alpha=0.3, colormap="viridis"))
        assert axis.get_title() == titles[i]
    bars = [axis for axis in figure.axes if "heatmap" in axis.get_ylabel()]
    assert len(bars) == 1 and bars[0].get_ylim() == (0.0, 1.0)
    assert not any("heatmap" in axis.get_ylabel()
                   for axis in sightline.show(images[:1], heatmaps[:1], colorbar=False).axes)
    with pytest.raises(ValueError, match="2 image.*3 heatmap"):
        sightline.show(images[:2], heatmaps[:3])
