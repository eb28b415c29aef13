"""Encoded test images of every format the data room reads, whole and broken."""

import io
import struct

import numpy as np
from PIL import Image


def encode(pixels, format, **options):
    """pixels[h,w,c] uint8 (or [h,w] uint16) -> the bytes of one file, by Pillow."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1
                            else pixels)
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def tiff_with_samples(samples, height=4, width=5):
    """An uncompressed little-endian 8-bit TIFF with `samples` samples per pixel, written
    by hand: Pillow writes only the usual 1, 3 and 4."""
    pixels = bytes(range(256)) * (height * width * samples // 256 + 1)
    pixels = pixels[:height * width * samples]
    bits_offset = 8
    data_offset = bits_offset + 2 * samples
    ifd_offset = data_offset + len(pixels)
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, samples, bits_offset),
               (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, data_offset), (277, 3, 1, samples),
               (278, 3, 1, height), (279, 4, 1, len(pixels))]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 and count == 1 else \
            struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    header = b"II*\x00" + struct.pack("<I", ifd_offset)
    return header + struct.pack("<" + "H" * samples, *[8] * samples) + pixels + ifd


def random_pixels(rng, height=6, width=7, channels=3):
    return (rng.random((height, width, channels)) * 255).astype(np.uint8)
