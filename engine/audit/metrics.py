"""Per-image metrics of heatmaps against object masks and regions, and the per-class
numbers built from them.

per image   energy share on the object  s = sum(M * mask) / sum(M)
            its area fraction           a = mean(mask); a map that ignores the object
                                        (a uniform one) puts exactly a on it
            pointing game               the map's peak (argmax) lies on the object
            region shares               sum(M * region) / sum(M) per --regions NAME
            concentration               normalised entropy H = -sum p log p / log(H*W),
                                        p = M / sum(M): 1 = uniform, 0 = one pixel; and
                                        the coverage exp(-sum p log p) / (H*W): the
                                        fraction of the image the evidence effectively
                                        spreads over (1 = flat, 0.3 = a third of it)
            peak position               (row, col) of the argmax as fractions of the side

            A map that is zero everywhere holds no evidence: it has no share, peak or hit.

per class   the lift L = mean(s) / mean(a) (1 = no better than a map blind to the
            object) and the peak spread: the RMS distance of the peaks from their mean,
            as a fraction of the image side (0.41 for peaks spread uniformly; a peak that
            stays put, like a watermark or a sky, shows as a low spread).

Sizes. CAM-family maps are stored at the layer's resolution ("native"): 7x7 for a
224-pixel ResNet50 or MobileNetV2, 3x3 for the 28-pixel Fashion CNN. Concentration and
peak position are measured on the map as stored (h x w in the formulas above, a pixel
being one cell): resizing first would measure the interpolation as much as the model
(a one-cell 7x7 map upsampled to 224x224 has entropy 0.7, not 0) and cost a thousand
times the work. Shares, area and the pointing game compare with masks drawn on the
images, so with masks the map is resized bilinearly (half-pixel centres, as
tf.image.resize) to the images' size first; a region's share needs no resizing, since
resizing is linear (region_weights). Maps stored at the input size (gradients, or
--map-size input) are measured as they are.
"""

import math

import numpy as np


