"""Turning heatmaps into pictures: a colormap, overlays, tile grids and PNG files.

Pure NumPy + TensorFlow (for resizing and PNG encoding); no plotting library needed.
"""

import os

import numpy as np
import tensorflow as tf

# Matplotlib's 'inferno' sampled at 0, 0.1, ..., 1. Its lightness rises monotonically,
# so a brighter colour always means a larger value, also in greyscale print.
_INFERNO_ANCHORS = np.array([
    [0, 0, 4], [22, 11, 57], [66, 10, 104], [106, 23, 110], [147, 38, 103],
    [188, 55, 84], [221, 81, 58], [243, 120, 25], [252, 165, 10], [246, 215, 70],
    [252, 255, 164],
], np.float64)

LUT_SIZE = 256


def _build_lut(anchors, size=LUT_SIZE):
    """uint8 [size,3]: linear interpolation between evenly spaced anchor colours."""
    positions = np.linspace(0.0, 1.0, len(anchors))
    samples = np.linspace(0.0, 1.0, size)
    channels = [np.interp(samples, positions, anchors[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).clip(0, 255).astype(np.uint8)


INFERNO = _build_lut(_INFERNO_ANCHORS)


def colorize(heatmap, lut=INFERNO):
    """Map values in [0, 1] to colours.

    heatmap: float array of any shape [...], clipped to [0, 1]; NaN counts as 0.
    lut: uint8 [K,3] lookup table, K >= 2 (default: INFERNO, 256 entries).
    Returns uint8 [..., 3].
    """
    heatmap = np.nan_to_num(np.asarray(heatmap, np.float64), nan=0.0)
    lut = np.asarray(lut, np.uint8)
    index = np.round(np.clip(heatmap, 0.0, 1.0) * (len(lut) - 1)).astype(np.intp)
    return lut[index]


def clip_percentile(heatmap, percentile=99.0):
    """Rescale a map so its `percentile`-th value becomes 1, clipping above.

    Pixel-level maps (saliency, SmoothGrad, Integrated Gradients) put their maximum on a
    handful of pixels, so scaled by the maximum alone they look almost black; clipping
    the top 1% is the usual way to show them (as in the SmoothGrad paper).
    heatmap: [H,W] >= 0. Returns float32 [H,W] in [0, 1]; an all-zero map stays zero.
    """
    heatmap = np.nan_to_num(np.asarray(heatmap, np.float32), nan=0.0)
    top = np.percentile(heatmap, percentile)
    if top <= 0:
        top = heatmap.max()
    if top <= 0:
        return np.zeros_like(heatmap)
    return np.clip(heatmap / top, 0.0, 1.0)


def upscale(image, factor):
    """Nearest-neighbour enlargement: [H,W,...] -> [H*factor, W*factor, ...]."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer; got {factor!r}")
    factor = int(factor)
    return np.repeat(np.repeat(np.asarray(image), factor, axis=0), factor, axis=1)


def to_display_rgb(image):
    """Min-max scale an image to uint8 RGB for display.

    image: [H,W], [H,W,1] or [H,W,3], any numeric range. A constant image becomes black.
    Returns uint8 [H,W,3].
    """
    image = np.asarray(image, np.float64)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image must be [H,W], [H,W,1] or [H,W,3]; got shape {image.shape}")
    image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = image.min(), image.max()
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    if scaled.shape[-1] == 1:
        scaled = np.repeat(scaled, 3, axis=-1)
    return np.round(scaled * 255).astype(np.uint8)


def overlay(image, heatmap, alpha=0.5, lut=INFERNO):
    """Blend a colorized heatmap over an image.

    image: [H,W], [H,W,1] or [H,W,3], any range (min-max scaled for display).
    heatmap: [h,w] in [0, 1]; resized bilinearly to [H,W] when its size differs
        (e.g. CAM maps at the layer's native resolution).
    alpha: weight of the heatmap colour, in [0, 1].
    Returns uint8 [H,W,3] = (1 - alpha) * image + alpha * colour(heatmap).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    base = to_display_rgb(image).astype(np.float64)
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be [H,W]; got shape {heatmap.shape}")
    height, width = base.shape[:2]
    if heatmap.shape != (height, width):
        heatmap = tf.image.resize(heatmap[..., None], (height, width), method="bilinear")
        heatmap = heatmap.numpy()[..., 0]
    colours = colorize(heatmap, lut).astype(np.float64)
    return np.round((1.0 - alpha) * base + alpha * colours).clip(0, 255).astype(np.uint8)


def grid(tiles, pad=2, fill=255):
    """Lay tiles out in rows and columns with `pad` pixels of `fill` around each.

    tiles: list of rows, each a list of uint8 [H,W,3] images, all of the same shape.
        Short rows are filled with the background colour.
    Returns uint8 [R*H + (R+1)*pad, C*W + (C+1)*pad, 3], C the longest row's length.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0; got {pad}")
    rows = [list(row) for row in tiles]
    if not rows or not any(rows):
        raise ValueError("grid needs at least one tile")
    shapes = {np.shape(tile) for row in rows for tile in row}
    if len(shapes) != 1:
        raise ValueError(f"all tiles must have the same shape; got {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"tiles must be [H,W,3]; got shape {shape}")
    height, width = shape[:2]
    num_cols = max(len(row) for row in rows)
    out = np.full((len(rows) * height + (len(rows) + 1) * pad,
                   num_cols * width + (num_cols + 1) * pad, 3), fill, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            top = pad + r * (height + pad)
            left = pad + c * (width + pad)
            out[top:top + height, left:left + width] = np.asarray(tile, np.uint8)
    return out


def write_png(path, image):
    """Write a uint8 image [H,W], [H,W,1], [H,W,3] or [H,W,4] as a PNG, atomically.

    The bytes go to `path + '.tmp'` first and are then renamed over `path`, so a reader
    never sees a half-written file. Returns the path.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"write_png takes uint8 images; got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be [H,W], [H,W,1], [H,W,3] or [H,W,4]; got {image.shape}")
    data = tf.io.encode_png(image).numpy()
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
