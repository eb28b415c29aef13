"""The input pipeline: files read in parallel, decoded a batch at a time, fixed-shape
batches that stay uint8 until the compiled step.

Every batch has the same shape, so the compiled step traces once: the last batch of a
range is padded and carries a validity mask. A sample that cannot be decoded stays in
its batch as an invalid row with its reason code (see decode.py), so the runner records
why from the batch itself.
"""

import numpy as np
import tensorflow as tf

from sightline.config import preprocessing_name
from sightline.data.decode import CORRUPT, OK, UNREADABLE, decode_batch, resize_images
from sightline.errors import UsageError

# ImageNet statistics of the two common conventions (Keras applications' "caffe" and
# "torch" modes): caffe is BGR with mean subtraction on 0..255, torch is RGB on 0..1.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def _divide(numerator, denominator):
    # Inside a tf.function grappler turns x / 255 into x * (1/255), one ulp off for
    # some pixels, enough to flip a ReLU and move a saliency map; it leaves DivNoNan
    # alone, which divides exactly as eager NumPy and tf.data do (the divisors here are
    # never zero).
    return tf.math.divide_no_nan(numerator, tf.constant(denominator, tf.float32))


def preprocess(images, name):
    """images[...,H,W,C] float32 in 0..255 -> the model's input convention, the same
    bits eagerly, in tf.data and inside a compiled function."""
    name = preprocessing_name(name)
    if name == "none":
        return images
    if name == "unit":
        return _divide(images, 255.0)
    if name == "symmetric":
        return _divide(images, 127.5) - 1.0
    if images.shape[-1] != 3:
        raise UsageError(f"preprocessing {name!r} needs 3-channel RGB images; these have "
                         f"{images.shape[-1]} channels")
    if name == "caffe":
        return images[..., ::-1] - tf.constant(_CAFFE_BGR_MEAN, tf.float32)
    return _divide(_divide(images, 255.0) - tf.constant(_TORCH_MEAN, tf.float32), _TORCH_STD)


def prepared_images(pixels, float_images, float_rows, name):
    """A pixel batch -> the model's input: pixels[B,H,W,C] (uint8, or an array's dtype)
    cast to float32, float_images[F,H,W,C] put in rows float_rows[F], preprocessed.
    Meant for the compiled step, where the cast and the preprocessing fuse."""
    images = tf.cast(pixels, tf.float32)
    images = tf.tensor_scatter_nd_update(images, float_rows[:, None], float_images)
    return preprocess(images, name)


def batches(source, start, stop, **options):
    """Fixed-shape batches of samples [start, stop): `shard_batches` with one range."""
    return shard_batches(source, [(start, stop)], **options)


def shard_batches(source, ranges, *, batch_size, image_size, channels, preprocessing="none",
                  resize="stretch"):
    """Fixed-shape batches of the sample ranges `ranges` [(start, stop), ...], in order,
    ready for the model: `pixel_batches` prepared in the pipeline.

    Yields dicts: images[B,H,W,C] float32, labels[B] int32, index[B] int64 (-1 in padding
    and in rows that did not decode), mask[B] bool, skipped_index[B] and
    skipped_reason[B] (the rows that did not decode and why), position[] int64 (which
    range, counted from 0).
    """
    name = preprocessing_name(preprocessing)

    def prepare(batch):
        prepared = {key: value for key, value in batch.items()
                    if key not in ("pixels", "float_images", "float_rows")}
        prepared["images"] = prepared_images(batch["pixels"], batch["float_images"],
                                             batch["float_rows"], name)
        return prepared

    return pixel_batches(source, ranges, batch_size=batch_size, image_size=image_size,
                         channels=channels, resize=resize).map(prepare)


