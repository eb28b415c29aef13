"""Gradient kernels: maps at the input's resolution.

`input_gradient(images[n,H,W,C], targets[n]) -> grads[n,H,W,C]` is the one model
access these kernels need; the engine builds it around the model callable, so the
kernels stay pure and can be traced, compiled and tested against any function.
"""

import tensorflow as tf

from sightline.kernels.methods import OPTIONS

CHANNEL_REDUCTIONS = OPTIONS["channel_reduce"].choices


def saliency(input_grads, channel_reduce="max"):
    """Vanilla gradient saliency (Simonyan et al. 2014).

    input_grads[B,H,W,C] (d y_c / d x) -> heatmaps[B,H,W] = reduce_C |d y_c / d x|,
    reduced by max (default) or sum (the course's choice).
    """
    return _reduce_channels(tf.abs(tf.cast(input_grads, tf.float32)), channel_reduce)


def smoothgrad(input_gradient, images, targets, sample_index, *, num_copies=25,
               noise_sigma=0.15, noise_seed=0, copies_per_call=None,
               channel_reduce="max"):
    """SmoothGrad (Smilkov et al. 2017) wrapped around an input-gradient kernel.

    images[B,H,W,C], targets[B], sample_index[B] -> heatmaps[B,H,W].

    The mean gradient over `num_copies` noisy copies, noise std = noise_sigma *
    (max(x) - min(x)) per image, then reduced over channels as `saliency` does.
    The noise of copy j of a sample is a function of (noise_seed, sample_index, j)
    only (see `sample_noise`): a map never depends on the batch it sat in.
    Copies are folded into the batch, `copies_per_call` copies per gradient call.
    """
    images = tf.cast(images, tf.float32)
    spread = (tf.reduce_max(images, axis=(1, 2, 3))
              - tf.reduce_min(images, axis=(1, 2, 3)))  # [B]
    noise_std = noise_sigma * spread[:, None, None, None]  # [B,1,1,1]

    def noisy_copies(copy_ids):  # copy_ids[c] -> images[c,B,H,W,C]
        noise = sample_noise(noise_seed, sample_index, copy_ids, tf.shape(images)[1:])
        return images[None] + noise * noise_std[None]

    mean_grads = mean_gradient_over_copies(input_gradient, noisy_copies, targets,
                                           num_copies, copies_per_call)
    return _reduce_channels(tf.abs(mean_grads), channel_reduce)


def integrated_gradients(input_gradient, images, targets, baseline=0.0, *, num_steps=32,
                         copies_per_call=None):
    """Integrated Gradients (Sundararajan et al. 2017).

    images[B,H,W,C], targets[B], baseline[B,H,W,C] (or broadcastable: a number is a
    constant image) ->
    heatmaps[B,H,W], the signed sum over channels of
        (x - x') * mean_k d y_c / d x (x' + a_k (x - x')),  a_k = (k + 1/2) / num_steps,
    the midpoint rule, whose error falls as 1/num_steps^2. Because the map keeps its
    sign and sums the channels, completeness holds on it:
        sum_ij IG[i,j] ~= y_c(x) - y_c(x').
    Steps are folded into the batch, `copies_per_call` steps per gradient call.
    """
    images = tf.cast(images, tf.float32)
    baselines = tf.broadcast_to(tf.cast(baseline, tf.float32), tf.shape(images))
    differences = images - baselines  # [B,H,W,C]

    def path_points(step_ids):  # step_ids[c] -> images[c,B,H,W,C]
        alphas = (tf.cast(step_ids, tf.float32) + 0.5) / float(num_steps)  # [c]
        return baselines[None] + alphas[:, None, None, None, None] * differences[None]

    mean_grads = mean_gradient_over_copies(input_gradient, path_points, targets,
                                           num_steps, copies_per_call)
    return tf.reduce_sum(differences * mean_grads, axis=-1)  # [B,H,W]


