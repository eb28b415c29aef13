"""`sightline inspect` on a run smaller than a shard, from a folder that holds a README
beside its images: the samples counted as they are, other files apart from unreadable
images, and the run's timing as the job reported it."""

import json

import numpy as np
import pytest
import tensorflow as tf

from sightline.cli.main import main
from tests.jobs.jobs import write_model


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    folder = root / "images"
    folder.mkdir()
    pixels = np.random.default_rng(2).integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    for i, image in enumerate(pixels):
        tf.io.write_file(str(folder / f"{i:02d}.png"), tf.io.encode_png(image))
    (folder / "README.txt").write_text("where these images come from\n")
    (folder / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    write_model(str(root / "model.keras"))
    out = root / "out"
    assert main(["explain", "--model", str(root / "model.keras"), "--data", str(folder),
                 "--out", str(out), "--quiet", "--devices", "1"]) == 0
    return out


def test_inspect_counts_the_samples_of_a_run_smaller_than_a_shard(inspected, capsys):
    assert main(["inspect", str(inspected)]) == 0
    text = capsys.readouterr().out
    lines = {line.split(":", 1)[0].strip(): line for line in text.splitlines()
             if not line.startswith("  ")}
    assert "7 samples" in lines["source"]  # the 6 PNGs and the broken one, not the README
    assert lines["shards"] == "shards:     1 shard of 7 samples; 1 complete"
    assert "of 1024" not in text


def test_inspect_lists_other_files_as_ignored_not_as_unreadable(inspected, capsys):
    assert main(["inspect", str(inspected)]) == 0
    text = capsys.readouterr().out
    assert "skipped:    1 unreadable image(s)" in text
    assert "ignored:    1 other file(s) in the data folder, not images" in text
    assert "  ignored README.txt: " in text and "  skipped zz-broken.png: " in text
    with open(inspected / "manifest.json") as handle:
        manifest = json.load(handle)
    # The manifest keeps its record of both.
    assert {item["key"] for item in manifest["skipped"]} == {"README.txt", "zz-broken.png"}


def test_inspect_reports_the_timing_the_job_measured(inspected, capsys):
    with open(inspected / "manifest.json") as handle:
        timing = json.load(handle)["timing"]
    assert main(["inspect", str(inspected)]) == 0
    text = capsys.readouterr().out
    # 7 images in one batch of 64: start-up only, and said so.
    assert (f"timing:     start-up {timing['startup_seconds']} s, no rate (only one batch "
            "was computed, so the run was start-up only)") in text
