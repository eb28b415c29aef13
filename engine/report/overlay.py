"""Turning heatmaps into pictures: a colormap, overlays, tile grids and PNG files; and
the notebook helpers the package exports, `sightline.overlay` and `sightline.show`.

NumPy, TensorFlow (resizing, PNG encoding) and matplotlib (its colormaps, and `show`'s
figure). The report and the public helpers draw through
the same `overlay`.
"""

import os

import numpy as np
import tensorflow as tf

from sightline.errors import UsageError

LUT_SIZE = 256


def colormap_table(colormap="inferno", size=LUT_SIZE):
    """uint8 [size,3] colours of a colormap: a matplotlib name ("inferno", "jet",
    "viridis", ...), a matplotlib Colormap, or a uint8 table [K,3] itself."""
    if isinstance(colormap, np.ndarray):
        if colormap.ndim != 2 or colormap.shape[1] != 3 or len(colormap) < 2:
            raise UsageError(f"a colour table must be [K,3] with K >= 2; got shape "
                             f"{colormap.shape}")
        return colormap.astype(np.uint8)
    import matplotlib
    if isinstance(colormap, str):
        try:
            colormap = matplotlib.colormaps[colormap]
        except KeyError:
            raise UsageError(f"unknown colormap {colormap!r}; pass a matplotlib colormap name "
                             "such as 'inferno', 'jet' or 'viridis'") from None
    if not callable(colormap):
        raise UsageError(f"colormap must be a matplotlib colormap or its name; got {colormap!r}")
    rgba = np.asarray(colormap(np.linspace(0.0, 1.0, size)), np.float64)  # [size,4]
    return np.round(rgba[:, :3] * 255).clip(0, 255).astype(np.uint8)


# The report's colormap: matplotlib's 'inferno', whose lightness rises monotonically, so
# a brighter colour always means a larger value, also in greyscale print.
INFERNO = colormap_table("inferno")


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
        raise UsageError(f"factor must be a positive integer; got {factor!r}")
    factor = int(factor)
    return np.repeat(np.repeat(np.asarray(image), factor, axis=0), factor, axis=1)


def to_display_rgb(image):
    """An image as uint8 RGB for display.

    image: [H,W], [H,W,1], [H,W,3] or [H,W,4] (alpha dropped). uint8 images are shown
    as they are, float images with every value in [0, 1] as that fraction of 255; any
    other range (preprocessed inputs, 0..255 floats with NaN) is min-max scaled; a
    constant image out of [0, 1] becomes black.
    Returns uint8 [H,W,3].
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise UsageError(f"image must be [H,W], [H,W,1], [H,W,3] or [H,W,4]; got shape "
                         f"{image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        shown = image
    else:
        values = np.nan_to_num(image.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = values.min(), values.max()
        if low < 0.0 or high > 1.0:
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        shown = np.round(values * 255).astype(np.uint8)
    if shown.shape[-1] == 1:
        shown = np.repeat(shown, 3, axis=-1)
    return shown


def overlay(image, heatmap, *, alpha=0.5, colormap="inferno"):
    """A heatmap coloured and blended over its image: uint8 RGB [H,W,3].

    image: [H,W] (grayscale), [H,W,1], [H,W,3] or [H,W,4]; uint8 shown as is, floats in
        [0, 1] as fractions of 255, any other range min-max scaled (see to_display_rgb).
    heatmap: [h,w], values in [0, 1] (explain()'s and the shards' maps are), clipped
        there; upsampled bilinearly (half-pixel centres, as tf.image.resize) to [H,W]
        when its size differs, e.g. a 7x7 CAM over a 224x224 image.
    alpha: weight of the heatmap's colour, in [0, 1].
    colormap: a matplotlib colormap or its name, or a uint8 table [K,3].
    Returns round((1 - alpha) * image + alpha * colour(heatmap)).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) \
            or not 0.0 <= alpha <= 1.0:
        raise UsageError(f"alpha must be a number in [0, 1]; got {alpha!r}")
    heatmap = np.asarray(heatmap, np.float32)
    image_shape = np.shape(image)
    if heatmap.ndim != 2:
        raise UsageError(f"heatmap must be [h,w] for an image [H,W] or [H,W,C]; got heatmap "
                         f"shape {heatmap.shape} and image shape {image_shape}")
    try:
        base = to_display_rgb(image).astype(np.float64)
    except ValueError:
        raise UsageError(f"image must be [H,W], [H,W,1], [H,W,3] or [H,W,4]; got image shape "
                         f"{image_shape} (heatmap shape {heatmap.shape})") from None
    table = colormap_table(colormap)
    height, width = base.shape[:2]
    if heatmap.shape != (height, width):
        heatmap = tf.image.resize(heatmap[..., None], (height, width), method="bilinear")
        heatmap = heatmap.numpy()[..., 0]
    colours = colorize(heatmap, table).astype(np.float64)
    return np.round((1.0 - alpha) * base + alpha * colours).clip(0, 255).astype(np.uint8)


