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

import numpy as np
import tensorflow as tf

# Curve kinds, in the order the engine stacks them.
MORF, LERF, INSERTION = 0, 1, 2
CURVES = ("morf", "lerf", "insertion")
# ROAD's neighbour weights (Rong et al. 2022): the four direct neighbours weigh 1/6, the
# four diagonal ones 1/12.
DIRECT_WEIGHT, DIAGONAL_WEIGHT = 1.0 / 6.0, 1.0 / 12.0


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


# An image is kept as its four parity classes (even row even column, even-odd, odd-even,
# odd-odd), each a quarter-size image: the 8-neighbour stencil couples only pixels whose
# row or column parity differs, so a class's direct neighbours lie in the two classes
# that differ from it in one parity and its diagonal ones in the class that differs in
# both. Per class: (row step, column step, class a row away, class a column away,
# diagonal class); the steps say on which side the second neighbour of each pair lies.
NEIGHBOURS = ((+1, +1, 2, 1, 3), (+1, -1, 3, 0, 2), (-1, +1, 0, 3, 1), (-1, -1, 1, 2, 0))
FORWARD, BACKWARD = (0, 1, 2, 3), (3, 2, 1, 0)
COARSEST_SWEEPS = 2


def _neighbour_sum(k, parts, extra=None):
    """Class k's 8-neighbour sum over DIRECT_WEIGHT (direct neighbours 1, diagonal ones
    DIAGONAL_WEIGHT / DIRECT_WEIGHT = 1/2), plus `extra`; parts[j] None counts as zero
    (a sweep from zero, or a residual that only some classes feed). None when no term
    is left."""
    row_step, col_step, row_partner, col_partner, diagonal = NEIGHBOURS[k]
    terms = [] if extra is None else [extra]
    for j, axis, step in ((col_partner, 2, col_step), (row_partner, 1, row_step)):
        if parts[j] is not None:
            terms += [parts[j], _shift(parts[j], axis, step)]
    if parts[diagonal] is not None:
        pair = parts[diagonal] + _shift(parts[diagonal], 2, col_step)
        terms.append((DIAGONAL_WEIGHT / DIRECT_WEIGHT) * (pair + _shift(pair, 1, row_step)))
    return tf.add_n(terms) if terms else None


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


class _Level:
    """One grid of the multigrid hierarchy, built once per call (not per sweep): the
    parity classes of its unknowns hidden[k] [N,h,w,1] (the padding of an odd side is
    neither unknown nor a neighbour), each pixel's in-image neighbour weight (the
    operator's diagonal, a function of the shape only) and the unknowns' inverse of it."""

    def __init__(self, hidden):
        self.height, self.width = (int(v) for v in hidden.shape[1:3])
        self.hidden = self.split(hidden)
        # The diagonal depends on the shape alone: NumPy at trace time, a constant.
        exists = np.zeros((1, self.height + self.height % 2, self.width + self.width % 2, 1),
                          np.float32)
        exists[:, :self.height, :self.width] = 1.0
        self.exists = [tf.constant(part) for part in _split_parities(exists)]
        self.diagonal = [DIRECT_WEIGHT * _neighbour_sum(k, self.exists) for k in range(4)]
        # x_k = inverse[k] * (right / DIRECT_WEIGHT + neighbour sum): 0 where known.
        self.inverse = [h * tf.math.divide_no_nan(DIRECT_WEIGHT, d)
                        for h, d in zip(self.hidden, self.diagonal)]
        self.direct_hidden = [DIRECT_WEIGHT * h for h in self.hidden]

    def split(self, values):
        pad = [[0, 0], [0, self.height % 2], [0, self.width % 2], [0, 0]]
        return list(_split_parities(tf.pad(values, pad)))

    def merge(self, parts):
        return _merge_parities(parts)[:, :self.height, :self.width]

    def residual(self, parts):
        """b - A x on the unknowns of a whole image x (known pixels in place): every
        unknown's weighted neighbour sum minus its total weight times its value. For an
        x that is 0 on the known pixels (b's part) it is -A x: A = D - W, W the neighbour
        weights between unknowns, D each unknown's total neighbour weight."""
        return [w * _neighbour_sum(k, parts) - h * d * x for k, (h, d, x, w) in
                enumerate(zip(self.hidden, self.diagonal, parts, self.direct_hidden))]

    def sweep(self, parts, scaled_right, order):
        """One Gauss-Seidel sweep of A e = right (given as right / DIRECT_WEIGHT), the
        classes in `order`, each all at once (no pixel neighbours its own class), each
        reading the newest values of the others."""
        parts = list(parts)
        for k in order:
            parts[k] = self.inverse[k] * _neighbour_sum(k, parts, scaled_right[k])
        return parts

    def coarser_hidden(self):
        """[N,h,w,1] on the grid of 2x2 blocks: unknown when all of a block's pixels are
        (the padding does not count), so every coarse system keeps a known pixel when
        the fine one has one."""
        blocks = [h + (1.0 - e) for h, e in zip(self.hidden, self.exists)]
        return blocks[0] * blocks[1] * blocks[2] * blocks[3]


