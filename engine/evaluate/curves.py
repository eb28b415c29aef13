"""The compiled evaluation step: for one fixed-shape batch and one kind of map, every
step of the MoRF, LeRF and insertion curves and the one-pass image, through the model
in as few calls as the memory budget allows (sightline.kernels.faithfulness has the
math, this module decides what is compiled and how it is chunked).

Forward passes per image and map: 3 (S + 1) for the curves (S steps, both endpoints)
plus one for the one-pass scores. Rows (perturbed images) are folded into the batch:
`rows_per_call` of them per image go into one model call, sized like SmoothGrad's
copies by the memory budget (sightline.compute.step.copies_per_call).
"""

import dataclasses
import types

import numpy as np
import tensorflow as tf

from sightline.compute.step import copies_per_call
from sightline.data.pipeline import preprocess
from sightline.errors import UsageError
from sightline.kernels import faithfulness as F

FILLS = ("mean", "blur", "road")
# Offsets that keep the stateless streams apart: the tie jitter, the random control, the
# ROAD noise.
JITTER_STREAM, RANDOM_STREAM, NOISE_STREAM = 1, 2, 3
# ROAD's noise: std a hundredth of each image's value range (Rong et al. add noise of
# std 0.01 to images in [0, 1]).
ROAD_NOISE = 0.01


@dataclasses.dataclass(frozen=True)
class CurveSettings:
    """What one evaluation computes: steps S, the deletion fill, the cell grid, the tie
    seed, ROAD's sweeps per level, the memory one call may hold."""

    steps: int = 20
    fill: str = "mean"
    grid: tuple = (8, 8)
    seed: int = 0
    road_iterations: int = 16
    memory_budget_mb: int = 1024


def stream_seeds(seed, stream, sample_index):
    """int64 [B,2] stateless seeds of (seed, stream) and each sample index."""
    index = tf.cast(sample_index, tf.int64)
    first = tf.fill(tf.shape(index), tf.constant(int(seed) * 8 + int(stream), tf.int64))
    return tf.stack([first, index], axis=-1)


def rows_per_call(adapter, batch_size, total_rows, memory_budget_mb, on_gpu=None):
    """Perturbed images per image in one model call, at most `total_rows`, spread evenly
    over the calls (no call pays for padding rows it does not need)."""
    per_call = copies_per_call(adapter, types.SimpleNamespace(memory_budget_mb=memory_budget_mb),
                               batch_size, gradients=False, on_gpu=on_gpu)
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
    # Deletion rows (MoRF then LeRF) and insertion rows run as two loops: only the
    # deletions need the fill (ROAD's imputation is the costly one).
    deletion_per_call = rows_per_call(adapter, batch_size, 2 * points, settings.memory_budget_mb,
                                      on_gpu)
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

    def run_rows(kinds, counts, per_call, images, pixel_rank, targets, fill_of):
        """Every row (kind, count) through the model, per_call rows per image a call."""
        total = int(kinds.shape[0])
        calls = -(-total // per_call)
        padding = calls * per_call - total
        kinds = tf.reshape(tf.pad(kinds, [[0, padding]]), [calls, per_call])
        counts = tf.reshape(tf.pad(counts, [[0, padding]]), [calls, per_call])

        def one_call(inputs):
            call_kinds, call_counts = inputs
            hidden = F.hidden_masks(pixel_rank, call_kinds, call_counts, num_cells)  # [B,r,H,W]
            fill = fill_of(hidden)  # [B,r,H,W,C] or broadcastable
            weight = hidden[..., None]
            perturbed = images[:, None] * (1.0 - weight) + fill * weight  # [B,r,H,W,C]
            probabilities, logits = target_scores(perturbed, targets, per_call)
            return probabilities, logits, tf.reduce_mean(hidden, axis=(2, 3))

        outputs = tf.map_fn(one_call, (kinds, counts), parallel_iterations=1,
                            fn_output_signature=(tf.float32, tf.float32, tf.float32))
        # [calls,B,r] -> [B,calls*r] -> the real rows
        return [tf.reshape(tf.transpose(v, [1, 0, 2]), [batch_size, -1])[:, :total]
                for v in outputs]

    def curves(images, cells, pixel_maps, targets, sample_index):
        images = tf.cast(images, tf.float32)
        jitter = F.seeded_uniform(stream_seeds(settings.seed, JITTER_STREAM, sample_index), grid)
        ranks, tie_fraction = F.cell_ranks(cells, jitter)
        pixel_rank = F.pixel_ranks(ranks, grid, (height, width))  # [B,H,W]
        counts = F.step_counts(num_cells, steps)  # [S+1]
        blurred = F.gaussian_blur(images, sigma)  # [B,H,W,C]
        mean = F.mean_fill(images)  # [B,1,1,C]
        spread = (tf.reduce_max(images, axis=(1, 2, 3)) - tf.reduce_min(images, axis=(1, 2, 3)))

        def deletion_fill(hidden):
            if settings.fill == "mean":
                return mean[:, None]
            if settings.fill == "blur":
                return blurred[:, None]
            rows = int(hidden.shape[1])
            flat_hidden = tf.reshape(hidden, [batch_size * rows, height, width])
            flat_images = tf.repeat(images, rows, axis=0)  # [B*r,H,W,C]
            imputed = F.road_impute(flat_images, flat_hidden, settings.road_iterations)
            # Noise per (sample, row): a row's place in the batch never changes it.
            row_ids = tf.tile(tf.range(rows, dtype=tf.int64)[None], [batch_size, 1])
            seeds = stream_seeds(settings.seed, NOISE_STREAM,
                                 tf.reshape(tf.cast(sample_index, tf.int64)[:, None] * 4096
                                            + row_ids, [-1]))
            noise = F.road_noise(tf.shape(flat_images), seeds,
                                 ROAD_NOISE * tf.repeat(spread, rows))
            imputed = imputed + noise * flat_hidden[..., None]
            return tf.reshape(imputed, [batch_size, rows, height, width, channels])

        deletion_kinds = tf.concat([tf.fill([points], F.MORF), tf.fill([points], F.LERF)], 0)
        deletion_counts = tf.concat([counts, counts], 0)
        d_prob, d_logit, d_hidden = run_rows(deletion_kinds, deletion_counts, deletion_per_call,
                                             images, pixel_rank, targets, deletion_fill)
        i_prob, i_logit, i_hidden = run_rows(tf.fill([points], F.INSERTION), counts,
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


def padded(array, size, fill=0):
    """array [n,...] -> [size,...] with `fill` rows after it (n <= size)."""
    array = np.asarray(array)
    if len(array) == size:
        return array
    pad = np.full((size - len(array), *array.shape[1:]), fill, array.dtype)
    return np.concatenate([array, pad])