def show(images, heatmaps, *, titles=None, columns=4, colorbar=True, alpha=0.5,
         colormap="inferno"):
    """A grid of overlays for a notebook: a matplotlib Figure (Jupyter draws it; save it
    with figure.savefig).

    images: [N,H,W], [N,H,W,C] or a list of N images (each as `overlay` takes it);
    heatmaps: [N,h,w] or a list of N maps in [0, 1], e.g. explain(...).heatmaps["gradcam"];
    titles: N strings or None; columns: images per row; colorbar: one colour bar for the
    grid, the heatmap's 0..1 scale; alpha, colormap: as `overlay`.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure

    images, heatmaps = list(images), list(heatmaps)
    if not images or len(images) != len(heatmaps):
        raise UsageError(f"show needs as many heatmaps as images, at least one; got "
                         f"{len(images)} image(s) and {len(heatmaps)} heatmap(s)")
    if titles is not None:
        titles = list(titles)
        if len(titles) != len(images):
            raise UsageError(f"titles must give one title per image; got {len(titles)} for "
                             f"{len(images)} image(s)")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise UsageError(f"columns must be an integer >= 1; got {columns!r}")
    table = colormap_table(colormap)
    tiles = [overlay(image, heatmap, alpha=alpha, colormap=table)
             for image, heatmap in zip(images, heatmaps)]
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    figure = Figure(figsize=(2.6 * columns + (0.6 if colorbar else 0.0), 2.6 * rows),
                    layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for position, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if position < len(tiles):
            axis.imshow(tiles[position], interpolation="nearest")
            if titles is not None:
                axis.set_title(str(titles[position]), fontsize=9)
    if colorbar:
        mappable = ScalarMappable(Normalize(0.0, 1.0), ListedColormap(table / 255.0))
        figure.colorbar(mappable, ax=axes, shrink=0.8, label="heatmap (scaled to [0, 1])")
    return figure


def grid(tiles, pad=2, fill=255):
    """Lay tiles out in rows and columns with `pad` pixels of `fill` around each.

    tiles: list of rows, each a list of uint8 [H,W,3] images, all of the same shape.
        Short rows are filled with the background colour.
    Returns uint8 [R*H + (R+1)*pad, C*W + (C+1)*pad, 3], C the longest row's length.
    """
    if pad < 0:
        raise UsageError(f"pad must be >= 0; got {pad}")
    rows = [list(row) for row in tiles]
    if not rows or not any(rows):
        raise UsageError("grid needs at least one tile")
    shapes = {np.shape(tile) for row in rows for tile in row}
    if len(shapes) != 1:
        raise UsageError(f"all tiles must have the same shape; got {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) != 3 or shape[-1] != 3:
        raise UsageError(f"tiles must be [H,W,3]; got shape {shape}")
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
        raise UsageError(f"write_png takes uint8 images; got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise UsageError(f"image must be [H,W], [H,W,1], [H,W,3] or [H,W,4]; got {image.shape}")
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
