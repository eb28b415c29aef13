"""The shard writer and index on their own, without a model or a job: filters, partial
chunks, aborts, checksums, stale temporaries and the chunk budget."""

import json
import os
import subprocess
import threading
import time

import h5py
import numpy as np
import pytest

from sightline.store.files import FOREIGN_TEMPORARY_SECONDS
from sightline.store.shards import (CHUNK_BYTES, MAX_CHUNK_ROWS,
                                    ShardWriter, build_index, map_chunk_rows,
                                    remove_stale_temporaries, resolve_compression,
                                    temporary_path)


def _writer(out, compression="none", **kwargs):
    layout = {"maps": {"gradcam": (2, 2)}, "key_length": 4, "attributes": {}}
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    return ShardWriter(str(out), 2, layout, compression=compression, **kwargs)


def _rows(start, count):
    return {"heatmaps/gradcam": np.zeros((count, 2, 2), np.float16),
            "heatmaps/gradcam_scale": np.ones(count, np.float32),
            "sample/index": np.arange(start, start + count, dtype=np.int64),
            "sample/key": np.array([b"k%d" % i for i in range(count)]),
            "sample/label": np.zeros(count, np.int32), "pred/target": np.zeros(count, np.int32),
            "pred/class": np.zeros(count, np.int32), "pred/score": np.ones(count, np.float32)}


@pytest.mark.parametrize("compression, shuffled", [("gzip", True), ("lzf", True),
                                                   ("none", False)])
def test_writer_applies_the_filter_and_reads_back_what_it_was_given(tmp_path, compression,
                                                                    shuffled):
    writer = _writer(tmp_path, compression)
    rows = _rows(0, 700)  # more than one chunk of scalars, a partial last chunk
    rows["heatmaps/gradcam"] = np.random.default_rng(0).uniform(
        0, 1, (700, 2, 2)).astype(np.float16)
    writer.begin(0, 0, 700)
    writer.append({name: values[:300] for name, values in rows.items()})
    writer.append({name: values[300:] for name, values in rows.items()})
    writer.finish([])
    writer.close()
    with h5py.File(tmp_path / "shards" / "shard-00000-of-00002.h5", "r") as shard:
        for name, values in rows.items():
            dataset = shard[name]
            assert dataset.compression == (None if compression == "none" else compression)
            assert dataset.shuffle == shuffled
            np.testing.assert_array_equal(dataset[:], values)


def test_index_reads_again_only_the_shards_this_process_did_not_checksum(tmp_path):
    writer = _writer(tmp_path)
    for shard, (start, stop) in enumerate(((0, 3), (3, 5))):
        writer.begin(shard, start, stop)
        writer.append(_rows(start, stop - start))
        writer.finish([])
    writer.close()
    with open(tmp_path / "shards" / "shard-00001-of-00002.h5", "ab") as handle:
        handle.write(b"\0")  # damaged after its record was written
    for verified in ((), (0,)):  # shard 1 not checksummed by this process: read, refused
        with pytest.raises(ValueError, match=r"shard-00001-of-00002.h5: checksum differs"):
            build_index(str(tmp_path), 2, verified=verified)
    records = build_index(str(tmp_path), 2, verified=(0, 1))
    assert [r["num_samples"] for r in records] == [3, 2]


def test_auto_compression_is_gzip_on_accelerators_and_none_on_cpus():
    assert resolve_compression("auto", on_accelerator=True) == "gzip"
    assert resolve_compression("auto", on_accelerator=False) == "none"
    for chosen in ("gzip", "lzf", "none"):
        assert resolve_compression(chosen, on_accelerator=True) == chosen
        assert resolve_compression(chosen, on_accelerator=False) == chosen


def test_writer_abort_with_no_shard_open_closes_cleanly(tmp_path):
    writer = _writer(tmp_path)
    writer.abort()
    writer.close()  # raised AttributeError from the writer thread
    assert writer.error is None and os.listdir(tmp_path / "shards") == []


def test_writer_abort_discards_the_open_shard_and_keeps_finished_ones(tmp_path):
    writer = _writer(tmp_path, fingerprint="a" * 64, worker=1, workers=2)
    writer.begin(1, 0, 3)
    writer.append(_rows(0, 3))
    writer.finish([])
    writer.begin(3, 3, 5)
    writer.append(_rows(3, 2))
    writer.abort()
    writer.abort()  # a second abort finds no shard open
    writer.close()
    assert sorted(os.listdir(tmp_path / "shards")) == ["shard-00001-of-00002.h5",
                                                       "shard-00001-of-00002.json"]
    record = json.load(open(tmp_path / "shards" / "shard-00001-of-00002.json"))
    assert (record["fingerprint"], record["worker"], record["workers"]) == ("a" * 64, 1, 2)
    with h5py.File(tmp_path / "shards" / "shard-00001-of-00002.h5", "r") as shard:
        assert shard.attrs["worker"] == 1 and shard.attrs["fingerprint"] == "a" * 64


def test_stale_temporaries_go_unless_a_live_writer_may_own_them(tmp_path):
    out = tmp_path / "out"
    os.makedirs(out / "shards")
    here = temporary_path("x").rsplit("@", 1)[1]
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = finished.pid
    live = os.getppid()

    def temporary(name, pid, host, thread=1):
        return f"{name}.tmp-{pid}-{thread}@{host}"

    removed = {  # worker 0 of 2 owns shards 0 and 2, whoever left their temporaries
        "shards/" + temporary("shard-00000-of-00004.h5", live, here),
        "shards/" + temporary("shard-00002-of-00004.json", dead, "elsewhere"),
        temporary("manifest.json", dead, here),
        temporary("index.h5", dead, here, thread=7),
        temporary("manifest.json", dead, "elsewhere"),  # made old below
    }
    kept = {
        "shards/shard-00000-of-00004.h5",
        "shards/" + temporary("shard-00001-of-00004.h5", dead, here),  # worker 1's to remove
        "shards/" + temporary("shard-00003-of-00004.json", live, here),
        "manifest.json",
        os.path.basename(temporary_path(str(out / "manifest.json"))),  # this very thread
        temporary("manifest.json", live, here),
        temporary("index.h5", dead, "elsewhere"),  # recent: its writer may be alive
    }
    for name in removed | kept:
        (out / name).write_text("x")
    old = time.time() - FOREIGN_TEMPORARY_SECONDS - 60
    os.utime(out / temporary("manifest.json", dead, "elsewhere"), (old, old))
    assert threading.get_ident() in {t.ident for t in threading.enumerate()}
    gone = remove_stale_temporaries(str(out), [0, 2], 4)
    assert sorted(os.path.relpath(path, out) for path in gone) == sorted(removed)
    left = {f"shards/{n}" for n in os.listdir(out / "shards")} | {
        n for n in os.listdir(out) if n != "shards"}
    assert left == kept


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (8, 8), (28, 28), (224, 224), (600, 600)])
def test_map_chunks_hold_as_many_maps_as_fit_in_the_chunk_budget(size):
    rows = map_chunk_rows(*size)
    map_bytes = 2 * size[0] * size[1]  # float16
    assert 1 <= rows <= MAX_CHUNK_ROWS
    assert rows == 1 or rows * map_bytes <= CHUNK_BYTES
    assert rows == MAX_CHUNK_ROWS or (rows + 1) * map_bytes > CHUNK_BYTES