def sample_noise(noise_seed, sample_index, copy_ids, image_shape):
    """Standard normal noise keyed by (noise_seed, sample_index, copy, position).

    sample_index[B] int, copy_ids[c] int, image_shape [H,W,C] -> noise[c,B,H,W,C].

    TensorFlow's stateless generators give other numbers under XLA than in graph mode,
    even with the algorithm named (measured with Philox on CPU, TF 2.21), and a
    sample's noise must depend neither on its batch nor on how the step was compiled.
    So the bits come from an integer hash of a counter, exact in every backend, and
    Box-Muller turns pairs of them into normals.
    """
    sample_index = tf.cast(sample_index, tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(sample_index, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(tf.bitwise.right_shift(sample_index, 32), tf.uint32)
    seed = tf.fill(tf.shape(low), tf.cast(noise_seed, tf.uint32))  # [B]
    sample_keys = _mix(_mix(seed, low), high)  # [B]
    copy_keys = _mix(sample_keys[None, :], tf.cast(copy_ids, tf.uint32)[:, None])  # [c,B]
    size = tf.reduce_prod(image_shape)
    counters = tf.range(size, dtype=tf.int32)
    even = tf.cast(2 * counters, tf.uint32)  # [HWC]
    radius_bits = _mix(copy_keys[..., None], even)  # [c,B,HWC]
    angle_bits = _mix(copy_keys[..., None], even + 1)  # [c,B,HWC]
    radius = tf.sqrt(-2.0 * tf.math.log(_unit_interval(radius_bits)))
    noise = radius * tf.cos(2.0 * 3.141592653589793 * _unit_interval(angle_bits))
    return tf.reshape(noise, tf.concat([tf.shape(copy_keys), image_shape], 0))


_GOLDEN_RATIO_32 = 0x9E3779B9


def _hash32(values):
    """uint32 -> uint32: the "lowbias32" integer hash (xor-shift-multiply, two rounds)."""
    values = tf.bitwise.bitwise_xor(values, tf.bitwise.right_shift(values, tf.constant(16, tf.uint32)))
    values = values * tf.constant(0x7FEB352D, tf.uint32)
    values = tf.bitwise.bitwise_xor(values, tf.bitwise.right_shift(values, tf.constant(15, tf.uint32)))
    values = values * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(values, tf.bitwise.right_shift(values, tf.constant(16, tf.uint32)))


def _mix(keys, values):
    """Two uint32 tensors (broadcast) -> one uint32 key that depends on both."""
    return _hash32(tf.bitwise.bitwise_xor(keys, _hash32(values + tf.constant(_GOLDEN_RATIO_32, tf.uint32))))


def _unit_interval(bits):
    """uint32 -> float32 in (0, 1): the top 24 bits, centred, so log() never sees 0."""
    top = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32)
    return (top + 0.5) / float(2 ** 24)


def mean_gradient_over_copies(input_gradient, make_copies, targets, num_copies,
                              copies_per_call=None):
    """Mean input gradient over `num_copies` variants of a batch.

    make_copies(copy_ids[c]) -> images[c,B,H,W,C]; returns grads[B,H,W,C], the mean
    over all copies. The copies are folded into the batch dimension, `copies_per_call`
    at a time (all at once when None), in a graph loop: one gradient call per chunk
    keeps the graph small and memory bounded by the chunk, not by num_copies.
    """
    num_copies = int(num_copies)
    if num_copies < 1:
        raise ValueError(f"num_copies must be >= 1, got {num_copies}")
    chunk = num_copies if copies_per_call is None else max(1, min(int(copies_per_call), num_copies))
    num_chunks = -(-num_copies // chunk)
    tiled_targets = tf.tile(tf.reshape(targets, [-1]), [chunk])  # [chunk*B]

    def gradient_sum(chunk_index):
        copy_ids = chunk_index * chunk + tf.range(chunk)  # [chunk]
        # The last chunk may run past num_copies: repeat a real copy, weigh it 0.
        weights = tf.cast(copy_ids < num_copies, tf.float32)  # [chunk]
        copies = make_copies(tf.minimum(copy_ids, num_copies - 1))  # [chunk,B,H,W,C]
        shape = tf.shape(copies)
        grads = input_gradient(tf.reshape(copies, tf.concat([[-1], shape[2:]], 0)),
                               tiled_targets)  # [chunk*B,H,W,C]
        grads = tf.reshape(tf.cast(grads, tf.float32), shape)  # [chunk,B,H,W,C]
        return tf.tensordot(weights, grads, axes=1)  # [B,H,W,C]

    if num_chunks == 1:
        total = gradient_sum(tf.constant(0))
    else:
        first = gradient_sum(tf.constant(0))
        _, total = tf.while_loop(
            lambda i, _: i < num_chunks,
            lambda i, acc: (i + 1, acc + gradient_sum(i)),
            (tf.constant(1), first))
    return total / float(num_copies)


def _reduce_channels(values, channel_reduce):
    """values[B,H,W,C] -> [B,H,W]."""
    if channel_reduce == "max":
        return tf.reduce_max(values, axis=-1)
    if channel_reduce == "sum":
        return tf.reduce_sum(values, axis=-1)
    raise ValueError(f"channel_reduce must be one of {CHANNEL_REDUCTIONS}, got {channel_reduce!r}")
