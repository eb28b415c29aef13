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

# How far from the end a JPEG's end-of-image marker is looked for: some cameras append
# data of their own after it.
_TAIL_BYTES = 4096


def decode_with_reason(content, channels):
    """content[] string (an encoded file) -> (image[h,w,channels] float32 in 0..255,
    reason[] int32). reason is OK, or a code of SKIP_REASONS with a 1x1 zero image."""
    reason, is_tiff = _inspect(content)

    def decode_other():
        image = tf.io.decode_image(content, channels=channels, expand_animations=False)
        return tf.cast(image, tf.float32), tf.constant(OK, tf.int32)

    def decode_tiff():
        image, tiff_reason = tf.numpy_function(
            lambda data: _decode_tiff(data, channels), [content], (tf.float32, tf.int32),
            stateful=False)
        return (tf.reshape(image, [tf.shape(image)[0], tf.shape(image)[1], channels]),
                tf.reshape(tiff_reason, []))

    def skip():
        return tf.zeros([1, 1, channels], tf.float32), reason

    # One branch op per image (the checks above are branch-free): 0 TensorFlow's
    # decoders, 1 Pillow for TIFF, 2 nothing to decode.
    branch = tf.where(reason != OK, 2, tf.where(is_tiff, 1, 0))
    image, reason = tf.switch_case(branch, [decode_other, decode_tiff, skip])
    image.set_shape([None, None, channels])
    return image, reason


def _inspect(content):
    """(reason code, is TIFF) from a file's first 16 and last few thousand bytes, with
    no branches: a few small string and byte ops per file, before any decoding."""
    length = tf.strings.length(content)
    head = tf.strings.join([tf.strings.substr(content, 0, 16), b"\x00" * 16])  # >= 32 bytes

    def starts_with(prefix, offset=0):
        return tf.strings.substr(head, offset, len(prefix)) == prefix

    def declared_size(offset):  # a little-endian 32-bit size field in the header
        field = tf.io.decode_raw(tf.strings.substr(head, offset, 4), tf.int32)[0]
        return tf.cast(field, tf.int64)

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

    def ends_with(suffix):
        return tf.strings.substr(content, tf.maximum(length - len(suffix), 0),
                                 len(suffix)) == suffix

    # JPEG: the end-of-image marker FF D9, looked for in the last _TAIL_BYTES bytes.
    start = tf.maximum(length - _TAIL_BYTES, 0)
    tail = tf.io.decode_raw(tf.strings.substr(content, start, length - start), tf.uint8)
    jpeg_end = tf.reduce_any((tail[:-1] == 0xFF) & (tail[1:] == 0xD9))
    total = tf.cast(length, tf.int64)
    whole = ((png & ends_with(b"IEND\xaeB`\x82"))  # the IEND chunk and its fixed CRC
             | (jpeg & jpeg_end)
             | (gif & ends_with(b";"))  # the GIF trailer
             | (bmp & (declared_size(2) <= total))  # BMP and WebP state their own size
             | (webp & (declared_size(4) + 8 <= total))
             | tiff)  # TIFF: Pillow tells (see _decode_tiff)
    known = png | jpeg | gif | bmp | webp | tiff
    reason = tf.where(unsupported, UNSUPPORTED_FORMAT,
                      tf.where(~known, NOT_AN_IMAGE, tf.where(whole, OK, TRUNCATED)))
    return tf.cast(reason, tf.int32), tiff & ~unsupported


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
