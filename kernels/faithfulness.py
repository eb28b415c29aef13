"""Faithfulness math: how much a model's score moves when the cells a map ranks highest
are hidden or shown. Pure, batch-first TensorFlow functions; the engine compiles them
around the model (sightline.evaluate).

Vocabulary. A map is ranked on a grid of cells `[B,gh,gw]` (CAM-family maps on their own
grid, input-sized maps averaged by area onto it: `cell_maps`). Rank 0 is the most
relevant cell. A step removes the `counts[s] = round(s * n / S)` cells of lowest rank
(MoRF), of highest rank (LeRF), or shows them on a blurred start (insertion). Every cell
covers the pixels whose floor(y * gh / H), floor(x * gw / W) it is, so a pixel's rank is
its cell's and a step's mask is a comparison: no Python loop over images or steps.
"""

import math

import tensorflow as tf

# Curve kinds, in the order the engine stacks them.
MORF, LERF, INSERTION = 0, 1, 2
CURVES = ("morf", "lerf", "insertion")
# ROAD's neighbour weights (Rong et al. 2022): the four direct neighbours weigh 1/6, the
# four diagonal ones 1/12.
DIRECT_WEIGHT, DIAGONAL_WEIGHT = 1.0 / 6.0, 1.0 / 12.0
COARSE_KNOWN = 0.5


def cell_maps(heatmaps, grid):
    """heatmaps[B,h,w] -> cells[B,gh,gw]: the map itself when it is already on the grid,
    else its area average (every cell the mean of the pixels it covers; TensorFlow's
    area resize, exact for whole ratios and pixel-fraction weighted otherwise)."""
    heatmaps = tf.cast(heatmaps, tf.float32)
    if tuple(heatmaps.shape[1:3]) == tuple(grid):
        return heatmaps
    return tf.image.resize(heatmaps[..., None], grid, method="area")[..., 0]


def cell_ranks(cells, jitter):
    """cells[B,gh,gw], jitter[B,gh,gw] (any distinct values) -> (ranks int32 [B,n],
    tie_fraction float32 [B]), n = gh*gw.

    ranks[b, cell] = the cell's position when the cells are sorted by value, largest
    first; equal values are ordered by their jitter (smallest first), so a tie never
    falls to the memory order. tie_fraction = the share of cells whose value another
    cell of the same map shares.
    """
    batch = tf.shape(cells)[0]
    values = tf.reshape(tf.cast(cells, tf.float32), [batch, -1])  # [B,n]
    jitter = tf.reshape(tf.cast(jitter, tf.float32), [batch, -1])  # [B,n]
    by_jitter = tf.argsort(jitter, axis=1, stable=True)  # [B,n]
    # Ascending in -value, stable: the jitter order survives among equal values.
    order = tf.gather(by_jitter, tf.argsort(-tf.gather(values, by_jitter, batch_dims=1),
                                            axis=1, stable=True), batch_dims=1)  # [B,n]
    count = tf.shape(values)[1]
    positions = tf.broadcast_to(tf.range(count)[None], tf.shape(order))  # [B,n]
    ranks = tf.scatter_nd(
        tf.stack([tf.broadcast_to(tf.range(batch)[:, None], tf.shape(order)), order], axis=-1),
        positions, tf.shape(order))  # [B,n]
    ordered = tf.sort(values, axis=1)  # [B,n]
    equal = tf.cast(tf.equal(ordered[:, 1:], ordered[:, :-1]), tf.float32)  # [B,n-1]
    padded = tf.pad(equal, [[0, 0], [1, 1]])  # [B,n+1]
    tied = tf.maximum(padded[:, 1:], padded[:, :-1])  # [B,n]: equal to a neighbour in order
    return ranks, tf.reduce_mean(tied, axis=1)


def pixel_ranks(ranks, grid, image_size):
    """ranks[B,gh*gw] -> [B,H,W]: every pixel carries the rank of the cell covering it."""
    gh, gw = (int(v) for v in grid)
    height, width = (int(v) for v in image_size)
    rows = (tf.range(height) * gh) // height  # [H]
    cols = (tf.range(width) * gw) // width  # [W]
    cell = rows[:, None] * gw + cols[None, :]  # [H,W]
    return tf.gather(ranks, cell, axis=1)  # [B,H,W]


def step_counts(num_cells, steps):
    """int32 [S+1]: cells hidden (or shown) at each step, 0 .. num_cells."""
    return tf.cast(tf.round(tf.range(steps + 1, dtype=tf.float64) * num_cells / steps), tf.int32)


