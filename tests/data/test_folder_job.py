"""A data folder with every kind of file, through the whole job: each image that cannot
be read is listed once with its own reason, read from the batch (the runner never
decodes it again, not even a file corrupt inside, which fails its whole batch's
decoder), TIFF images are explained, and files that are not images are counted on
stderr and listed in the manifest."""

import contextlib
import io
import json

import numpy as np
import pytest

from sightline.cli.main import main
from sightline.data.sources import Source
from tests.data.images import encode, random_pixels, tiff_with_samples
from tests.jobs.jobs import read_index, write_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder-job")
    rng = np.random.default_rng(7)
    images = root / "images"
    for name in ("cat", "dog"):
        (images / name).mkdir(parents=True)
    files = {
        "cat/0.png": encode(random_pixels(rng, 20, 18), "PNG"),
        "cat/1.jpg": encode(random_pixels(rng, 16, 16), "JPEG"),
        "cat/2.tif": encode(random_pixels(rng, 16, 16), "TIFF"),
        "dog/0.tiff": encode((rng.random((16, 16)) * 65535).astype(np.uint16), "TIFF"),
        "dog/1.png": encode(random_pixels(rng, 16, 16), "PNG"),
        "cat/cut.png": encode(random_pixels(rng, 16, 16), "PNG")[:-40],
        "cat/words.jpg": b"these are words, not a photograph",
        "dog/bands.tif": tiff_with_samples(5),
        "dog/scan.png": b"8BPS\x00\x01" + b"\x00" * 60,
        # Whole at both ends, garbage inside: only the decoder fails, in the one batch.
        "cat/inside.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 20 + b"IEND\xaeB`\x82",
        "notes.txt": b"where the images came from",
        "dog/labels.csv": b"0,1\n",
    }
    for relative, content in files.items():
        (images / relative).write_bytes(content)
    write_model(str(root / "model.keras"))
    return root


@pytest.fixture(scope="module")
def run(folder):
    """One job over the folder: (output folder, manifest, what it wrote on stderr)."""
    out = folder / "out"
    stderr = io.StringIO()
    # Every reason must come from the batch: decoding a sample again is a failure here.
    patch = pytest.MonkeyPatch()
    patch.setattr(Source, "read_error", lambda self, index: pytest.fail(
        f"the runner decoded sample {index} again to learn why it failed"))
    try:
        with contextlib.redirect_stderr(stderr):
            code = main(["explain", "--model", str(folder / "model.keras"), "--data",
                         str(folder / "images"), "--out", str(out), "--devices", "1",
                         "--batch-size", "16", "--shard-size", "16", "--methods", "gradcam"])
    finally:
        patch.undo()
    assert code == 0, stderr.getvalue()
    with open(out / "manifest.json") as handle:
        manifest = json.load(handle)
    return out, manifest, stderr.getvalue()


def test_each_failing_image_is_listed_once_with_its_own_reason(run):
    _, manifest, _ = run
    images = {item["key"]: item for item in manifest["skipped"] if item["index"] is not None}
    assert sorted(images) == ["cat/cut.png", "cat/inside.png", "cat/words.jpg", "dog/bands.tif",
                              "dog/scan.png"]
    assert images["cat/cut.png"]["reason"].startswith("truncated")
    assert images["cat/inside.png"]["reason"].startswith("corrupt image data")
    assert images["cat/words.jpg"]["reason"].startswith("not an image")
    assert images["dog/bands.tif"]["reason"].startswith("wrong channel count")
    assert images["dog/scan.png"]["reason"].startswith("unsupported image format")
    assert len(manifest["skipped"]) == len({item["key"] for item in manifest["skipped"]})


def test_files_that_are_not_images_are_listed_and_counted(run):
    _, manifest, stderr = run
    unread = {item["key"]: item["reason"] for item in manifest["skipped"] if item["index"] is None}
    assert unread == {"notes.txt": "unsupported file type .txt",
                      "dog/labels.csv": "unsupported file type .csv"}
    assert manifest["num_skipped"] == 7
    assert "2 file(s) in the data folder are not images sightline reads" in stderr


def test_tiff_images_are_explained_with_the_others(run):
    out, manifest, _ = run
    data = read_index(str(out))
    keys = [key.decode() for key in data["sample/key"]]
    assert keys == ["cat/0.png", "cat/1.jpg", "cat/2.tif", "dog/0.tiff", "dog/1.png"]
    # Class folders are groups (no --class-names): the folder in /sample/group, no label.
    assert list(data["sample/group"]) == [0, 0, 0, 1, 1]
    assert list(data["sample/label"]) == [-1] * 5
    assert np.all(np.isfinite(data["heatmaps/gradcam"].astype(np.float32)))
    skipped = {item["index"] for item in manifest["skipped"] if item["index"] is not None}
    assert skipped.isdisjoint(data["sample/index"])


def test_a_rate_over_one_batch_prints_as_not_measured(run):
    _, _, stderr = run
    summary = [line for line in stderr.splitlines() if line.startswith("sightline: done:")]
    assert len(summary) == 1
    # Said in words, with why (issue 18: a bare "n/a" after a 64-image run).
    assert ("images per second not measured (only one batch was computed, so the run was "
            "start-up only)") in summary[0]
    assert "images per second 0" not in summary[0] and "n/a" not in summary[0]
