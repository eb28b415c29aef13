"""The job's batch loop: a source's batches through the compiled step on every device,
back on the host as the shard layout's arrays, with the rows that did not decode and why.

Each generator yields (position, arrays, failures) per batch: the batch's shard position,
its samples in the shard layout (float16 maps, cast inside the compiled function so that
they reach the host once), and {sample index: reason} of its rows that could not be decoded.
"""

import time

import numpy as np

from sightline.store.layout import (PRED_CLASS, PRED_SCORE, PRED_TARGET, RELEVANCE,
                                    RELEVANCE_SCALE, SAMPLE_INDEX, SAMPLE_KEY, SAMPLE_LABEL,
                                    heatmap, heatmap_method, heatmap_scale,
                                    in_relevance_group)

# A compiled call of the array path takes about this long at most, so that the progress
# bar moves while a slow model works through its batches (see CallPace).
CALL_SECONDS = 1.0


class CallPace:
    """How many batches the array path's next compiled call takes: one for the first call
    (the start-up, tracing included, alone) and the second (the first steady measure),
    then as many as the measured speed fits in CALL_SECONDS, at most doubling from call
    to call and at most `most` (batches_per_call's memory and speed rule)."""

    def __init__(self, most, seconds=CALL_SECONDS):
        self.most, self.seconds = most, seconds
        self.calls, self.count = 0, 1

    def next(self):
        return self.count

    def took(self, batches, seconds):
        self.calls += 1
        if self.calls > 1:
            fit = int(self.seconds * batches / max(seconds, 1e-9))
            self.count = max(1, min(self.most, 2 * batches, fit))


def stored_dtypes(outputs):
    """The step's outputs cast to the shard's dtypes inside the compiled function, so
    each reaches the host once, already in the stored dtype (float16 maps)."""
    import tensorflow as tf
    stored = {}
    for name, value in outputs.items():
        if name == "relevance":
            # float16 keeps 3 digits but not the range of raw relevances (1e-8 to 1e3):
            # each sample's vector is scaled to max |r| = 1, its factor kept in float32.
            scale = tf.reduce_max(tf.abs(value), axis=1)  # [B]
            stored[RELEVANCE] = tf.cast(value / tf.where(scale > 0, scale, 1.0)[:, None],
                                        tf.float16)
            stored[RELEVANCE_SCALE] = scale
            continue
        # The step names its maps as the shards do (compute cannot import the store).
        dtype = tf.float16 if heatmap_method(name) else (
            tf.int32 if name in ("targets", "predictions") else tf.float32)
        stored[name] = tf.cast(value, dtype)
    return stored


