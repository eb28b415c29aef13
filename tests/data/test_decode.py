"""Decoding in the pipeline, a batch at a time: every format against Pillow's own
decoding of the same bytes, the reason code of each way a file can fail, found where it
fails, and a batch of every kind at once against each file decoded alone."""

import numpy as np
import pytest
import tensorflow as tf

from sightline.data import decode
from sightline.data.pipeline import prepared_images
from tests.data.images import encode, random_pixels, tiff_with_samples


@pytest.fixture(scope="module")
def decode_graph():
    """decode_batch on one file at its own size (6x7 unless told), traced once per size
    and channel count as the pipeline runs it -> (image[h,w,c] float, reason)."""
    functions = {}

    def run(content, channels=3, size=(6, 7)):
        images, reasons = decode_files(functions, [content], size, channels)
        return images[0], int(reasons[0])

    return run


def decode_files(functions, contents, size, channels):
    """decode_batch in a tf.function, its rows assembled by prepared_images (no
    preprocessing) -> (images[b,h,w,c] float32 in 0..255, reasons[b])."""
    key = (size, channels)
    if key not in functions:
        def decode_and_assemble(data):
            decoded = decode.decode_batch(data, *size, channels)
            return (prepared_images(decoded["pixels"], decoded["float_images"],
                                    decoded["float_rows"], "none"), decoded["reasons"])
        functions[key] = tf.function(decode_and_assemble,
                                     input_signature=[tf.TensorSpec([None], tf.string)])
    images, reasons = functions[key](tf.constant(contents))
    return images.numpy(), reasons.numpy()


@pytest.mark.parametrize("format", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_to_their_pixels(decode_graph, rng, format):
    pixels = random_pixels(rng)
    options = {"lossless": True} if format == "WEBP" else {}
    image, reason = decode_graph(encode(pixels, format, **options))
    assert reason == decode.OK
    np.testing.assert_array_equal(image, pixels.astype(np.float64))


def test_jpeg_and_gif_decode_like_pillow(decode_graph, rng):
    from PIL import Image
    import io
    pixels = random_pixels(rng, 16, 16)
    for format in ("JPEG", "GIF"):
        data = encode(pixels, format)
        image, reason = decode_graph(data, size=(16, 16))
        assert reason == decode.OK, format
        reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64)
        # Two JPEG decoders may round the inverse DCT differently by a level or two.
        np.testing.assert_allclose(image, reference, atol=3 if format == "JPEG" else 0)


def test_a_jpeg_with_bytes_after_its_end_marker_is_whole(decode_graph, rng):
    data = encode(random_pixels(rng), "JPEG") + b"camera trailer" * 20
    assert decode_graph(data)[1] == decode.OK


def test_tiff_16_bit_is_scaled_to_0_255_and_grey_repeated_per_channel(decode_graph):
    values = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    image, reason = decode_graph(encode(values, "TIFF"), channels=3, size=(4, 5))
    assert reason == decode.OK
    expected = values.astype(np.float64) * 255.0 / 65535.0
    for channel in range(3):
        np.testing.assert_allclose(image[..., channel], expected, rtol=1e-6)


def test_rgb_tiff_to_one_channel_is_pillow_luminance(decode_graph, rng):
    pixels = random_pixels(rng)
    image, reason = decode_graph(encode(pixels, "TIFF"), channels=1)
    assert reason == decode.OK
    # ITU-R 601-2 luma, as Pillow's convert("L") defines it (integer rounding).
    luma = pixels.astype(np.float64) @ np.array([299, 587, 114]) / 1000
    np.testing.assert_allclose(image[..., 0], luma, atol=1)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_a_truncated_file_is_reported_as_truncated(decode_graph, rng, format):
    whole = encode(random_pixels(rng, 12, 12), format)
    for cut in (len(whole) // 2, len(whole) - 3):
        assert decode_graph(whole[:cut], size=(12, 12))[1] == decode.TRUNCATED, (format, cut)


@pytest.mark.parametrize("content", [b"", b"hello, not an image at all", b"%PDF-1.7 ...",
                                     b"\x00" * 64])
def test_bytes_of_no_image_format_are_not_an_image(decode_graph, content):
    image, reason = decode_graph(content)
    assert reason == decode.NOT_AN_IMAGE
    assert not image.any()  # a zero row, for the mask to drop


@pytest.mark.parametrize("content", [
    b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 40,  # JPEG 2000
    b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40,  # HEIF
    b"8BPS\x00\x01" + b"\x00" * 40,  # Photoshop
])
def test_known_image_formats_sightline_cannot_decode_are_unsupported(decode_graph, content):
    assert decode_graph(content)[1] == decode.UNSUPPORTED_FORMAT


@pytest.mark.parametrize("samples,reason", [(1, decode.OK), (2, decode.WRONG_CHANNEL_COUNT),
                                            (5, decode.WRONG_CHANNEL_COUNT)])
def test_tiff_channel_counts(decode_graph, samples, reason):
    assert decode_graph(tiff_with_samples(samples), size=(4, 5))[1] == reason


def test_every_reason_code_has_a_reason_text():
    codes = {decode.NOT_AN_IMAGE, decode.TRUNCATED, decode.UNSUPPORTED_FORMAT,
             decode.WRONG_CHANNEL_COUNT, decode.UNSUPPORTED_TIFF, decode.CORRUPT,
             decode.UNREADABLE}
    assert set(decode.SKIP_REASONS) == codes


def test_a_batch_of_every_kind_equals_each_file_decoded_by_pillow(rng):
    """One batch at the model's size 8x9: rows at that size stay uint8, a larger PNG and a
    smaller JPEG are resized, TIFF rows (8- and 16-bit) come from Pillow, failures are
    zero rows with their reason, wherever they fall in the batch."""
    from PIL import Image
    import io
    size = (8, 9)
    sixteen = (rng.random(size) * 65535).astype(np.uint16)
    files = [
        ("same", encode(random_pixels(rng, *size), "PNG"), decode.OK),
        ("cut", encode(random_pixels(rng, *size), "PNG")[:-30], decode.TRUNCATED),
        ("larger", encode(random_pixels(rng, 20, 13), "PNG"), decode.OK),
        ("tiff", encode(random_pixels(rng, *size), "TIFF"), decode.OK),
        ("words", b"not an image", decode.NOT_AN_IMAGE),
        ("smaller", encode(random_pixels(rng, 5, 6), "JPEG"), decode.OK),
        ("sixteen", encode(sixteen, "TIFF"), decode.OK),
        ("bmp", encode(random_pixels(rng, *size), "BMP"), decode.OK),
    ]
    images, reasons = decode_files({}, [content for _, content, _ in files], size, 3)
    assert list(reasons) == [reason for _, _, reason in files]
    for row, (name, content, reason) in enumerate(files):
        if reason != decode.OK:
            assert not images[row].any(), name
            continue
        if name == "sixteen":  # Pillow's 16-bit samples scaled to 0..255, grey to RGB
            expected = np.repeat(sixteen[..., None].astype(np.float64) * 255 / 65535, 3, -1)
        else:
            expected = np.asarray(Image.open(io.BytesIO(content)).convert("RGB"), np.float64)
        if expected.shape[:2] != size:
            # Resizing is TensorFlow's own antialiased bilinear, on the decoded image alone.
            expected = tf.image.resize(expected.astype(np.float32), size, method="bilinear",
                                       antialias=True).numpy()
        atol = 3 if name == "smaller" else 1e-4  # JPEG: two decoders' inverse DCTs
        np.testing.assert_allclose(images[row], expected, atol=atol, err_msg=name)
