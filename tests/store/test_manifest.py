"""The manifest during a run: a finished shard updates the table in memory, so a run of
S shards reads each shard record a constant number of times, not once per later shard."""

import collections
import json
import os

import pytest

import sightline.store.shards
from sightline.cli.main import main
from sightline.store.manifest import write_manifest
from tests.jobs.jobs import write_arrays, write_model

NUM_SHARDS = 12


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    write_arrays(str(root), count=2 * NUM_SHARDS)
    return {"root": root, "model": write_model(str(root / "model.keras"))}


def _explain(inputs, out, *extra):
    return main(["explain", "--model", inputs["model"], "--data",
                 str(inputs["root"] / "images.npy"), "--out", out, "--methods", "gradcam",
                 "--shard-size", "2", "--batch-size", "2", "--quiet", *extra])


def _count_record_reads(monkeypatch):
    reads = collections.Counter()
    real = sightline.store.shards.read_record

    def counting(out, shard, num_shards):
        reads[shard] += 1
        return real(out, shard, num_shards)

    monkeypatch.setattr(sightline.store.shards, "read_record", counting)
    return reads


@pytest.mark.parametrize("interval", [0.0, 2.0])
def test_each_record_is_read_a_constant_number_of_times(inputs, tmp_path, monkeypatch, interval):
    # interval 0: the manifest is rewritten after every shard, still without reading
    # the other shards' records.
    monkeypatch.setattr("sightline.jobs.runner.MANIFEST_SECONDS", interval)
    reads = _count_record_reads(monkeypatch)
    out = str(tmp_path / "run")
    assert _explain(inputs, out) == 0
    assert sorted(reads) == list(range(NUM_SHARDS))
    # Start (none exist), the end-of-run reload, and the index's verification: a rewrite
    # from disk per finished shard would read shard 0's record NUM_SHARDS times more.
    assert max(reads.values()) <= 4, dict(reads)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["shards_complete"] == NUM_SHARDS and manifest["index"] == "index.h5"
    records = [json.load(open(os.path.join(out, entry["file"][:-3] + ".json")))
               for entry in manifest["shards"]]
    assert [e["sha256"] for e in manifest["shards"]] == [r["sha256"] for r in records]


def test_a_worker_lists_what_it_knows_and_the_last_one_lists_everything(inputs, tmp_path):
    out = str(tmp_path / "two")
    assert _explain(inputs, out, "--workers", "2", "--worker", "0") == 0
    first = json.load(open(os.path.join(out, "manifest.json")))
    states = [e["state"] for e in first["shards"]]
    assert states == ["complete", "pending"] * (NUM_SHARDS // 2) and first["index"] is None
    assert _explain(inputs, out, "--workers", "2", "--worker", "1") == 0
    second = json.load(open(os.path.join(out, "manifest.json")))
    assert second["shards_complete"] == NUM_SHARDS and second["index"] == "index.h5"
    assert {e["worker"] for e in second["shards"]} == {0, 1}
    # The table rebuilt from the records on disk is the one the run wrote.
    run = {k: v for k, v in second.items() if k not in ("shards",)}
    provenance = {k: v for k, v in second.items()
                  if k not in ("format", "run", "fingerprint", "num_shards", "shards_complete",
                               "num_skipped", "index", "shards", "skipped")}
    ranges = [(e["sample_start"], e["sample_stop"]) for e in second["shards"]]
    write_manifest(out, run["run"], provenance, ranges, fingerprint=second["fingerprint"])
    assert json.load(open(os.path.join(out, "manifest.json"))) == second