def hidden_masks(pixel_rank, kinds, counts, num_cells):
    """pixel_rank[B,H,W], kinds int32 [R] (MORF, LERF, INSERTION), counts int32 [R] ->
    hidden float32 [B,R,H,W]: 1 where a row's image shows the fill instead of the image.

    MoRF hides the `count` most relevant cells, LeRF the `count` least relevant ones;
    insertion has shown the `count` most relevant cells, so it hides the rest."""
    rank = pixel_rank[:, None]  # [B,1,H,W]
    kinds = kinds[None, :, None, None]  # [1,R,1,1]
    counts = counts[None, :, None, None]  # [1,R,1,1]
    ordered = tf.where(tf.equal(kinds, LERF), num_cells - 1 - rank, rank)  # [B,R,H,W]
    hidden = tf.where(tf.equal(kinds, INSERTION), ordered >= counts, ordered < counts)
    return tf.cast(hidden, tf.float32)


def mean_fill(images):
    """images[B,H,W,C] -> [B,1,1,C]: each image's mean colour."""
    return tf.reduce_mean(tf.cast(images, tf.float32), axis=(1, 2), keepdims=True)


def blur_sigma(image_size):
    """The Gaussian's sigma in pixels: a sixteenth of the longer side (14 px at 224,
    2 px at 32): blur that removes a cell's detail at any size."""
    return max(image_size) / 16.0


def gaussian_blur(images, sigma):
    """images[B,H,W,C] -> [B,H,W,C] blurred by a separable Gaussian (radius ceil(3 sigma),
    at most the side minus one; borders mirrored)."""
    images = tf.cast(images, tf.float32)
    height, width, channels = (int(v) for v in images.shape[1:])
    for axis, side in ((1, height), (2, width)):
        radius = max(0, min(int(math.ceil(3 * sigma)), side - 1))
        if radius == 0:
            continue
        taps = tf.exp(-tf.square(tf.range(-radius, radius + 1, dtype=tf.float32))
                      / (2.0 * sigma * sigma))
        taps = taps / tf.reduce_sum(taps)  # [2r+1]
        padding = [[0, 0], [0, 0], [0, 0], [0, 0]]
        padding[axis] = [radius, radius]
        padded = tf.pad(images, padding, mode="SYMMETRIC")
        shape = [2 * radius + 1, 1] if axis == 1 else [1, 2 * radius + 1]
        kernel = tf.tile(tf.reshape(taps, [*shape, 1, 1]), [1, 1, channels, 1])  # [kh,kw,C,1]
        images = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")
    return images


def _shift(values, axis, step):
    """values[N,h,w,C] moved one place along `axis` (1 rows, 2 columns): step +1 gives
    out[i] = values[i - 1], step -1 gives out[i] = values[i + 1]; zeros come in."""
    padding = [[0, 0], [0, 0], [0, 0], [0, 0]]
    padding[axis] = [1, 0] if step > 0 else [0, 1]
    padded = tf.pad(values, padding)
    size = int(values.shape[axis])
    return padded[:, :size] if axis == 1 and step > 0 else padded[:, 1:] if axis == 1 \
        else padded[:, :, :size] if step > 0 else padded[:, :, 1:]


def _parity_neighbour_sums(parts):
    """The ROAD-weighted neighbour sums of each parity class of an image split into its
    four classes parts = (even row even column, even-odd, odd-even, odd-odd), each
    [N,h,w,C]: a pixel's direct neighbours lie in the two classes that differ from it in
    one parity, its diagonal ones in the class that differs in both. Returned as four
    functions of the current parts, so a Gauss-Seidel sweep reads each class's newest
    values."""

    def pair(x, axis, step):
        return x + _shift(x, axis, step)

    def for_class(row_step, col_step, row_partner, col_partner, diagonal):
        # row_partner: the class one row away (same column parity), col_partner: one
        # column away; row_step/col_step: which side the second neighbour lies on.
        def sums(parts):
            direct = pair(parts[col_partner], 2, col_step) + pair(parts[row_partner], 1, row_step)
            diagonal_sum = pair(pair(parts[diagonal], 2, col_step), 1, row_step)
            return DIRECT_WEIGHT * direct + DIAGONAL_WEIGHT * diagonal_sum
        return sums

    # class: (row step, column step, class a row away, class a column away, diagonal class)
    return (for_class(+1, +1, 2, 1, 3), for_class(+1, -1, 3, 0, 2),
            for_class(-1, +1, 0, 3, 1), for_class(-1, -1, 1, 2, 0))


def _split_parities(values):
    """values[N,2h,2w,C] -> its four parity classes, each [N,h,w,C]."""
    return (values[:, 0::2, 0::2], values[:, 0::2, 1::2], values[:, 1::2, 0::2],
            values[:, 1::2, 1::2])


