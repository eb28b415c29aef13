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


def _neighbour_sum(values):
    """values[N,h,w,C] -> the weighted sum of each pixel's in-image 8 neighbours (zero
    past the edge). Slices of one padded copy, not a convolution: XLA fuses them with
    the arithmetic around them into one loop (its depthwise convolution was 7x slower)."""
    height, width = (int(v) for v in values.shape[1:3])
    padded = tf.pad(values, [[0, 0], [1, 1], [1, 1], [0, 0]])

    def at(dy, dx):
        return padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]

    direct = at(-1, 0) + at(1, 0) + at(0, -1) + at(0, 1)
    diagonal = at(-1, -1) + at(-1, 1) + at(1, -1) + at(1, 1)
    return DIRECT_WEIGHT * direct + DIAGONAL_WEIGHT * diagonal


class _Level:
    """One grid of the multigrid hierarchy: its unknowns hidden [N,h,w,1], each pixel's
    in-image neighbour weight (the operator's diagonal: the stencil's sum over an image
    of ones, a function of the shape only) and hidden / diagonal (the Jacobi step)."""

    def __init__(self, hidden, coarsest):
        self.height, self.width = (int(v) for v in hidden.shape[1:3])
        self.hidden = hidden
        # The axes the next coarser grid halves: the sides longer than the coarsest, so a
        # strip is coarsened along its length alone. Measured on 100x3 at the default
        # steps, largest error on smooth images / uniform noise: stopping at the shorter
        # side's limit 0.28 / 0.31, halving both sides down to one pixel across 0.08 /
        # 0.07 (and twice this way's error on 32x128 noise), this way 0.03 / 0.10.
        self.halved = tuple(axis for axis, side in ((1, self.height), (2, self.width))
                            if side > coarsest)
        self.coarsest = coarsest
        self.diagonal = _neighbour_sum(tf.ones([1, self.height, self.width, 1]))
        # Only a 1x1 image has a pixel with no neighbour: never updated, and with no
        # known pixel road_impute gives it the mean colour.
        self.inverse = tf.math.divide_no_nan(hidden, self.diagonal)

    def residual(self, values):
        """b - A x on the unknowns of a whole image x (known pixels in place): each
        unknown's weighted neighbour sum minus its total weight times its value. For an
        x that is 0 on the known pixels (b's part) it is -A x."""
        return self.hidden * (_neighbour_sum(values) - self.diagonal * values)

    def _padding(self):
        """Pads each halved odd side by one at its end."""
        padding = [[0, 0], [0, 0], [0, 0], [0, 0]]
        for axis in self.halved:
            padding[axis][1] = int(self.hidden.shape[axis]) % 2
        return padding

    def coarser(self, known_pixels):
        """The next coarser grid, given known_pixels [N,h',w',1], the block sums of the
        known pixels: a block is unknown when none of its pixels is known (the padding
        of an odd side counts as unknown), so a coarse system keeps a known pixel when
        the fine one has one."""
        return _Level(tf.cast(known_pixels == 0.0, tf.float32), self.coarsest)

    def block_sum(self, values):
        """values[N,h,w,C] -> [N,h',w',C]: sums over the 2x2 blocks (2x1 or 1x2 when one
        axis is halved; odd sides padded with zeros)."""
        values = tf.pad(values, self._padding())
        shape = [int(v) for v in values.shape]
        split = [shape[0]]
        for axis in (1, 2):
            split += [shape[axis] // 2, 2] if axis in self.halved else [shape[axis], 1]
        blocks = tf.reshape(values, split + [shape[3]])
        return tf.reduce_sum(blocks, axis=(2, 4))

    def restrict(self, values):
        """Fine [N,h,w,C] -> coarse: the transpose of prolong (bilinear weights 1/4, 3/4,
        3/4, 1/4 along each halved axis), so the V-cycle stays symmetric."""
        values = tf.pad(values, self._padding())
        for axis in self.halved:
            shape = [int(v) for v in values.shape]
            split = shape[:axis] + [shape[axis] // 2, 2] + shape[axis + 1:]
            pairs = tf.reshape(values, split)
            even, odd = (tf.gather(pairs, 0, axis=axis + 1), tf.gather(pairs, 1, axis=axis + 1))
            values = 0.75 * (even + odd) + 0.25 * (_shift(odd, axis, +1) + _shift(even, axis, -1))
        return values

    def prolong(self, coarse):
        """Coarse [N,h',w',C] -> fine [N,h,w,C]: bilinear interpolation between block
        centres along the halved axes, zero past the image's edge."""
        values = coarse
        for axis in self.halved:
            even = 0.75 * values + 0.25 * _shift(values, axis, +1)
            odd = 0.75 * values + 0.25 * _shift(values, axis, -1)
            shape = [int(v) for v in values.shape]
            merged = shape[:axis] + [2 * shape[axis]] + shape[axis + 1:]
            values = tf.reshape(tf.stack([even, odd], axis=axis + 1), merged)
        return values[:, :self.height, :self.width]


COARSEST_SWEEPS = 4


def _v_cycle(levels, residual):
    """An approximate solve of A e = residual on levels[0], A = D - W on the unknowns (W
    the neighbour weights, D each pixel's total): a Jacobi step, the correction of its
    residual from the next coarser grid (the same stencil there: with restriction the
    transpose of bilinear prolongation, the Galerkin product of this stencil is itself
    when both axes are halved, and near it when one is), the same Jacobi step after.
    Jacobi damps this stencil's rough errors to a third a step, and D^-1 A has its
    eigenvalues in (0, 4/3], so the cycle is symmetric positive definite: it can
    precondition conjugate gradients. Jacobi sweeps on the coarsest."""
    level = levels[0]
    solution = level.inverse * residual
    if len(levels) == 1:
        for _ in range(COARSEST_SWEEPS - 1):
            solution = level.inverse * (residual + _neighbour_sum(solution))
        return solution
    # After one Jacobi step from zero the residual is the pull of the new neighbours.
    coarse = levels[1]
    correction = _v_cycle(levels[1:], coarse.hidden * level.restrict(
        level.hidden * _neighbour_sum(solution)))
    solution = solution + level.hidden * level.prolong(correction)
    return level.inverse * (residual + _neighbour_sum(solution))


def _dot(first, second):
    """Per image and channel: [N,1,1,C]."""
    return tf.reduce_sum(first * second, axis=(1, 2), keepdims=True)


def _conjugate_gradients(levels, start, iterations):
    """`iterations` steps of conjugate gradients on levels[0]'s system from `start`
    (known pixels in place), each preconditioned by one V-cycle."""
    level = levels[0]
    solution = start
    residual = level.residual(solution)
    direction = tf.zeros_like(solution)
    product = tf.ones_like(solution[:, :1, :1])
    for _ in range(iterations):
        preconditioned = _v_cycle(levels, residual)
        new_product = _dot(residual, preconditioned)
        direction = preconditioned + tf.math.divide_no_nan(new_product, product) * direction
        applied = -level.residual(direction)  # A p: the direction is 0 on known pixels
        alpha = tf.math.divide_no_nan(new_product, _dot(direction, applied))
        solution = solution + alpha * direction
        residual = residual - alpha * applied
        product = new_product
    return solution


def road_impute(images, hidden, iterations=1, coarse_iterations=3, coarsest=4):
    """ROAD's linear imputation (Rong et al. 2022), without its noise.

    images[N,H,W,C], hidden[N,H,W] (1 = to impute) -> [N,H,W,C]: known pixels as they
    were; every hidden pixel the weighted mean of its in-image 8 neighbours (direct 1/6,
    diagonal 1/12), the sparse linear system ROAD solves. The system is symmetric
    positive definite (a weighted graph Laplacian with the known pixels as its
    boundary). It is solved coarse to fine: the image is halved (block means of the known
    pixels; a block is unknown when all its pixels are), each side until it is at most
    `coarsest` pixels (a strip along its length only); each grid's system gets
    `coarse_iterations` steps of conjugate gradients preconditioned by a multigrid V-cycle,
    started from the coarser grid's answer interpolated, and the image's own grid
    `iterations` steps. Fixed counts, so an image's answer never depends on its batch.
    Largest error on the hidden pixels against the exact solve (tests/kernels): on
    photograph-like images at 224 px 0.009 to 0.024 (the former 3 steps from the mean
    colour: up to 0.085, they never saw the far known pixels); on uniform noise, the hardest
    case, whose rough boundary only the image's own grid sees, 0.06 at one fine step (mean
    0.014), 0.044 at two, 0.019 at three (29 px); 12 steps on every grid reach float32
    rounding. Cost on 16 images of 224x224x3 under XLA, median of alternated calls: 73.8 ms
    (65.1 ms with 2 coarse steps, which doubled the error on smooth images); in single runs
    44.7 to 51.3 ms with no fine step, 0.26 to 0.30 off on noise, and 58.2 ms with 6 Jacobi
    sweeps on the image's grid in its place, still 0.12 off after 10. An image with no known
    pixel becomes its mean colour (the system has no solution there).
    """
    images = tf.cast(images, tf.float32)
    hidden = tf.cast(hidden, tf.float32)[..., None]  # [N,H,W,1]
    known = 1.0 - hidden
    known_count = tf.reduce_sum(known, axis=(1, 2), keepdims=True)  # [N,1,1,1]
    mean = tf.where(known_count > 0,
                    tf.math.divide_no_nan(tf.reduce_sum(images * known, axis=(1, 2),
                                                        keepdims=True), known_count),
                    tf.reduce_mean(images, axis=(1, 2), keepdims=True))  # [N,1,1,C]
    levels = [_Level(hidden, coarsest)]
    values = [images * known]  # each grid's known pixels, 0 on its unknowns
    while levels[-1].halved:
        level = levels[-1]
        known_pixels = level.block_sum(1.0 - level.hidden)
        levels.append(level.coarser(known_pixels))
        # Block means of the known pixels; 0 on the blocks with none (the new unknowns).
        values.append(tf.math.divide_no_nan(level.block_sum(values[-1]), known_pixels))
    solution = None
    for depth in range(len(levels) - 1, -1, -1):
        level = levels[depth]
        if solution is None:
            guess = mean
        else:
            # Interpolated, with the edge's missing weights made up: a smooth start.
            ones = tf.ones_like(solution[:1, :, :, :1])
            guess = level.prolong(solution) / level.prolong(ones)
        solution = _conjugate_gradients(levels[depth:], values[depth] + level.hidden * guess,
                                        iterations if depth == 0 else coarse_iterations)
    return tf.where(known_count > 0, solution, mean + 0.0 * images)


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
