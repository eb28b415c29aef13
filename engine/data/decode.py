"""Decoding whole batches of encoded images inside the pipeline, with a reason code per
image instead of an error: a file that cannot be read is recorded where it fails, once,
with why, and loses nothing else of its batch.

A few bytes at the start and end of each file tell its format and whether it is
whole (string ops over the whole batch); only files that pass are decoded. JPEG, PNG, GIF, BMP and WebP are decoded by
TensorFlow in the graph; TIFF (medical and satellite imagery), which TensorFlow does not
read, by Pillow, and only TIFF files take that Python path.
"""

import io
import struct
import warnings
import zlib

import numpy as np
import tensorflow as tf

from sightline.errors import UsageError

OK = 0
NOT_AN_IMAGE = 1
TRUNCATED = 2
UNSUPPORTED_FORMAT = 3
WRONG_CHANNEL_COUNT = 4
UNSUPPORTED_TIFF = 5
CORRUPT = 6
UNREADABLE = 7

# Reason code -> the reason the manifest records for a skipped image.
SKIP_REASONS = {
    NOT_AN_IMAGE: "not an image: the file starts with no known image format signature",
    TRUNCATED: "truncated: the file ends before its image does",
    UNSUPPORTED_FORMAT: "unsupported image format (JPEG 2000, HEIF/AVIF or PSD); convert it "
                        "to PNG, JPEG or TIFF",
    WRONG_CHANNEL_COUNT: "wrong channel count: sightline reads images with 1, 3 or 4 channels",
    UNSUPPORTED_TIFF: "unsupported TIFF variant (compression or sample format Pillow cannot "
                      "decode)",
    CORRUPT: "corrupt image data: the decoder failed inside a file whose start and end look "
             "whole",
    UNREADABLE: "unreadable: reading the file failed (moved, removed or made unreadable after "
                "the data was listed?)",
}

# How far from the end a JPEG's end-of-image marker is looked for: some cameras append
# data of their own after it.
_TAIL_BYTES = 4096


# What --resize pad puts around a letterboxed image: black, pixel value 0 before the
# preprocessing (so -1 after [-1,1], minus the mean after caffe).
PAD_VALUE = 0.0