def _merge_parities(parts):
    """The inverse of _split_parities."""
    even_row = tf.stack([parts[0], parts[1]], axis=3)  # [N,h,w,2,C]
    odd_row = tf.stack([parts[2], parts[3]], axis=3)
    half_height, half_width, channels = (int(v) for v in parts[0].shape[1:])
    merged = tf.stack([even_row, odd_row], axis=2)  # [N,h,2,w,2,C]
    return tf.reshape(merged, [-1, 2 * half_height, 2 * half_width, channels])


def _solve_level(values, hidden, iterations):
    """Successive over-relaxation of the imputation system on one level: values[N,H,W,C]
    hold the known pixels and a first guess elsewhere; hidden[N,H,W,1] in {0,1}.

    The 8-neighbour stencil couples only pixels whose row or column parity differs, so
    the four parity classes are updated one after another, each all at once: a
    Gauss-Seidel sweep in a fixed order, vectorised. Each class is kept as its own
    quarter-size image, so an update computes its stencil on a quarter of the pixels
    (from shifted slices, not a convolution). An odd side is padded with pixels that
    are neither hidden nor counted as neighbours. omega is the optimum for the model
    problem on the longer side (2 / (1 + sin(pi / n)))."""
    height, width = (int(v) for v in values.shape[1:3])
    pad = [[0, 0], [0, height % 2], [0, width % 2], [0, 0]]
    values = tf.pad(values, pad)
    hidden_parts = _split_parities(tf.pad(hidden, pad))
    exists = _split_parities(tf.pad(tf.ones([1, height, width, 1], tf.float32), pad))
    sums = _parity_neighbour_sums(exists)
    inverse_totals = [tf.math.divide_no_nan(1.0, sum_of(exists)) for sum_of in sums]
    side = max(height, width, 2)
    omega = 2.0 / (1.0 + math.sin(math.pi / side))
    relax = [omega * part for part in hidden_parts]

    def sweep(parts):
        parts = list(parts)
        for k in range(4):
            parts[k] = parts[k] + relax[k] * (sums[k](parts) * inverse_totals[k] - parts[k])
        return tuple(parts)

    parts = tf.while_loop(lambda i, p: i < iterations, lambda i, p: (i + 1, sweep(p)),
                          (0, _split_parities(values)))[1]
    return _merge_parities(parts)[:, :height, :width]


def _halve(values):
    """values[N,H,W,C] -> [N,ceil(H/2),ceil(W/2),C]: the mean of each 2x2 block, an odd
    side padded with zeros (a reshape and a sum, which XLA compiles, unlike an area
    resize)."""
    height, width, channels = (int(v) for v in values.shape[1:])
    padded = tf.pad(values, [[0, 0], [0, height % 2], [0, width % 2], [0, 0]])
    half_height, half_width = (height + 1) // 2, (width + 1) // 2
    blocks = tf.reshape(padded, [-1, half_height, 2, half_width, 2, channels])  # [N,h,2,w,2,C]
    return tf.reduce_mean(blocks, axis=(2, 4))


def road_impute(images, hidden, iterations=16, coarsest=4):
    """ROAD's linear imputation (Rong et al. 2022), without its noise.

    images[N,H,W,C], hidden[N,H,W] (1 = to impute) -> [N,H,W,C]: known pixels as they
    were; every hidden pixel the weighted mean of its in-image 8 neighbours (direct 1/6,
    diagonal 1/12), the sparse linear system ROAD solves, here by `iterations`
    over-relaxed Gauss-Seidel sweeps (four 3x3 stencils each) on a cascade of grids:
    the problem is first solved on a grid half as fine (known values averaged by area),
    which gives the smooth part of the answer, and its solution, upsampled, starts the
    iterations on this one. An
    image with no known pixel becomes its mean colour (the system has no solution
    there); at 16 sweeps per level the answer is within 0.01 of the exact one on 32 px
    images (0.0003 at 16 px) where it is defined.
    """
    images = tf.cast(images, tf.float32)
    hidden = tf.cast(hidden, tf.float32)[..., None]  # [N,H,W,1]
    known = 1.0 - hidden
    height, width = (int(v) for v in images.shape[1:3])
    known_count = tf.reduce_sum(known, axis=(1, 2), keepdims=True)  # [N,1,1,1]
    mean = tf.where(known_count > 0,
                    tf.math.divide_no_nan(tf.reduce_sum(images * known, axis=(1, 2),
                                                        keepdims=True), known_count),
                    tf.reduce_mean(images, axis=(1, 2), keepdims=True))  # [N,1,1,C]
    if min(height, width) > coarsest:
        weight = _halve(known)  # [N,h,w,1]
        coarse_values = tf.math.divide_no_nan(_halve(images * known), weight)
        # A coarse pixel is known when at least half of what it covers is (the mean of
        # those); counting any known pixel gave a worse start on 16-64 px images.
        coarse_hidden = tf.cast(weight < COARSE_KNOWN, tf.float32)[..., 0]
        coarse_values = coarse_values * (1.0 - coarse_hidden[..., None]) \
            + mean * coarse_hidden[..., None]
        coarse = road_impute(coarse_values, coarse_hidden, iterations, coarsest)
        guess = tf.image.resize(coarse, (height, width), method="bilinear")
    else:
        guess = tf.broadcast_to(mean, tf.shape(images))
    values = images * known + guess * hidden
    return _solve_level(values, hidden, iterations)