def pixel_batches(source, ranges, *, batch_size, image_size, channels, resize="stretch"):
    """Fixed-shape batches of the sample ranges `ranges` [(start, stop), ...], in order,
    before casting and preprocessing (see `prepared_images`); images of another size
    resized by decode.resize_images with mode `resize` (stretch, pad or crop).

    No batch holds samples of two ranges: each range's last batch is padded. Yields
    dicts: pixels[B,H,W,C] (uint8 for encoded images, the array's dtype for arrays at
    the model's size, float32 for resized arrays), float_images[F,H,W,C] float32 and
    float_rows[F] int32 (rows decoded as floats: resized or TIFF), labels[B] int32,
    index[B] int64, mask[B] bool, skipped_index[B] int64, skipped_reason[B] int32,
    position[] int64.
    """
    height, width = image_size
    tables = source.tables()
    starts = tf.constant(np.asarray([r[0] for r in ranges], np.int64))
    stops = tf.constant(np.asarray([r[1] for r in ranges], np.int64))

    def raw_batches(position):
        # Only the batching per range happens in the flat_map: reading and decoding run
        # outside it, on several batches at once, across range boundaries.
        return (source.record_batches(starts[position], stops[position], batch_size, tables)
                .map(lambda raw, labels, index: (raw, labels, index, position)))

    def decode(raw):
        return decode_batch(source.read_contents(raw), height, width, channels, resize)

    def decode_arrays(content, labels, index, position):
        pixels = content
        if tuple(source.array_shape[:2]) != (height, width):
            pixels = resize_images(content, height, width, resize)
        decoded = {"pixels": pixels,
                   "float_images": tf.zeros([0, height, width, channels], tf.float32),
                   "float_rows": tf.zeros([0], tf.int32),
                   "reasons": tf.zeros(tf.shape(labels), tf.int32)}
        return decoded, labels, index, position

    def pad(decoded, labels, index, position):
        missing = batch_size - tf.shape(labels)[0]
        decoded_rows = decoded["reasons"] == OK
        skipped_index = tf.where(decoded_rows, tf.constant(-1, tf.int64), index)
        index = tf.where(decoded_rows, index, tf.constant(-1, tf.int64))

        def padded(values, value=0):  # values[b, ...] -> [batch_size, ...]
            values = tf.pad(values, [[0, missing]] + [[0, 0]] * (values.shape.rank - 1),
                            constant_values=value)
            return tf.ensure_shape(values, [batch_size, *values.shape[1:]])

        index = padded(index, -1)
        return {
            "pixels": tf.ensure_shape(padded(decoded["pixels"]),
                                      [batch_size, height, width, channels]),
            "float_images": tf.ensure_shape(decoded["float_images"],
                                            [None, height, width, channels]),
            "float_rows": tf.ensure_shape(decoded["float_rows"], [None]),
            "labels": padded(labels, -1),
            "index": index,
            "mask": index >= 0,
            "skipped_index": padded(skipped_index, -1),
            "skipped_reason": padded(decoded["reasons"]),
            "position": position,
        }

    dataset = tf.data.Dataset.range(len(ranges)).flat_map(raw_batches)
    if source.encoded:
        dataset = _decode_batches(dataset, decode, _batch_table(ranges, batch_size),
                                  lambda raw: _decode_rows_apart(
                                      raw, source.read_contents, decode,
                                      (height, width, channels)),
                                  lambda start, stop: source.record_batches(
                                      start, stop, batch_size, tables))
    else:
        dataset = dataset.map(decode_arrays)
    return dataset.map(pad).prefetch(tf.data.AUTOTUNE)


def _batch_table(ranges, batch_size):
    """(starts, stops, positions) int64 tensors, one entry per batch of `ranges`, in the
    order the pipeline makes them."""
    table = [(begin, min(begin + batch_size, stop), position)
             for position, (start, stop) in enumerate(ranges)
             for begin in range(start, stop, batch_size)]
    return tuple(tf.constant(np.asarray(column, np.int64).reshape(-1)) for column in
                 zip(*table)) if table else (tf.zeros([0], tf.int64),) * 3


