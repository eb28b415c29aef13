"""The pipeline a batch at a time: a file corrupt inside loses only its own row, and
preprocessing gives the same bits inside a compiled function as in NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from sightline.data import decode
from sightline.data.pipeline import pixel_batches, preprocess
from sightline.data.sources import open_source

# Whole at both ends (signature, IEND chunk), garbage inside: only the decoder fails.
CORRUPT_INSIDE = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20 + b"IEND\xaeB`\x82"


def test_a_file_corrupt_inside_loses_only_its_row(tmp_path, rng):
    """Ranges of 6 and 5 files in batches of 4: file 5 sits in the middle of a batch,
    file 10 is the whole last batch; every other file is in its batch, pixel for pixel."""
    written = {}
    for i in range(11):
        path = tmp_path / f"{i:02d}.png"
        if i in (5, 10):
            path.write_bytes(CORRUPT_INSIDE)
        else:
            written[i] = (rng.random((4, 5, 3)) * 255).astype(np.uint8)
            tf.io.write_file(str(path), tf.io.encode_png(written[i]))
    batches = list(pixel_batches(open_source(str(tmp_path)), [(0, 6), (6, 11)], batch_size=4,
                                 image_size=(4, 5), channels=3))
    assert [int(b["position"]) for b in batches] == [0, 0, 1, 1]
    seen, skipped = [], {}
    for batch in batches:
        for row, index in enumerate(batch["index"].numpy()):
            if index >= 0:
                np.testing.assert_array_equal(batch["pixels"][row], written[index])
                seen.append(int(index))
        for index, reason in zip(batch["skipped_index"].numpy(),
                                 batch["skipped_reason"].numpy()):
            if index >= 0:
                skipped[int(index)] = int(reason)
    assert seen == sorted(written)
    assert skipped == {5: decode.CORRUPT, 10: decode.CORRUPT}


@pytest.mark.parametrize("name", ["none", "[0,1]", "[-1,1]", "caffe", "torch"])
def test_preprocessing_in_a_compiled_function_is_numpy_float32_exactly(name):
    """Every 8-bit value in every channel: a compiled function (where grappler would
    turn x / 255 into x * (1/255)) gives NumPy's float32 results to the bit, as
    explain() on arrays preprocessed by NumPy would see them."""
    values = np.stack([np.arange(256, dtype=np.float32)] * 3, axis=-1).reshape(1, 16, 16, 3)
    mean = np.float32([0.485, 0.456, 0.406])
    std = np.float32([0.229, 0.224, 0.225])
    expected = {
        "none": values,
        "[0,1]": values / np.float32(255),
        "[-1,1]": values / np.float32(127.5) - np.float32(1),
        "caffe": values[..., ::-1] - np.float32([103.939, 116.779, 123.68]),
        "torch": (values / np.float32(255) - mean) / std,
    }[name]
    compiled = tf.function(lambda images: preprocess(images, name))
    np.testing.assert_array_equal(compiled(tf.constant(values)).numpy(), expected)