def resize_images(images, height, width, mode="stretch"):
    """images[...,h,w,C] -> float32 [...,height,width,C]: every source's one resizing rule
    (bilinear with antialiasing, so downsizing averages rather than skips pixels).

    mode (sightline.config.RESIZE_MODES), for an image of another aspect ratio:
      stretch  each side scaled on its own, the aspect ratio lost (the default);
      pad      scaled by s = min(height/h, width/w) to round(h*s) x round(w*s), placed at
               ((height - round(h*s)) // 2, (width - round(w*s)) // 2) on PAD_VALUE;
      crop     the centred window of the target's aspect ratio kept (round(h*width/height)
               columns of a wider image from (w - that) // 2, or round(w*height/width)
               rows of a taller one), then scaled to height x width.
    """
    images = tf.cast(images, tf.float32)
    if mode == "stretch":
        return _stretch(images, (height, width))
    if mode not in ("pad", "crop"):
        raise UsageError(f"resize mode must be stretch, pad or crop; got {mode!r}")
    shape = tf.shape(images)
    rank = images.shape.rank
    h = tf.cast(shape[rank - 3], tf.float64)
    w = tf.cast(shape[rank - 2], tf.float64)
    if mode == "crop":
        wider = w * height > h * width  # [] bool: columns to cut, else rows
        keep_w = tf.where(wider, tf.round(h * width / height), w)
        keep_h = tf.where(wider, h, tf.round(w * height / width))
        top = tf.cast((h - keep_h) // 2, tf.int32)
        left = tf.cast((w - keep_w) // 2, tf.int32)
        window = images[..., top:top + tf.cast(keep_h, tf.int32),
                        left:left + tf.cast(keep_w, tf.int32), :]
        return tf.ensure_shape(_stretch(window, (height, width)),
                               [*images.shape[:-3], height, width, images.shape[-1]])
    scale = tf.minimum(height / h, width / w)
    new_h = tf.cast(tf.maximum(tf.round(h * scale), 1), tf.int32)
    new_w = tf.cast(tf.maximum(tf.round(w * scale), 1), tf.int32)
    scaled = _stretch(images, tf.stack([new_h, new_w]))
    top, left = (height - new_h) // 2, (width - new_w) // 2
    paddings = tf.concat([tf.zeros([rank - 3, 2], tf.int32),
                          [[top, height - new_h - top], [left, width - new_w - left]],
                          tf.zeros([1, 2], tf.int32)], 0)
    padded = tf.pad(scaled, paddings, constant_values=PAD_VALUE)
    return tf.ensure_shape(padded, [*images.shape[:-3], height, width, images.shape[-1]])


def _stretch(images, size):
    return tf.image.resize(images, size, method="bilinear", antialias=True)


def decode_batch(contents, height, width, channels, resize="stretch"):
    """contents[b] string (encoded files) -> a dict of the batch, decoded:

    pixels[b,height,width,channels] uint8: the rows TensorFlow decoded at the model's
        size, zeros in every other row;
    float_images[F,height,width,channels] float32 in 0..255, and float_rows[F] int32
        (which rows they replace): rows of another size (resized by `resize_images`
        with mode `resize`) and TIFF rows (16-bit values scaled to 0..255 are not
        integers);
    reasons[b] int32: OK, or a code of SKIP_REASONS (that row is zeros).

    One loop over the batch decodes every row at once; the batch stays uint8 in the
    common case (every image at the model's size), so casting and preprocessing happen
    in the compiled step (see pipeline.prepared_images). A file that looks whole but is
    corrupt inside makes the decoder raise for the whole batch (the pipeline then decodes
    that batch row by row).
    """
    reasons, is_tiff = _inspect(contents)
    by_tensorflow = (reasons == OK) & ~is_tiff
    # Rows TensorFlow's decoders must not see decode a blank image instead: the loop
    # stays branch-free (a tf.cond per row cost as much as decoding a 28x28 PNG).
    decodable = tf.where(by_tensorflow, contents, tf.constant(_BLANK_PNG))
    flat, sizes = _decode_flat(decodable, channels)
    # Every row's pixels at the model's size in one op: cut or padded to height*width*
    # channels values; rows of another size are replaced by their float_images row.
    ragged = tf.RaggedTensor.from_row_lengths(flat, sizes[:, 0] * sizes[:, 1] * channels)
    pixels = tf.cond(
        tf.reduce_all(sizes == [height, width]),
        lambda: tf.reshape(flat, [-1, height, width, channels]),  # the common batch
        lambda: tf.reshape(ragged.to_tensor(shape=[None, height * width * channels]),
                           [-1, height, width, channels]))

    other_size = tf.reduce_any(sizes != [height, width], axis=1)  # [b]
    other_rows = tf.cast(tf.where(by_tensorflow & other_size)[:, 0], tf.int32)  # [R]
    tiff_rows = tf.cast(tf.where((reasons == OK) & is_tiff)[:, 0], tf.int32)  # [T]
    common = {"pixels": pixels,
              "float_images": tf.zeros([0, height, width, channels], tf.float32),
              "float_rows": tf.zeros([0], tf.int32), "reasons": reasons}
    # One branch per batch: the common batch has no row of another size and no TIFF.
    return tf.cond(
        (tf.size(other_rows) > 0) | (tf.size(tiff_rows) > 0),
        lambda: _float_rows(contents, common, (height, width, channels), ragged, sizes,
                            other_rows, tiff_rows, resize),
        lambda: common)


def _float_rows(contents, decoded, image_shape, ragged, sizes, other_rows, tiff_rows, resize):
    """decode_batch's result with its float rows: the rows TensorFlow decoded at another
    size (ragged[row], sizes[row]) resized, and the TIFF rows decoded by Pillow (their
    reason set: a TIFF that fails loses its row)."""
    height, width, channels = image_shape

    def resized(image):  # [h,w,C] float32 -> [height,width,C]
        # Antialiased resizing costs as much as decoding: only rows of another size.
        return resize_images(image, height, width, resize)

    other_images = tf.map_fn(
        lambda row: resized(tf.cast(tf.reshape(ragged[row], [sizes[row, 0], sizes[row, 1],
                                                             channels]), tf.float32)),
        other_rows, fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))

    def decode_tiff(row):
        image, tiff_reason = tf.numpy_function(
            lambda data: _decode_tiff(data, channels), [contents[row]], (tf.float32, tf.int32),
            stateful=False)
        image = tf.reshape(image, [tf.shape(image)[0], tf.shape(image)[1], channels])
        same_size = tf.reduce_all(tf.shape(image)[:2] == [height, width])
        image = tf.cond(same_size, lambda: image, lambda: resized(image))
        return tf.ensure_shape(image, [height, width, channels]), tf.reshape(tiff_reason, [])

    tiff_images, tiff_reasons = tf.map_fn(decode_tiff, tiff_rows, fn_output_signature=(
        tf.TensorSpec([height, width, channels], tf.float32), tf.int32))
    tiff_decoded = tiff_reasons == OK
    return {
        "pixels": decoded["pixels"],
        "float_images": tf.concat([other_images, tf.boolean_mask(tiff_images, tiff_decoded)],
                                  0),
        "float_rows": tf.concat([other_rows, tf.boolean_mask(tiff_rows, tiff_decoded)], 0),
        "reasons": tf.tensor_scatter_nd_update(decoded["reasons"], tiff_rows[:, None],
                                               tiff_reasons),
    }


def _decode_flat(contents, channels):
    """contents[b] -> (flat[sum of h*w*channels] uint8: every row's pixels one after
    the other, sizes[b,2] int32: each row's (h, w)). A plain loop with one decoder op
    per row and nothing else: each op of a loop's body cost as much as decoding a
    28x28 PNG."""
    count = tf.shape(contents)[0]

    def body(row, pixels, sizes):
        image = tf.io.decode_image(contents[row], channels=channels, expand_animations=False)
        return (row + 1, pixels.write(row, tf.reshape(image, [-1])),
                sizes.write(row, tf.shape(image)[:2]))

    # parallel_iterations=1: tf.data already decodes several batches at once; a wider
    # loop measured slower on two cores.
    _, pixels, sizes = tf.while_loop(
        lambda row, *_: row < count, body,
        (tf.constant(0), tf.TensorArray(tf.uint8, size=count, infer_shape=False,
                                        element_shape=[None]),
         tf.TensorArray(tf.int32, size=count, element_shape=[2])),
        parallel_iterations=1)
    return pixels.concat(), tf.reshape(sizes.stack(), [-1, 2])


def _blank_png():
    """The bytes of a 1x1 8-bit grey PNG, black."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))


_BLANK_PNG = _blank_png()


def _inspect(contents):
    """contents[b] string -> (reasons[b] int32, is_tiff[b] bool), from each file's first
    16 and last few thousand bytes, with no branches: a few byte ops over the whole
    batch, before any decoding."""
    length = tf.strings.length(contents)  # [b]
    total = tf.cast(length, tf.int64)
    # Each file's first 16 bytes (zeros after a shorter file) as one uint8 matrix.
    head = tf.io.decode_raw(tf.strings.substr(
        tf.strings.join([tf.strings.substr(contents, 0, 16), b"\x00" * 16]), 0, 16),
        tf.uint8, fixed_length=16)  # [b, 16]

    def starts_with(prefix, offset=0):
        expected = tf.constant(np.frombuffer(prefix, np.uint8))
        return tf.reduce_all(head[:, offset:offset + len(prefix)] == expected, axis=1)  # [b]

    def declared_size(offset):  # a little-endian 32-bit size field in the header
        field = tf.cast(head[:, offset:offset + 4], tf.int64)  # [b, 4]
        value = tf.reduce_sum(field * tf.constant([1, 1 << 8, 1 << 16, 1 << 24], tf.int64),
                              axis=1)  # [b]
        return tf.where(value >= 1 << 31, value - (1 << 32), value)  # signed, as stored

    def ends_with(suffix):
        start = tf.maximum(length - len(suffix), 0)
        return tf.strings.substr(contents, start, tf.fill(tf.shape(start), len(suffix))) == suffix

    png = starts_with(b"\x89PNG\r\n\x1a\n")
    jpeg = starts_with(b"\xff\xd8\xff")
    gif = starts_with(b"GIF87a") | starts_with(b"GIF89a")
    bmp = starts_with(b"BM")
    webp = starts_with(b"RIFF") & starts_with(b"WEBP", offset=8)
    tiff = starts_with(b"II*\x00") | starts_with(b"MM\x00*")
    unsupported = (starts_with(b"\x00\x00\x00\x0cjP  ")  # JPEG 2000 (jp2)
                   | starts_with(b"\xff\x4f\xff\x51")  # JPEG 2000 codestream
                   | starts_with(b"ftyp", offset=4)  # HEIF, AVIF (ISO media)
                   | starts_with(b"8BPS"))  # Photoshop
    whole = ((png & ends_with(b"IEND\xaeB`\x82"))  # the IEND chunk and its fixed CRC
             | (jpeg & _jpeg_ends(contents, jpeg))
             | (gif & ends_with(b";"))  # the GIF trailer
             | (bmp & (declared_size(2) <= total))  # BMP and WebP state their own size
             | (webp & (declared_size(4) + 8 <= total))
             | tiff)  # TIFF: Pillow tells (see _decode_tiff)
    known = png | jpeg | gif | bmp | webp | tiff
    reason = tf.where(unsupported, UNSUPPORTED_FORMAT,
                      tf.where(~known, NOT_AN_IMAGE, tf.where(whole, OK, TRUNCATED)))
    return tf.cast(reason, tf.int32), tiff & ~unsupported


def _jpeg_ends(contents, jpeg):
    """contents[b], jpeg[b] bool -> [b] bool: the JPEG rows whose last _TAIL_BYTES bytes
    hold the end-of-image marker FF D9 (False in the other rows)."""
    rows = tf.where(jpeg)  # [J, 1]
    chosen = tf.gather_nd(contents, rows)  # [J]
    length = tf.strings.length(chosen)
    start = tf.maximum(length - _TAIL_BYTES, 0)
    tail = tf.strings.substr(chosen, start, length - start)
    # Zero bytes after short tails give every row _TAIL_BYTES bytes, one uint8 matrix
    # (zeros hold no FF D9).
    tail = tf.strings.substr(tf.strings.join([tail, b"\x00" * _TAIL_BYTES]), 0, _TAIL_BYTES)
    tail = tf.io.decode_raw(tail, tf.uint8, fixed_length=_TAIL_BYTES)  # [J, _TAIL_BYTES]
    found = tf.reduce_any((tail[:, :-1] == 0xFF) & (tail[:, 1:] == 0xD9), axis=1)  # [J]
    return tf.scatter_nd(rows, found, tf.shape(jpeg, out_type=tf.int64))


def _decode_tiff(data, channels):
    """TIFF bytes -> (image[h,w,channels] float32 in 0..255, reason int32), by Pillow."""
    from PIL import Image, UnidentifiedImageError
    data = data.item() if isinstance(data, np.ndarray) else data  # a 0-d array of bytes
    empty = np.zeros((1, 1, channels), np.float32)
    samples = _tiff_samples_per_pixel(data)
    if samples is not None and samples not in (1, 3, 4):
        return empty, np.int32(WRONG_CHANNEL_COUNT)
    try:
        with warnings.catch_warnings():  # the reason code says it; no warning per file
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                pixels = _pillow_to_channels(image, channels)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, KeyError) as error:
        # Cut inside its pixels, Pillow says "truncated"; cut inside the directory of
        # tags, it cannot identify the file at all.
        truncated = "truncated" in str(error) or _tiff_directory_cut(data)
        return empty, np.int32(TRUNCATED if truncated else UNSUPPORTED_TIFF)
    return pixels, np.int32(OK)


def _pillow_to_channels(image, channels):
    """A Pillow image -> [h,w,channels] float32 in 0..255 (16-bit and 32-bit integer
    samples scaled down from their full range, float samples kept)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, np.float32)
        if image.mode.startswith("I;16"):
            values = values * (255.0 / 65535.0)
        elif image.mode == "I":
            values = values * (255.0 / 4294967295.0)
        values = values[..., None]  # [h,w,1]: one sample per pixel
        if channels == 1:
            return values
        alpha = np.full_like(values, 255.0)
        return np.concatenate([values] * 3 + ([alpha] if channels == 4 else []), axis=-1)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    return np.asarray(image.convert(mode), np.float32).reshape(image.size[1], image.size[0],
                                                               channels)


def _tiff_samples_per_pixel(data):
    """SamplesPerPixel (tag 277) of a TIFF's first image, or None when unreadable. Read
    from the header here because Pillow refuses to open files with unusual counts."""
    if len(data) < 8:
        return None
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None:
        return None
    try:
        offset, = struct.unpack(order + "I", data[4:8])
        count, = struct.unpack(order + "H", data[offset:offset + 2])
        for entry in range(count):
            start = offset + 2 + 12 * entry
            tag, kind = struct.unpack(order + "HH", data[start:start + 4])
            if tag == 277:
                value = data[start + 8:start + 10] if kind == 3 else data[start + 8:start + 12]
                return struct.unpack(order + ("H" if kind == 3 else "I"), value)[0]
    except struct.error:
        return None
    return 1  # the TIFF default


def _tiff_directory_cut(data):
    """Whether the file ends inside (or before) its first directory of tags."""
    order = "<" if bytes(data[:2]) == b"II" else ">"
    try:
        offset, = struct.unpack(order + "I", data[4:8])
        count, = struct.unpack(order + "H", data[offset:offset + 2])
    except struct.error:
        return True
    return offset + 2 + 12 * count + 4 > len(data)