def single_device_batches(config, plan, ranges):
    """(position, arrays, failures) per batch on one device: the step called directly,
    without the distributed dataset's per-batch bookkeeping. Batches reach the compiled
    function as they are read (uint8 pixels for encoded images and 8-bit arrays); the
    cast and the preprocessing run inside it. Array sources (.npy, HDF5) are sliced
    several batches at a time, one compiled call each."""
    import tensorflow as tf

    from sightline.compute.step import batches_per_call, build_batches_function
    from sightline.data.decode import resize_images
    from sightline.data.pipeline import pixel_batches, prepared_images
    from sightline.data.sources import array_batches
    step = plan.step
    height, width, channels = plan.image_shape
    batch_size = config.batch_size
    name = config.preprocess

    if plan.source.encoded:
        # One trace per job: the number of float rows (resized or TIFF images) varies
        # from batch to batch.
        @tf.function(input_signature=[
            tf.TensorSpec([batch_size, height, width, channels], tf.uint8),
            tf.TensorSpec([None, height, width, channels], tf.float32),
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([batch_size], tf.int32),
            tf.TensorSpec([batch_size], tf.int64)])
        def encoded_step(pixels, float_images, float_rows, targets, index):
            images = prepared_images(pixels, float_images, float_rows, name)
            return stored_dtypes(step(images, targets, index))

        dataset = pixel_batches(plan.source, ranges, batch_size=batch_size,
                                image_size=(height, width), channels=channels,
                                resize=config.resize)
        for element in dataset.map(with_targets(config)):
            outputs = encoded_step(element["pixels"], element["float_images"],
                                   element["float_rows"], element["targets"],
                                   element["index"])
            index = element["index"].numpy()
            # Rows that did not decode carry index -1 wherever they fall, padding at the end.
            yield (int(element["position"].numpy()[0]),
                   batch_arrays(outputs, index, element["labels"].numpy(), index >= 0,
                                 plan.encoded_keys),
                   decode_failures(plan.strategy, element))
        return

    resize = tuple(plan.source.array_shape[:2]) != (height, width)
    no_float_images = tf.zeros([0, height, width, channels], tf.float32)
    no_float_rows = tf.zeros([0], tf.int32)

    def array_step(pixels, targets, index):
        # Resizing (arrays of another size than the model's), cast and preprocessing run
        # in the compiled function, on the array's own dtype.
        if resize:
            pixels = resize_images(pixels, height, width, config.resize)
        images = prepared_images(pixels, no_float_images, no_float_rows, name)
        return stored_dtypes(step(images, targets, index))

    # Several batches per call, as explain() runs them: one call per batch cost the job
    # over a .npy 0.80 of explain()'s rate (py-spy: 88% of the loop in the step).
    # Calls of a few batches at first, so the bar moves after the start-up (CallPace).
    pace = CallPace(batches_per_call(batch_size, height * width * channels * 4))
    run = build_batches_function(array_step, batch_size, plan.source.array_shape,
                                 plan.source.array_dtype())
    for position, raw, labels, index, count in array_batches(plan.source, ranges, batch_size,
                                                             pace.next):
        started = time.monotonic()
        outputs = run(tf.convert_to_tensor(raw), targets_of(config, labels), index)
        # Arrays have nothing to decode: the first `count` rows are the samples.
        arrays = batch_arrays(outputs, index, labels, slice(0, count), plan.encoded_keys)
        pace.took(len(raw) // batch_size, time.monotonic() - started)
        yield position, arrays, {}


def distributed_batches(config, plan, ranges):
    """(position, arrays, failures) per batch, each batch split over the strategy's
    devices."""
    import tensorflow as tf

    from sightline.data.pipeline import shard_batches
    strategy, step = plan.strategy, plan.step

    @tf.function
    def distributed_step(images, targets, index):
        # A jit-compiled function handed straight to strategy.run fails on CPU; a plain
        # Python callable around it works.
        return strategy.run(lambda i, t, s: stored_dtypes(step(i, t, s)),
                            args=(images, targets, index))

    def gather(value):
        return gather_replicas(strategy, value)

    dataset = shard_batches(plan.source, ranges, batch_size=config.batch_size,
                            image_size=plan.image_shape[:2], channels=plan.image_shape[2],
                            preprocessing=config.preprocess, resize=config.resize)
    dataset = dataset.map(with_targets(config))
    for element in strategy.experimental_distribute_dataset(dataset):
        outputs = distributed_step(element["images"], element["targets"], element["index"])
        outputs = {name: gather(value) for name, value in outputs.items()}
        index = gather(element["index"])
        valid = index >= 0
        arrays = batch_arrays(outputs, index, gather(element["labels"]), valid,
                               plan.encoded_keys)
        yield (int(strategy.experimental_local_results(element["position"])[0][0]), arrays,
               decode_failures(strategy, element))


def with_targets(config):
    """A dataset map: each batch gains the explained classes (targets[B]) and its
    position repeated per sample, so the batch can be split over replicas."""
    import tensorflow as tf

    def attach(batch):
        if config.target == "label":
            targets = batch["labels"]
        elif config.target == "predicted":
            targets = tf.fill(tf.shape(batch["labels"]), -1)
        else:
            targets = tf.fill(tf.shape(batch["labels"]), int(config.target))
        # The position is repeated per sample so the batch can be split over replicas.
        return dict(batch, targets=tf.cast(targets, tf.int32),
                    position=tf.fill(tf.shape(batch["index"]), batch["position"]))

    return attach


def gather_replicas(strategy, value):
    """A per-replica value -> one NumPy array over the whole batch."""
    return np.concatenate([np.asarray(p) for p in strategy.experimental_local_results(value)])


def decode_failures(strategy, element):
    """{sample index: reason} of the batch's rows the pipeline could not decode."""
    from sightline.data.decode import SKIP_REASONS
    index = gather_replicas(strategy, element["skipped_index"])
    reasons = gather_replicas(strategy, element["skipped_reason"])
    return {int(i): SKIP_REASONS[int(r)] for i, r in zip(index, reasons) if i >= 0}


def targets_of(config, labels):
    """targets[B] int32 for a batch: the labels, -1 (the predicted class) or one class."""
    if config.target == "label":
        return labels
    if config.target == "predicted":
        return np.full(labels.shape, -1, np.int32)
    return np.full(labels.shape, int(config.target), np.int32)


def batch_arrays(outputs, index, labels, samples, encoded_keys):
    """One batch's samples in the shard layout. samples: which rows are samples (a slice,
    or a boolean mask where undecodable rows and padding carry index -1). outputs: the
    step's results, tensors or arrays, already in the stored dtypes."""
    def rows(value):
        return np.asarray(value)[samples]

    index = rows(index).astype(np.int64, copy=False)
    arrays = {
        SAMPLE_INDEX: index,
        SAMPLE_LABEL: rows(labels).astype(np.int32, copy=False),
        SAMPLE_KEY: encoded_keys[index],
        PRED_TARGET: rows(outputs["targets"]),
        PRED_CLASS: rows(outputs["predictions"]),
        PRED_SCORE: rows(outputs["scores"]),
    }
    for name, value in outputs.items():
        method = heatmap_method(name)
        if in_relevance_group(name):
            arrays[name] = rows(value)
        if method:
            arrays[heatmap(method)] = rows(value)
            arrays[heatmap_scale(method)] = rows(outputs[f"scales/{method}"])
    return arrays
