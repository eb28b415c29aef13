"""The job, data and uninterrupted reference that the process tests (kill -9, signals,
concurrent workers) and the fault tests share."""

import os
import time

import numpy as np
import pytest

from sightline.cli.main import main
from tests.jobs.jobs import read_index, write_image_folder, write_model


JOB = ["--methods", "gradcam,smoothgrad", "--num-copies", "8", "--shard-size", "6",
       "--batch-size", "3", "--preprocess", "[0,1]", "--devices", "1"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("processes")
    write_image_folder(str(root / "images"), per_class=18, corrupt=("cat/broken.jpg",))
    write_model(str(root / "model.keras"))
    reference = root / "reference"
    assert main(["explain", "--model", str(root / "model.keras"), "--data",
                 str(root / "images"), "--out", str(reference), "--quiet", *JOB]) == 0
    return root


def job_args(root, out):
    return ["explain", "--model", str(root / "model.keras"), "--data", str(root / "images"),
            "--out", str(out), *JOB]


def shard_records(out):
    folder = os.path.join(out, "shards")
    if not os.path.isdir(folder):
        return []
    return [f for f in os.listdir(folder) if f.endswith(".json")]


def wait_for_a_record(process, out):
    """Until the running job has finished (and recorded) its first shard."""
    deadline = time.monotonic() + 240
    while not shard_records(out):
        if process.poll() is not None:
            raise AssertionError(f"the run ended before a shard finished: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no shard finished in time")
        time.sleep(0.02)


def assert_same_as_reference(root, out):
    reference, result = read_index(str(root / "reference")), read_index(str(out))
    assert set(reference) == set(result)
    for name in reference:
        np.testing.assert_array_equal(result[name], reference[name], err_msg=name)
