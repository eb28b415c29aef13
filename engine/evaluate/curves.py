"""The compiled evaluation step: for one fixed-shape batch and one kind of map, every
step of the MoRF, LeRF and insertion curves and the one-pass image, through the model
in as few calls as the memory budget allows (sightline.kernels.faithfulness has the
math, this module decides what is compiled and how it is chunked).

Forward passes per image and map: 3 (S + 1) for the curves (S steps, both endpoints)
plus one for the one-pass scores. Rows (perturbed images) are folded into the batch:
`rows_per_call` of them per image go into one model call, sized like SmoothGrad's
copies by the memory budget (sightline.compute.step.copies_per_call), and for `road` by
what its solver holds as well.
"""

import dataclasses
import functools
import types

import numpy as np
import tensorflow as tf

from sightline.compute.step import copies_per_call
from sightline.data.pipeline import preprocess
from sightline.errors import UsageError
from sightline.kernels import faithfulness as F
from sightline.kernels.gradient_maps import sample_noise

FILLS = ("mean", "blur", "road")
# Offsets that keep the stateless streams apart: the tie jitter, the random control, the
# ROAD noise.
JITTER_STREAM, RANDOM_STREAM, NOISE_STREAM = 1, 2, 3
# ROAD's noise: std a hundredth of each image's value range (Rong et al. add noise of
# std 0.01 to images in [0, 1]).
ROAD_NOISE = 0.01
# Input-sized float32 arrays the compiled ROAD solver holds at its peak per imputed mask:
# 12 to 16 measured (process peak over the input, 64 and 128 images of 224x224x3, XLA on
# CPU), on top of what the model call itself needs.
ROAD_WORKING_COPIES = 16


@dataclasses.dataclass(frozen=True)
class CurveSettings:
    """What one evaluation computes: steps S, the deletion fill, the cell grid, the tie
    seed, ROAD's conjugate-gradient steps on the image's own grid, the memory one call
    may hold."""

    steps: int = 20
    fill: str = "mean"
    grid: tuple = (8, 8)
    seed: int = 0
    road_iterations: int = 1
    memory_budget_mb: int = 1024


def stream_key(seed, stream):
    """One int per (seed, stream): the streams of one seed never share numbers."""
    return int(seed) * 8 + int(stream)


def stream_seeds(seed, stream, sample_index):
    """int64 [B,2] stateless seeds of (seed, stream) and each sample index."""
    index = tf.cast(sample_index, tf.int64)
    first = tf.fill(tf.shape(index), tf.constant(stream_key(seed, stream), tf.int64))
    return tf.stack([first, index], axis=-1)


