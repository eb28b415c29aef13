"""Model files with flipped bytes: never a traceback, always one ValueError line that
says the file is damaged (and which part) or could not be loaded."""

import os
import re
import shutil

import numpy as np
import pytest

from sightline.model.loading import load_model
from tests import models

VARIANTS = 30


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    paths = {}
    for flavor, suffix in (("tf_keras", ".h5"), ("keras3", ".keras")):
        path = str(root / f"model{suffix}")
        models.functional_cnn(flavor, input_shape=(8, 8, 3), num_classes=3, seed=0).save(path)
        paths[suffix] = path
    return root, paths


def _flip_bytes(source, target, rng, count):
    data = bytearray(open(source, "rb").read())
    for position in rng.integers(0, len(data), count):
        data[position] ^= int(rng.integers(1, 256))
    with open(target, "wb") as handle:
        handle.write(bytes(data))


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_flipped_bytes_give_one_clear_line_or_a_working_model(saved, suffix):
    root, paths = saved
    rng = np.random.default_rng(13)
    outcomes = {"loaded": 0, "damaged": 0, "not loaded": 0}
    for variant in range(VARIANTS):
        target = str(root / f"variant-{variant}{suffix}")
        _flip_bytes(paths[suffix], target, rng, count=int(rng.integers(1, 12)))
        try:
            model, _ = load_model(target)
        except ValueError as error:
            message = str(error)
            assert "\n" not in message, message
            assert repr(target) in message, message
            if "is damaged" in message:
                assert re.search(r"its (config|weights|structure)", message), message
                outcomes["damaged"] += 1
            else:
                assert "could not be loaded" in message, message
                outcomes["not loaded"] += 1
        else:
            # Bytes inside a weight's raw values change the numbers, not the file's
            # structure (HDF5 keeps no checksum of data): the model still runs.
            model(np.zeros((1, 8, 8, 3), np.float32))
            outcomes["loaded"] += 1
        os.remove(target)
    # The fixed seed damages most variants in their structure: the checks must see it.
    assert outcomes["damaged"] + outcomes["not loaded"] >= VARIANTS // 3, outcomes


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_truncated_file_is_reported_as_damaged(saved, suffix):
    root, paths = saved
    target = str(root / f"truncated{suffix}")
    shutil.copy(paths[suffix], target)
    os.truncate(target, os.path.getsize(target) // 2)
    with pytest.raises(ValueError, match=r"is damaged or not a model: its (config|weights|structure)"):
        load_model(target)


def test_text_file_named_as_model_is_refused(saved):
    root, _ = saved
    target = root / "notes.h5"
    target.write_text("these are my notes, not a model\n")
    with pytest.raises(ValueError, match=r"is damaged or not a model: its config"):
        load_model(str(target))