def _spread(values, axis, sign):
    """Each value plus a third of its neighbour on the `sign` side (0 past the edge):
    bilinear weights 3/4 and 1/4 without their common 3/4."""
    return values + (1.0 / 3.0) * _shift(values, axis, sign)


def _sum(values):
    values = [v for v in values if v is not None]
    return tf.add_n(values) if values else None


# The transfers' common factor, (3/4)^2, applied once on the coarse grid.
TRANSFER_SCALE = 0.5625


def _prolong(coarse):
    """coarse [N,h,w,C] -> four parity classes [N,h,w,C] of the grid twice as fine:
    bilinear interpolation between block centres (zero past the image's edge)."""
    coarse = TRANSFER_SCALE * coarse
    even_rows, odd_rows = _spread(coarse, 1, +1), _spread(coarse, 1, -1)
    return [_spread(even_rows, 2, +1), _spread(even_rows, 2, -1),
            _spread(odd_rows, 2, +1), _spread(odd_rows, 2, -1)]


def _restrict(parts):
    """The transpose of _prolong: fine parity classes (None = zero) -> [N,h,w,C], so
    the V-cycle stays symmetric, as conjugate gradients needs."""
    def spread(part, axis, sign):
        return None if part is None else _spread(part, axis, sign)
    even_rows = _sum([spread(parts[0], 2, -1), spread(parts[1], 2, +1)])
    odd_rows = _sum([spread(parts[2], 2, -1), spread(parts[3], 2, +1)])
    return TRANSFER_SCALE * _sum([spread(even_rows, 1, -1), spread(odd_rows, 1, +1)])


def _v_cycle(levels, right):
    """An approximate solve of A e = right on levels[0]: a forward sweep, the correction
    of its residual from the next coarser grid (the same stencil there; the transfers,
    each twice the other's transpose, scale it as a Galerkin product would), a backward
    sweep; symmetric Gauss-Seidel sweeps on the coarsest grid. Symmetric and positive
    definite, so it can precondition conjugate gradients."""
    level = levels[0]
    scaled = [r / DIRECT_WEIGHT for r in right]
    solution = level.sweep([None] * 4, scaled, FORWARD)
    if len(levels) == 1:
        solution = level.sweep(solution, scaled, BACKWARD)
        for _ in range(COARSEST_SWEEPS - 1):
            solution = level.sweep(level.sweep(solution, scaled, FORWARD), scaled, BACKWARD)
        return solution
    # After a forward sweep from zero, class k's equation has seen the classes before
    # it; its residual is the pull of those updated after it (class 3's is zero).
    residual = [None if k == 3 else w * _neighbour_sum(
        k, [solution[j] if j > k else None for j in range(4)])
        for k, w in enumerate(level.direct_hidden)]
    coarse = levels[1]
    coarse_right = [h * r for h, r in zip(coarse.hidden, coarse.split(_restrict(residual)))]
    correction = _prolong(coarse.merge(_v_cycle(levels[1:], coarse_right)))
    solution = [s + h * c for s, h, c in zip(solution, level.hidden, correction)]
    return level.sweep(solution, scaled, BACKWARD)


