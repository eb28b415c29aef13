"""The input pipeline: parallel decode and resize, preprocessing, fixed-shape batches.

Every batch has the same shape, so the compiled step traces once: the last batch of a
range is padded and carries a validity mask. A sample that cannot be decoded stays in
its batch as an invalid row with its reason code (see decode.py), so the runner records
why from the batch itself.
"""

import tensorflow as tf

from sightline.config import preprocessing_name
from sightline.data.decode import OK, decode_with_reason

# ImageNet statistics of the two common conventions (Keras applications' "caffe" and
# "torch" modes): caffe is BGR with mean subtraction on 0..255, torch is RGB on 0..1.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def preprocess(images, name):
    """images[...,H,W,C] float32 in 0..255 -> the model's input convention."""
    name = preprocessing_name(name)
    if name == "none":
        return images
    if name == "unit":
        return images / 255.0
    if name == "symmetric":
        return images / 127.5 - 1.0
    if images.shape[-1] != 3:
        raise ValueError(f"preprocessing {name!r} needs 3-channel RGB images; these have "
                         f"{images.shape[-1]} channels")
    if name == "caffe":
        return images[..., ::-1] - tf.constant(_CAFFE_BGR_MEAN, tf.float32)
    return (images / 255.0 - tf.constant(_TORCH_MEAN, tf.float32)) / tf.constant(_TORCH_STD, tf.float32)


def batches(source, start, stop, **options):
    """Fixed-shape batches of samples [start, stop): `shard_batches` with one range."""
    return shard_batches(source, [(start, stop)], **options)


def shard_batches(source, ranges, *, batch_size, image_size, channels, preprocessing="none"):
    """Fixed-shape batches of the sample ranges `ranges` [(start, stop), ...], in order.

    No batch holds samples of two ranges: each range's last batch is padded. Yields
    dicts: images[B,H,W,C] float32, labels[B] int32, index[B] int64 (-1 in padding),
    mask[B] bool (False in padding), position[] int64 (which range, counted from 0).
    One pipeline for all ranges, built in a flat_map: its functions are traced once,
    and prefetching runs across range boundaries.
    """
    import numpy as np
    height, width = image_size
    name = preprocessing_name(preprocessing)
    tables = source.tables()
    starts = tf.constant(np.asarray([r[0] for r in ranges], np.int64))
    stops = tf.constant(np.asarray([r[1] for r in ranges], np.int64))

    def prepare(content, label, index):
        if source.encoded:
            image, reason = decode_with_reason(content, channels)
        else:
            image, reason = content, tf.constant(OK, tf.int32)
        image = tf.cast(image, tf.float32)
        if not source.encoded and source.array_shape[:2] == (height, width):
            resized = image
        else:
            # Antialiased resizing costs as much as decoding: skip it for images that
            # already have the model's size.
            same_size = tf.reduce_all(tf.shape(image)[:2] == tf.constant([height, width]))
            resized = tf.cond(same_size, lambda: image, lambda: tf.image.resize(
                image, (height, width), method="bilinear", antialias=True))
        resized = tf.ensure_shape(resized, [height, width, channels])
        return preprocess(resized, name), label, index, reason

    def pad(images, labels, index, reasons, position):
        count = tf.shape(images)[0]
        missing = batch_size - count
        decoded = reasons == OK
        skipped_index = tf.where(decoded, tf.constant(-1, tf.int64), index)
        index = tf.where(decoded, index, tf.constant(-1, tf.int64))
        index_padded = tf.ensure_shape(tf.pad(index, [[0, missing]], constant_values=-1),
                                       [batch_size])
        return {
            "images": tf.ensure_shape(tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]]),
                                      [batch_size, height, width, channels]),
            "labels": tf.ensure_shape(tf.pad(labels, [[0, missing]], constant_values=-1), [batch_size]),
            "index": index_padded,
            "mask": tf.ensure_shape(index_padded >= 0, [batch_size]),
            "skipped_index": tf.ensure_shape(
                tf.pad(skipped_index, [[0, missing]], constant_values=-1), [batch_size]),
            "skipped_reason": tf.ensure_shape(tf.pad(reasons, [[0, missing]]), [batch_size]),
            "position": position,
        }

    def one_range(position):
        return (source.records(starts[position], stops[position], tables)
                .map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                # Only a file whose first and last bytes look whole but whose inside is
                # corrupt still fails in the decoder: it drops out here, and the runner
                # finds it by its missing index.
                .ignore_errors()
                .batch(batch_size)
                .map(lambda images, labels, index, reasons: pad(images, labels, index, reasons,
                                                                position)))

    return (tf.data.Dataset.range(len(ranges))
            .flat_map(one_range)
            .prefetch(tf.data.AUTOTUNE))
