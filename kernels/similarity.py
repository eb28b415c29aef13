"""How alike two maps are, pair by pair: the sanity checks' measures.

Both functions compare `maps_a[B,h,w]` with `maps_b[B,h,w]` map by map and return one
value per pair, `[B]`, in float32.
"""

import tensorflow as tf

# Wang et al. 2004: a Gaussian window of standard deviation 1.5 over 11x11 pixels,
# K1 = 0.01 and K2 = 0.03 of the data range.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def spearman(maps_a, maps_b):
    """Spearman rank correlation of the absolute values of each pair of maps.

    maps_a[B,h,w], maps_b[B,h,w] -> [B] in [-1, 1]: the Pearson correlation of the ranks
    of |map| over the h*w positions, tied values sharing their average rank (as
    scipy.stats.spearmanr ranks them). NaN where either map is constant, where the
    correlation is undefined (scipy says NaN there too).
    """
    ranks_a = _average_ranks(maps_a)
    ranks_b = _average_ranks(maps_b)
    # Average ranks always have the mean (n + 1) / 2; centred, they stay below n / 2 in
    # magnitude, so float32 sums of their products lose little.
    size = tf.cast(tf.shape(ranks_a)[1], tf.float32)
    centred_a = ranks_a - (size + 1.0) / 2.0  # [B,n]
    centred_b = ranks_b - (size + 1.0) / 2.0  # [B,n]
    covariance = tf.reduce_sum(centred_a * centred_b, axis=1)  # [B]
    spread = tf.sqrt(tf.reduce_sum(tf.square(centred_a), axis=1)
                     * tf.reduce_sum(tf.square(centred_b), axis=1))  # [B]
    undefined = tf.fill(tf.shape(covariance), float("nan"))
    return tf.where(spread > 0, covariance / tf.where(spread > 0, spread, 1.0), undefined)


def _average_ranks(maps):
    """maps[B,h,w] -> ranks[B,h*w] of |map|, 1-based, ties at their average rank."""
    values = tf.reshape(tf.abs(tf.cast(maps, tf.float32)), [tf.shape(maps)[0], -1])  # [B,n]
    ordered = tf.sort(values, axis=1)  # [B,n]
    # A value's tied run in the sorted row spans positions [below, up_to): its ranks
    # are below + 1 ... up_to, whose average is (below + up_to + 1) / 2.
    below = tf.searchsorted(ordered, values, side="left")  # [B,n]
    up_to = tf.searchsorted(ordered, values, side="right")  # [B,n]
    return tf.cast(below + up_to + 1, tf.float32) / 2.0


def ssim_window(height, width):
    """(side, sigma) of the SSIM window for maps of height x width.

    The standard 11x11 window of sigma 1.5 where it fits; on smaller maps (a 7x7 or 4x4
    CAM grid) the largest odd side that fits, with sigma shrunk in proportion
    (1.5 * side / 11) so the window keeps the same shape relative to its size. A map
    of one or two cells in either direction gets a window of one cell: SSIM then
    compares the maps cell by cell (luminance alone, as every local variance is 0).
    """
    side = min(SSIM_WINDOW, int(height), int(width))
    side -= 1 - side % 2  # the largest odd number <= side
    return side, SSIM_SIGMA * side / SSIM_WINDOW


def gaussian_window(side, sigma):
    """window[side, side] float32, a Gaussian of standard deviation `sigma` on the cell
    grid centred in the window, summing to 1."""
    offsets = tf.range(side, dtype=tf.float32) - (side - 1) / 2.0  # [side]
    profile = tf.exp(-tf.square(offsets) / (2.0 * sigma * sigma))  # [side]
    window = profile[:, None] * profile[None, :]  # [side,side]
    return window / tf.reduce_sum(window)


def ssim(maps_a, maps_b, data_range=1.0):
    """Structural similarity (Wang et al. 2004) of each pair of maps.

    maps_a[B,h,w], maps_b[B,h,w] (h and w known when traced) -> [B]: the mean over
    every position where the window (`ssim_window`) fits inside the map of
        ((2 mu_a mu_b + C1) (2 cov_ab + C2)) / ((mu_a^2 + mu_b^2 + C1) (var_a + var_b + C2))
    with Gaussian-weighted local means, variances and covariance (no sample-size
    correction), C1 = (0.01 L)^2 and C2 = (0.03 L)^2 for data range L: 1 for maps
    scaled to [0, 1]. 1 for identical maps, also constant ones.
    """
    maps_a = tf.cast(maps_a, tf.float32)
    maps_b = tf.cast(maps_b, tf.float32)
    height, width = maps_a.shape[1], maps_a.shape[2]
    if height is None or width is None:
        raise ValueError(f"ssim needs maps of known height and width; got shape {maps_a.shape}")
    side, sigma = ssim_window(height, width)
    window = gaussian_window(side, sigma)[:, :, None, None]  # [side,side,1,1]

    def local_mean(values):  # [B,h,w] -> [B,h-side+1,w-side+1]
        return tf.nn.conv2d(values[..., None], window, strides=1, padding="VALID")[..., 0]

    mean_a, mean_b = local_mean(maps_a), local_mean(maps_b)
    variance_a = local_mean(tf.square(maps_a)) - tf.square(mean_a)
    variance_b = local_mean(tf.square(maps_b)) - tf.square(mean_b)
    covariance = local_mean(maps_a * maps_b) - mean_a * mean_b
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    index = ((2.0 * mean_a * mean_b + c1) * (2.0 * covariance + c2)
             / ((tf.square(mean_a) + tf.square(mean_b) + c1) * (variance_a + variance_b + c2)))
    return tf.reduce_mean(index, axis=(1, 2))