def _dot(first, second):
    """Per image and channel: [N,1,1,C]."""
    return tf.add_n([tf.reduce_sum(a * b, axis=(1, 2), keepdims=True)
                     for a, b in zip(first, second)])


def road_impute(images, hidden, iterations=3, coarsest=4):
    """ROAD's linear imputation (Rong et al. 2022), without its noise.

    images[N,H,W,C], hidden[N,H,W] (1 = to impute) -> [N,H,W,C]: known pixels as they
    were; every hidden pixel the weighted mean of its in-image 8 neighbours (direct 1/6,
    diagonal 1/12), the sparse linear system ROAD solves. The system is symmetric
    positive definite (a weighted graph Laplacian with the known pixels as its
    boundary), so it is solved by `iterations` steps of conjugate gradients from the
    known pixels' mean colour, each preconditioned by one multigrid V-cycle
    (Gauss-Seidel sweeps over the four parity classes, on grids halved down to
    `coarsest` pixels a side, bilinear transfers). A fixed count, so an image's answer
    never depends on its batch. On images of uniform noise (the hardest case: boundary
    values that jump from pixel to pixel) at 28 px, the largest error was 0.05, 0.016
    and 0.004 after 2, 3 and 4 steps (the former 16 sweeps per level of a
    coarse-to-fine cascade: 0.05); 12 steps reach float32 rounding. An image with no
    known pixel becomes its mean colour (the system has no solution there).
    """
    images = tf.cast(images, tf.float32)
    hidden = tf.cast(hidden, tf.float32)[..., None]  # [N,H,W,1]
    known = 1.0 - hidden
    known_count = tf.reduce_sum(known, axis=(1, 2), keepdims=True)  # [N,1,1,1]
    mean = tf.where(known_count > 0,
                    tf.math.divide_no_nan(tf.reduce_sum(images * known, axis=(1, 2),
                                                        keepdims=True), known_count),
                    tf.reduce_mean(images, axis=(1, 2), keepdims=True))  # [N,1,1,C]
    levels = [_Level(hidden)]
    while min(levels[-1].height, levels[-1].width) > coarsest:
        levels.append(_Level(levels[-1].coarser_hidden()))
    level = levels[0]
    solution = level.split(images * known + mean * hidden)

    def step(solution, residual, direction, product):
        # The first step starts from direction 0 (any product): the preconditioned
        # residual itself. One V-cycle and one product with A a step, traced once.
        preconditioned = _v_cycle(levels, residual)
        new_product = _dot(residual, preconditioned)
        beta = tf.math.divide_no_nan(new_product, product)
        direction = [z + beta * p for z, p in zip(preconditioned, direction)]
        # The direction is 0 on the known pixels, so residual() gives -A p.
        negated = level.residual(direction)
        alpha = -tf.math.divide_no_nan(new_product, _dot(direction, negated))
        solution = [x + alpha * p for x, p in zip(solution, direction)]
        residual = [r + alpha * q for r, q in zip(residual, negated)]
        return solution, residual, direction, new_product

    start = (solution, level.residual(solution), [tf.zeros_like(x) for x in solution],
             tf.ones_like(mean))
    _, solution, *_ = tf.while_loop(lambda i, *_: i < iterations,
                                    lambda i, *state: (i + 1, *step(*state)), (0, *start))
    return tf.where(known_count > 0, level.merge(solution), mean + 0.0 * images)


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