def rows_per_call(adapter, batch_size, total_rows, memory_budget_mb, on_gpu=None,
                  fill_values_per_row=0):
    """Perturbed images per image in one model call, at most `total_rows`, spread evenly
    over the calls (no call pays for padding rows it does not need). fill_values_per_row:
    float32 values the fill holds per row while it is computed (ROAD's solver), which the
    budget must hold too: for a small model on large images it is the bigger share."""
    per_call = copies_per_call(adapter, types.SimpleNamespace(memory_budget_mb=memory_budget_mb),
                               batch_size, gradients=False, on_gpu=on_gpu)
    if fill_values_per_row:
        per_call = min(per_call, memory_budget_mb * 2 ** 20
                       // (4 * int(fill_values_per_row) * int(batch_size)))
    per_call = int(max(1, min(per_call, total_rows)))
    calls = -(-total_rows // per_call)
    return -(-total_rows // calls)


def build_prepare(grid, image_size):
    """A function `prepare(maps[B,h,w]) -> (cells[B,gh,gw], pixel_maps[B,H,W])`: the
    map on the ranking grid (area average) and, for the one-pass scores, min-max scaled
    at the input's size (bilinear)."""

    def prepare(maps):
        maps = tf.cast(maps, tf.float32)
        cells = F.cell_maps(maps, grid)
        pixel = maps
        if tuple(maps.shape[1:3]) != tuple(image_size):
            pixel = tf.image.resize(maps[..., None], image_size, method="bilinear")[..., 0]
        return cells, F.min_max_scale(pixel)

    return tf.function(prepare, autograph=False)


def build_controls(grid, seed):
    """`controls(images[B,H,W,C], sample_index[B]) -> {name: maps[B,gh,gw]}`: the random
    map (uniform, seeded by the sample index), the centre prior and the edge map."""

    def controls(images, sample_index):
        batch = tf.shape(images)[0]
        return {"random": F.seeded_uniform(stream_seeds(seed, RANDOM_STREAM, sample_index),
                                           tuple(grid)),
                "centre": F.centre_maps(batch, grid),
                "edge": F.edge_maps(images, grid)}

    return tf.function(controls, autograph=False)


def build_curves(adapter, image_shape, batch_size, settings, preprocessing="none", on_gpu=None):
    """A tf.function `curves(images[B,H,W,C], cells[B,gh,gw], pixel_maps[B,H,W],
    targets[B], sample_index[B]) -> dict`, traced once:

    probabilities, logits, fractions: float32 [B,3,S+1] (MoRF, LeRF, insertion; the
    fraction hidden for the deletions, shown for insertion); auc [B,3]; one_pass [B]
    (the probability of the image times its map), original [B], tie_fraction [B].
    """
    if settings.fill not in FILLS:
        raise UsageError(f"fill must be one of {', '.join(FILLS)}; received {settings.fill!r}")
    height, width, channels = (int(v) for v in image_shape)
    batch_size, steps = int(batch_size), int(settings.steps)
    grid = tuple(int(v) for v in settings.grid)
    num_cells = grid[0] * grid[1]
    sigma = F.blur_sigma((height, width))
    black = tf.reshape(preprocess(tf.zeros([1, 1, 1, channels], tf.float32), preprocessing),
                       [channels])
    points = steps + 1
    counts = tf.get_static_value(F.step_counts(num_cells, steps))  # [S+1], NumPy

    # XLA fuses the solver's stencil slices with the arithmetic around them; in graph
    # mode every one of its elementwise steps is a pass over memory. Measured on two CPU
    # cores, 16 images of 224x224x3: 82 ms against 187 ms in graph mode.
    impute_compiled = tf.function(
        functools.partial(F.road_impute, iterations=settings.road_iterations),
        jit_compile=True, autograph=False)

    def road_fill(images, pixel_rank, mean, noise, kinds, counts, slots, everything):
        """The call's rows imputed, each distinct mask once (kinds, counts [u]; slots [r]:
        each row's mask; everything [r]: the rows that hide every cell, whose imputation
        is the mean colour), plus the noise -> [B,r,H,W,C]."""
        distinct = int(kinds.shape[0])

        def impute():
            hidden = F.hidden_masks(pixel_rank, kinds, counts, num_cells)  # [B,u,H,W]
            imputed = impute_compiled(tf.repeat(images, distinct, axis=0),
                                      tf.reshape(hidden, [batch_size * distinct, height, width]))
            return tf.reshape(imputed, [batch_size, distinct, height, width, channels])

        # A call whose rows hide nothing or everything solves nothing.
        imputed = tf.cond(tf.reduce_any(counts > 0), impute,
                          lambda: tf.zeros([batch_size, distinct, height, width, channels]))
        rows = tf.gather(imputed, slots, axis=1)  # [B,r,H,W,C]
        return tf.where(everything[None, :, None, None, None], mean[:, None], rows) \
            + noise[:, None]
    # Deletion rows (MoRF then LeRF) and insertion rows run as two loops: only the
    # deletions need the fill (ROAD's imputation is the costly one).
    deletion_per_call = rows_per_call(
        adapter, batch_size, 2 * points, settings.memory_budget_mb, on_gpu,
        ROAD_WORKING_COPIES * height * width * channels if settings.fill == "road" else 0)
    insertion_per_call = rows_per_call(adapter, batch_size, points, settings.memory_budget_mb,
                                       on_gpu)

    def target_scores(perturbed, targets, rows):
        """perturbed [B,rows,H,W,C] -> (probabilities, logits) [B,rows] of the targets."""
        _, logits = adapter.forward(tf.reshape(perturbed, [batch_size * rows, height, width,
                                                           channels]))
        logits = tf.cast(logits, tf.float32)
        probabilities = adapter.probabilities(logits)
        chosen = tf.repeat(targets, rows)  # [B*rows]
        return (tf.reshape(tf.gather(probabilities, chosen, batch_dims=1), [batch_size, rows]),
                tf.reshape(tf.gather(logits, chosen, batch_dims=1), [batch_size, rows]))

    def run_rows(kinds, counts, per_call, images, pixel_rank, targets, fill_of, plan_of=None):
        """Every row (kind, count) through the model, per_call rows per image a call.
        plan_of(kinds[calls,r], counts[calls,r]) -> per-call NumPy arrays that
        fill_of(hidden, *plan) receives with the call's masks."""
        total = len(kinds)
        calls = -(-total // per_call)
        padding = calls * per_call - total
        kinds = np.pad(kinds, [[0, padding]]).reshape(calls, per_call)
        counts = np.pad(counts, [[0, padding]]).reshape(calls, per_call)
        plan = tuple(plan_of(kinds, counts)) if plan_of else ()

        def one_call(inputs):
            call_kinds, call_counts, *call_plan = inputs
            hidden = F.hidden_masks(pixel_rank, call_kinds, call_counts, num_cells)  # [B,r,H,W]
            fill = fill_of(hidden, *call_plan)  # [B,r,H,W,C] or broadcastable
            weight = hidden[..., None]
            perturbed = images[:, None] * (1.0 - weight) + fill * weight  # [B,r,H,W,C]
            probabilities, logits = target_scores(perturbed, targets, per_call)
            return probabilities, logits, tf.reduce_mean(hidden, axis=(2, 3))

        outputs = tf.map_fn(one_call, tuple(tf.constant(v) for v in (kinds, counts, *plan)),
                            parallel_iterations=1,
                            fn_output_signature=(tf.float32, tf.float32, tf.float32))
        # [calls,B,r] -> [B,calls*r] -> the real rows
        return [tf.reshape(tf.transpose(v, [1, 0, 2]), [batch_size, -1])[:, :total]
                for v in outputs]

    def curves(images, cells, pixel_maps, targets, sample_index):
        images = tf.cast(images, tf.float32)
        jitter = F.seeded_uniform(stream_seeds(settings.seed, JITTER_STREAM, sample_index), grid)
        ranks, tie_fraction = F.cell_ranks(cells, jitter)
        pixel_rank = F.pixel_ranks(ranks, grid, (height, width))  # [B,H,W]
        blurred = F.gaussian_blur(images, sigma)  # [B,H,W,C]
        mean = F.mean_fill(images)  # [B,1,1,C]
        spread = (tf.reduce_max(images, axis=(1, 2, 3)) - tf.reduce_min(images, axis=(1, 2, 3)))

        def deletion_fill(hidden, *plan):
            if settings.fill == "mean":
                return mean[:, None]
            if settings.fill == "blur":
                return blurred[:, None]
            return road_fill(images, pixel_rank, mean, noise, *plan)

        if settings.fill == "road":
            # One noise image per sample (a function of the seed and the sample index
            # only), the same at every step: each step's image is still a draw of
            # ROAD's noisy imputation, and the noise costs one image, not one a row.
            noise = sample_noise(stream_key(settings.seed, NOISE_STREAM), sample_index,
                                 tf.zeros([1], tf.int32), tf.constant([height, width, channels]))
            noise = ROAD_NOISE * spread[:, None, None, None] * noise[0]  # [B,H,W,C]
        deletion_kinds = np.repeat(np.array([F.MORF, F.LERF], np.int32), points)
        deletion_counts = np.tile(counts, 2)
        d_prob, d_logit, d_hidden = run_rows(
            deletion_kinds, deletion_counts, deletion_per_call, images, pixel_rank, targets,
            deletion_fill, functools.partial(imputation_plan, num_cells=num_cells)
            if settings.fill == "road" else None)
        i_prob, i_logit, i_hidden = run_rows(np.full(points, F.INSERTION, np.int32), counts,
                                             insertion_per_call, images, pixel_rank, targets,
                                             lambda hidden: blurred[:, None])
        probabilities = tf.stack([d_prob[:, :points], d_prob[:, points:], i_prob], axis=1)
        logits = tf.stack([d_logit[:, :points], d_logit[:, points:], i_logit], axis=1)
        fractions = tf.stack([d_hidden[:, :points], d_hidden[:, points:], 1.0 - i_hidden], axis=1)
        masked = F.one_pass_images(images, pixel_maps, black)
        one_pass, _ = target_scores(masked[:, None], targets, 1)
        return {"probabilities": probabilities, "logits": logits, "fractions": fractions,
                "auc": F.trapezoid_auc(fractions, probabilities),
                "one_pass": one_pass[:, 0], "original": probabilities[:, F.MORF, 0],
                "tie_fraction": tie_fraction}

    signature = [tf.TensorSpec([batch_size, height, width, channels], tf.float32),
                 tf.TensorSpec([batch_size, *grid], tf.float32),
                 tf.TensorSpec([batch_size, height, width], tf.float32),
                 tf.TensorSpec([batch_size], tf.int32),
                 tf.TensorSpec([batch_size], tf.int64)]
    return tf.function(curves, input_signature=signature, autograph=False)


def imputation_plan(kinds, counts, num_cells):
    """Which masks each call of deletion rows must impute: kinds, counts [calls,r] ->
    (kinds, counts [calls,u]: each call's distinct masks that hide some but not all
    cells, padded with a mask that hides nothing; slots [calls,r]: each row's mask;
    everything [calls,r]: the rows that hide every cell). Rows repeat a mask when the
    grid has fewer cells than steps (a 3x3 grid in 20 steps has 8 distinct masks per
    curve, not 21)."""
    calls, rows = kinds.shape
    masks = [sorted({(int(k), int(c)) for k, c in zip(kinds[i], counts[i]) if 0 < c < num_cells})
             for i in range(calls)]
    distinct = max(1, max(len(m) for m in masks))
    plan_kinds = np.full((calls, distinct), F.MORF, np.int32)
    plan_counts = np.zeros((calls, distinct), np.int32)
    slots = np.zeros((calls, rows), np.int32)
    for i, call_masks in enumerate(masks):
        for j, (kind, count) in enumerate(call_masks):
            plan_kinds[i, j], plan_counts[i, j] = kind, count
        for r in range(rows):
            key = (int(kinds[i, r]), int(counts[i, r]))
            slots[i, r] = call_masks.index(key) if key in call_masks else 0
    return plan_kinds, plan_counts, slots, counts >= num_cells


def padded(array, size, fill=0):
    """array [n,...] -> [size,...] with `fill` rows after it (n <= size)."""
    array = np.asarray(array)
    if len(array) == size:
        return array
    pad = np.full((size - len(array), *array.shape[1:]), fill, array.dtype)
    return np.concatenate([array, pad])
