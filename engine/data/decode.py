"""Decoding encoded images inside the pipeline, with a reason code per image instead of
an error: a file that cannot be read is recorded where it fails, once, with why.

A few bytes at the start and end of each file tell its format and whether it is
whole; only files that pass are decoded. JPEG, PNG, GIF, BMP and WebP are decoded by
TensorFlow in the graph; TIFF (medical and satellite imagery), which TensorFlow does not
read, by Pillow, and only TIFF files take that Python path.
"""

import io
import struct
import warnings

import numpy as np
import tensorflow as tf

OK = 0
NOT_AN_IMAGE = 1
TRUNCATED = 2
UNSUPPORTED_FORMAT = 3
WRONG_CHANNEL_COUNT = 4
UNSUPPORTED_TIFF = 5

# Reason code -> the reason the manifest records for a skipped image.
SKIP_REASONS = {
    NOT_AN_IMAGE: "not an image: the file starts with no known image format signature",
    TRUNCATED: "truncated: the file ends before its image does",
    UNSUPPORTED_FORMAT: "unsupported image format (JPEG 2000, HEIF/AVIF or PSD); convert it "
                        "to PNG, JPEG or TIFF",
    WRONG_CHANNEL_COUNT: "wrong channel count: sightline reads images with 1, 3 or 4 channels",
    UNSUPPORTED_TIFF: "unsupported TIFF variant (compression or sample format Pillow cannot "
                      "decode)",
}

# How far from the end a JPEG's end-of-image marker or a PNG's IEND chunk is looked for:
# some cameras append a few bytes of their own after it.
_TAIL_BYTES = 4096


def decode_with_reason(content, channels):
    """content[] string (an encoded file) -> (image[h,w,channels] float32 in 0..255,
    reason[] int32). reason is OK, or a code of SKIP_REASONS with a 1x1 zero image."""
    reason = _header_reason(content)
    head = _head(content)
    is_tiff = _starts_with(head, b"II*\x00") | _starts_with(head, b"MM\x00*")

    def decode_tiff():
        image, tiff_reason = tf.numpy_function(
            lambda data: _decode_tiff(data, channels), [content], (tf.float32, tf.int32),
            stateful=False)
        return tf.reshape(image, [tf.shape(image)[0], tf.shape(image)[1], channels]), \
            tf.reshape(tiff_reason, [])

    def decode_other():
        image = tf.io.decode_image(content, channels=channels, expand_animations=False)
        return tf.cast(image, tf.float32), tf.constant(OK, tf.int32)

    def skip():
        return tf.zeros([1, 1, channels], tf.float32), reason

    image, reason = tf.cond(
        reason != OK, skip, lambda: tf.cond(is_tiff, decode_tiff, decode_other))
    image.set_shape([None, None, channels])
    return image, reason


def _head(content):
    """The first 16 bytes, padded with NUL bytes: every signature check can slice it."""
    return tf.strings.join([tf.strings.substr(content, 0, 16), b"\x00" * 16])


def _starts_with(head, prefix, offset=0):
    return tf.strings.substr(head, offset, len(prefix)) == prefix


def _ends_with(content, suffix):
    length = tf.strings.length(content)
    return tf.strings.substr(content, tf.maximum(length - len(suffix), 0), len(suffix)) == suffix


def _occurs_near_end(content, marker):
    """Whether the bytes `marker` occur within the last _TAIL_BYTES bytes of content."""
    length = tf.strings.length(content)
    start = tf.maximum(length - _TAIL_BYTES, 0)
    tail = tf.io.decode_raw(tf.strings.substr(content, start, length - start), tf.uint8)
    windows = tf.signal.frame(tail, len(marker), 1)  # [positions, len(marker)]
    return tf.reduce_any(tf.reduce_all(windows == tf.constant(list(marker), tf.uint8), axis=-1))


def _little_endian_uint32(content, offset):
    """The unsigned 32-bit little-endian number at byte `offset` (< 12), as int64."""
    field = tf.strings.substr(_head(content), offset, 4)
    raw = tf.cast(tf.io.decode_raw(field, tf.uint8), tf.int64)
    return raw[0] + raw[1] * 256 + raw[2] * 65536 + raw[3] * 16777216


def _header_reason(content):
    """The reason code a file's first and last bytes give, before any decoding."""
    length = tf.cast(tf.strings.length(content), tf.int64)
    head = _head(content)
    png = _starts_with(head, b"\x89PNG\r\n\x1a\n")
    jpeg = _starts_with(head, b"\xff\xd8\xff")
    gif = _starts_with(head, b"GIF87a") | _starts_with(head, b"GIF89a")
    bmp = _starts_with(head, b"BM")
    webp = _starts_with(head, b"RIFF") & _starts_with(head, b"WEBP", offset=8)
    tiff = _starts_with(head, b"II*\x00") | _starts_with(head, b"MM\x00*")
    unsupported = (_starts_with(head, b"\x00\x00\x00\x0cjP  ")  # JPEG 2000 (jp2)
                   | _starts_with(head, b"\xff\x4f\xff\x51")  # JPEG 2000 codestream
                   | _starts_with(head, b"ftyp", offset=4)  # HEIF, AVIF (ISO media)
                   | _starts_with(head, b"8BPS"))  # Photoshop
    whole = tf.case([
        # PNG: the IEND chunk with its fixed CRC; JPEG: the end-of-image marker.
        (png, lambda: _occurs_near_end(content, b"IEND\xaeB`\x82")),
        (jpeg, lambda: _occurs_near_end(content, b"\xff\xd9")),
        (gif, lambda: _ends_with(content, b";")),
        # BMP and WebP state their own size in the header.
        (bmp, lambda: _little_endian_uint32(content, 2) <= length),
        (webp, lambda: _little_endian_uint32(content, 4) + 8 <= length),
    ], default=lambda: tf.constant(True))
    known = png | jpeg | gif | bmp | webp | tiff
    return tf.where(unsupported, UNSUPPORTED_FORMAT,
                    tf.where(~known, NOT_AN_IMAGE, tf.where(whole, OK, TRUNCATED)))


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