def road_noise(shape, seeds, scale):
    """Gaussian noise [N,H,W,C] of std `scale` [N] per row, a function of seeds int32
    [N,2] only (stateless), for ROAD's noisy imputation."""
    noise = tf.map_fn(lambda seed: tf.random.stateless_normal(shape[1:], seed),
                      seeds, fn_output_signature=tf.float32)
    return noise * scale[:, None, None, None]


def trapezoid_auc(fractions, scores):
    """fractions[...,P] (ascending from 0 to 1), scores[...,P] -> [...]: the area under
    the score curve over the fraction actually hidden (or shown), by the trapezoid rule."""
    widths = fractions[..., 1:] - fractions[..., :-1]
    return tf.reduce_sum(widths * (scores[..., 1:] + scores[..., :-1]) / 2.0, axis=-1)


def one_pass_images(images, pixel_map, black):
    """The images multiplied by their min-max scaled maps in pixel space (Chattopadhyay
    et al. 2018), back in the model's input space.

    images[B,H,W,C], pixel_map[B,H,W] in [0,1], black[C] (the model input of a black
    pixel: the preprocessing of 0) -> [B,H,W,C]. For the affine preprocessings
    x = a * pixel + black, a * (pixel * m) + black = x * m + black * (1 - m)."""
    weight = tf.cast(pixel_map, tf.float32)[..., None]  # [B,H,W,1]
    return tf.cast(images, tf.float32) * weight + black * (1.0 - weight)


def min_max_scale(maps):
    """maps[B,h,w] -> (maps - min) / (max - min) per map; 0 for a constant map."""
    maps = tf.cast(maps, tf.float32)
    low = tf.reduce_min(maps, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(maps - low, high - low)


def one_pass_scores(original, masked):
    """original[B], masked[B] (probabilities of the explained class) -> (drop[B],
    increase[B], gain[B]): max(0, Y - O) / Y, 1 where O > Y, max(0, O - Y) / (1 - Y).
    Averaged (and times 100) they are Average Drop, Increase in Confidence and Average
    Gain."""
    drop = tf.math.divide_no_nan(tf.nn.relu(original - masked), original)
    increase = tf.cast(masked > original, tf.float32)
    gain = tf.math.divide_no_nan(tf.nn.relu(masked - original), 1.0 - original)
    return drop, increase, gain


def edge_maps(images, grid):
    """The edge control: images[B,H,W,C] -> cells[B,gh,gw], the Sobel gradient magnitude
    (summed over channels) averaged by area onto the grid."""
    edges = tf.image.sobel_edges(tf.cast(images, tf.float32))  # [B,H,W,C,2]
    magnitude = tf.reduce_sum(tf.sqrt(tf.reduce_sum(tf.square(edges), axis=-1)), axis=-1)
    return cell_maps(magnitude, grid)


def centre_maps(batch, grid):
    """The centre prior: [B,gh,gw], a Gaussian of sigma a quarter of the side at the
    image's centre (the same for every image)."""
    gh, gw = (int(v) for v in grid)
    ys = (tf.range(gh, dtype=tf.float32) + 0.5) / gh - 0.5
    xs = (tf.range(gw, dtype=tf.float32) + 0.5) / gw - 0.5
    prior = tf.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * 0.25 ** 2))  # [gh,gw]
    return tf.broadcast_to(prior[None], [batch, gh, gw])


def seeded_uniform(seeds, shape):
    """Uniform [0,1) values [N, *shape], each row a function of seeds int32 [N,2] only:
    the random control and the tie-breaking jitter never depend on the batch."""
    return tf.map_fn(lambda seed: tf.random.stateless_uniform(shape, seed), seeds,
                     fn_output_signature=tf.float32)