def _decode_batches(raw_batches, decode, table, decode_apart, read_again):
    """raw_batches of (raw, labels, index, position) -> (decoded, labels, index, position),
    every batch decoded whole, in parallel.

    A file that looks whole but is corrupt inside makes the decoder raise for its whole
    batch (so does a file that can no longer be read): that batch is dropped, and found
    missing by its number; it is read again (read_again(start, stop)) and decoded row by
    row (decode_apart), in its place, and loses only that row. Per-batch datasets built
    to catch the error where it happens cost more than decoding (their functions are
    instantiated per batch): here no function runs per batch except in the rare case.
    """
    starts, stops, positions = table
    count = tf.size(starts, out_type=tf.int64)
    decoded = (raw_batches.enumerate()
               .map(lambda number, batch: (number, (decode(batch[0]), *batch[1:])),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .ignore_errors())
    # A last, empty batch numbered `count`: batches missing at the end are found too.
    first = next(iter(decoded.element_spec[1:]))
    end = tf.data.Dataset.from_tensors((count, tf.nest.map_structure(
        lambda spec: tf.zeros([0 if d is None else d for d in spec.shape], spec.dtype),
        first)))

    def missing_before(expected, element):  # the numbers of the batches dropped before it
        number = element[0]
        return number + 1, (tf.range(expected, number), element)

    def with_missing(missing, element):
        # The element once per missing batch before it (those copies are replaced below),
        # then itself: no function runs here.
        return tf.data.Dataset.from_tensors((missing, element)).repeat(
            tf.size(missing, out_type=tf.int64) + 1).enumerate()

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
    def again(lost):
        # A function of its own: inlined in the branch below, its datasets and loops
        # made every batch's step slower, though the branch almost never runs.
        raw, labels, index = read_again(starts[lost], stops[lost]).get_single_element()
        return decode_apart(raw), labels, index, positions[lost]

    def replace(copy, missing_and_element):
        missing, (number, batch) = missing_and_element
        is_copy = copy < tf.size(missing, out_type=tf.int64)
        return is_copy | (number < count), tf.cond(is_copy, lambda: again(missing[copy]),
                                                   lambda: batch)

    return (decoded.concatenate(end)
            .scan(tf.constant(0, tf.int64), missing_before)
            .flat_map(with_missing)
            .map(replace)
            .filter(lambda keep, _: keep)
            .map(lambda _, batch: batch))


def _decode_rows_apart(raw, read, decode, image_shape):
    """decode (raw[b] -> a decoded batch, see decode.decode_batch) one row at a time, for
    a batch it raised on: a row that `read` cannot read gets the reason UNREADABLE, a row
    whose decoder raises CORRUPT, and every other row is decoded as in a whole batch.
    image_shape: (height, width, channels)."""
    count = tf.shape(raw)[0]
    rows = tf.data.Dataset.range(tf.cast(count, tf.int64)).map(lambda row: tf.cast(row, tf.int32))
    readable = rows.map(lambda row: (row, tf.strings.length(read(raw[row:row + 1]))))
    decoded = rows.map(lambda row: (row, decode(raw[row:row + 1])))
    start = {"pixels": tf.zeros([count, *image_shape], tf.uint8),
             "float_images": tf.zeros([0, *image_shape], tf.float32),
             "float_rows": tf.zeros([0], tf.int32),
             "reasons": tf.fill([count], tf.constant(UNREADABLE, tf.int32))}

    def mark_readable(batch, row_and_length):
        row = row_and_length[0]
        return dict(batch, reasons=tf.tensor_scatter_nd_update(batch["reasons"], [[row]],
                                                                [CORRUPT]))

    def add(batch, row_and_decoded):
        row, one = row_and_decoded
        at = [[row]]
        return {"pixels": tf.tensor_scatter_nd_update(batch["pixels"], at, one["pixels"]),
                "float_images": tf.concat([batch["float_images"], one["float_images"]], 0),
                "float_rows": tf.concat([batch["float_rows"], one["float_rows"] + row], 0),
                "reasons": tf.tensor_scatter_nd_update(batch["reasons"], at, one["reasons"])}

    start = readable.ignore_errors().reduce(start, mark_readable)
    return decoded.ignore_errors().reduce(start, add)