def bilinear_matrix(size_out, size_in):
    """[size_out, size_in] weights of 1-D bilinear resizing with half-pixel centres
    (tf.image.resize(method="bilinear"), no antialiasing)."""
    matrix = np.zeros((size_out, size_in))
    position = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    position = np.clip(position, 0, size_in - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    frac = position - low
    matrix[np.arange(size_out), low] += 1 - frac
    matrix[np.arange(size_out), high] += frac
    return matrix


def resize_maps(maps, size):
    """maps [B,h,w] -> float64 [B,H,W], bilinear (half-pixel centres)."""
    maps = np.asarray(maps, np.float64)
    height, width = size
    if maps.shape[1:] == (height, width):
        return maps
    rows = bilinear_matrix(height, maps.shape[1])
    cols = bilinear_matrix(width, maps.shape[2])
    return np.einsum("Hh,bhw,Ww->bHW", rows, maps, cols, optimize=True)


def image_metrics(maps, masks=None, regions=None):
    """Per-image metrics of maps [B,H,W] (>= 0) against masks bool [B,H,W] (or None)
    and regions {name: bool [H,W]}, all at one size.

    Returns a dict of [B] arrays: total, entropy, coverage, peak_y, peak_x (fractions of
    the side, pixel centres), and with masks share, area, hit (1.0 or 0.0); region/<name>
    per region. A map that is zero everywhere has nothing to attribute: NaN shares,
    entropy, coverage, peak and hit (its area is still the mask's).
    """
    maps = np.maximum(np.asarray(maps, np.float64), 0.0)
    result = concentration(maps)
    if masks is not None:
        result.update(object_metrics(maps, masks))
    for name, region in (regions or {}).items():
        result[f"region/{name}"] = region_shares(maps, region_weights(region, maps.shape[1:]))
    return result


def concentration(maps):
    """Entropy, coverage and peak of maps [B,h,w] (>= 0) at their own size, whole chunks
    at a time: a dict of [B] float64 arrays total, entropy, coverage, peak_y, peak_x (NaN
    but total for a map with no mass).

    The audit computes them at the size the maps are stored at, never resized: for a
    7x7 Grad-CAM of a 224-pixel image that is 49 values per map where the input size
    held 50,176 of them, interpolated from the same 49. They are then about the map the
    model made: entropy 0 is one cell, coverage 1/(h*w) the smallest a map can have, and
    a peak lies on a cell centre."""
    maps = np.maximum(np.asarray(maps, np.float64), 0.0)
    batch, height, width = maps.shape
    flat = maps.reshape(batch, -1)  # [B, h*w]
    total = flat.sum(axis=1)
    empty = ~(total > 0)
    safe = np.where(empty, 1.0, total)
    # -sum p log p with p = M / T is log T - sum(M log M) / T: one log per value, no
    # division per value (a value of 0 adds 0, as p log p -> 0).
    mass_log_mass = (flat * np.log(np.where(flat > 0, flat, 1.0))).sum(axis=1)
    nats = np.maximum(np.log(safe) - mass_log_mass / safe, 0.0)
    # Ties go to the first pixel in row-major order (np.argmax), so a constant non-zero
    # map peaks at the top-left pixel. It keeps that peak rather than none: it does
    # spread evidence (its share is the object's area), and dropping it from the
    # pointing game alone would average hit and share over different images; its
    # coverage of 1 is what marks it as pointing nowhere.
    peak = flat.argmax(axis=1)
    return {
        "total": total,
        "entropy": np.where(empty, np.nan, nats / math.log(height * width)),
        "coverage": np.where(empty, np.nan, np.exp(nats) / (height * width)),
        # An empty map has no peak; argmax would put a fake one in the top-left corner,
        # which looks like a peak that stays put (a shortcut) to the peak spread.
        "peak_y": np.where(empty, np.nan, (peak // width + 0.5) / height),
        "peak_x": np.where(empty, np.nan, (peak % width + 0.5) / width),
    }


def object_metrics(maps, masks):
    """share, area and hit ([B] float64) of maps [B,H,W] (>= 0) against masks bool
    [B,H,W] of the same size: the images' size, where masks are drawn."""
    batch = len(maps)
    flat = np.asarray(maps, np.float64).reshape(batch, -1)  # [B, H*W]
    masks = np.asarray(masks, bool).reshape(batch, -1)
    total = flat.sum(axis=1)
    peak = flat.argmax(axis=1)  # ties: the first pixel, as concentration's peak
    empty = ~(total > 0)
    safe = np.where(empty, 1.0, total)
    return {
        "share": np.where(empty, np.nan, (flat * masks).sum(axis=1) / safe),
        "area": masks.mean(axis=1),
        # 1.0 / 0.0, NaN for an empty map: it neither hits nor misses, as it has no share.
        "hit": np.where(empty, np.nan, masks[np.arange(batch), peak].astype(np.float64)),
    }


def region_weights(region, shape):
    """A region bool [H,W] of the images seen from maps of `shape` (h, w): float64
    (inside [h,w], everywhere [h,w]) such that the region's share of the map resized to
    [H,W] (resize_maps) is sum(M * inside) / sum(M * everywhere) for the map M as stored.

    Resizing is linear, M_up = R M C^T, so sum(M_up * G) = sum(M * R^T G C): the share
    at the images' size, exactly, from the stored map."""
    region = np.asarray(region, np.float64)
    if tuple(region.shape) == tuple(shape):
        return region, np.ones(region.shape)
    rows = bilinear_matrix(region.shape[0], shape[0])  # [H, h]
    cols = bilinear_matrix(region.shape[1], shape[1])  # [W, w]
    return rows.T @ region @ cols, np.outer(rows.sum(axis=0), cols.sum(axis=0))


def region_shares(maps, weights):
    """The region's share of each map [B,h,w] (>= 0), from region_weights; NaN for an
    empty map."""
    inside, everywhere = weights
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)  # [B, h*w]
    within = flat @ inside.reshape(-1)
    spread = flat @ everywhere.reshape(-1)
    empty = ~(spread > 0)
    return np.where(empty, np.nan, within / np.where(empty, 1.0, spread))


def lift(mean_share, mean_area):
    """How many times its fair (area) share of the evidence the object gets."""
    return float(mean_share / mean_area) if mean_area > 0 else float("nan")


def _peaks(peak_y, peak_x):
    """The peaks of the maps that have one (empty maps' are NaN): [n] and [n] float64."""
    peak_y, peak_x = np.asarray(peak_y, np.float64), np.asarray(peak_x, np.float64)
    present = np.isfinite(peak_y) & np.isfinite(peak_x)
    return peak_y[present], peak_x[present]


def peak_spread(peak_y, peak_x):
    """RMS distance of peaks from their mean, in image sides (uniform: 0.408). Peaks of
    empty maps (NaN) are left out; NaN when no peak is left."""
    peak_y, peak_x = _peaks(peak_y, peak_x)
    if peak_y.size == 0:
        return float("nan")
    return float(np.sqrt(peak_y.var() + peak_x.var()))


def peak_mean(peak_y, peak_x):
    """[mean row, mean col] of the peaks of the non-empty maps; NaN when there are none."""
    peak_y, peak_x = _peaks(peak_y, peak_x)
    if peak_y.size == 0:
        return [float("nan"), float("nan")]
    return [float(peak_y.mean()), float(peak_x.mean())]


def _finite(values):
    values = np.asarray(values, np.float64)
    return values[np.isfinite(values)]


def summarize(values):
    """mean and quantiles of the finite values, or None when there are none."""
    values = _finite(values)
    if values.size == 0:
        return None
    q = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"mean": float(values.mean()), "p10": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "p90": float(q[4])}
