"""Jobs across processes: kill -9 and resume, SIGTERM, concurrent workers."""

import json
import os
import signal

import h5py
import pytest

from tests.jobs.jobs import run_cli
from tests.jobs.processes import (assert_same_as_reference, job_args,  # noqa: F401
                                  shard_records, wait_for_a_record, workspace)

def _stop_after_first_shard(process, out, signum):
    wait_for_a_record(process, out)
    process.send_signal(signum)
    process.wait(timeout=120)
    done = len(shard_records(out))
    assert done < 7, "the run finished before it could be stopped: make the job longer"
    return done


def test_kill_9_then_resume_gives_the_uninterrupted_output(workspace):
    out = workspace / "killed"
    process = run_cli(*job_args(workspace, out), wait=False)
    done = _stop_after_first_shard(process, str(out), signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(out / "index.h5")
    resumed = run_cli(*job_args(workspace, out), "--log-json")
    assert resumed.returncode == 0, resumed.stderr
    summary = [json.loads(line) for line in resumed.stderr.splitlines()
               if line.startswith('{"event": "summary"')][-1]
    assert summary["shards_reused"] >= done and summary["shards_total"] == 7
    assert not [f for f in os.listdir(out / "shards") + os.listdir(out) if ".tmp" in f]
    assert_same_as_reference(workspace, out)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_exits_cleanly_and_the_next_run_continues(workspace, signum, code):
    out = workspace / f"stopped-{code}"
    process = run_cli(*job_args(workspace, out), wait=False)
    _stop_after_first_shard(process, str(out), signum)
    assert process.returncode == code, process.stderr.read()
    assert not [f for f in os.listdir(out / "shards") if ".tmp" in f]
    manifest = json.load(open(out / "manifest.json"))
    states = {entry["state"] for entry in manifest["shards"]}
    assert states == {"complete", "pending"}
    assert manifest["shards_complete"] == len(shard_records(str(out)))
    resumed = run_cli(*job_args(workspace, out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as_reference(workspace, out)


@pytest.mark.parametrize("workers", [2, 3])
def test_concurrent_workers_give_the_single_worker_output(workspace, workers):
    out = workspace / f"workers-{workers}"
    processes = [run_cli(*job_args(workspace, out), "--quiet", "--worker", str(i), "--workers",
                         str(workers), wait=False) for i in range(workers)]
    for process in processes:
        process.wait(timeout=300)
        assert process.returncode == 0, process.stderr.read()
    # Each worker wrote only its own shards, s mod W, as each record and shard file says.
    writers = {}
    for name in shard_records(str(out)):
        record = json.load(open(out / "shards" / name))
        assert record["workers"] == workers, name
        with h5py.File(out / record["file"], "r") as shard:
            assert (shard.attrs["worker"], shard.attrs["workers"]) == (record["worker"], workers)
        writers[record["shard"]] = record["worker"]
    assert writers == {shard: shard % workers for shard in range(7)}
    indexed = run_cli("index", str(out))
    assert indexed.returncode == 0, indexed.stderr
    assert "7 shard(s) verified" in indexed.stdout
    assert_same_as_reference(workspace, out)
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["shards_complete"] == 7 and manifest["index"] == "index.h5"
    assert [s["key"] for s in manifest["skipped"]] == ["cat/broken.jpg"]


def test_slurm_array_environment_places_the_worker(workspace):
    out = workspace / "slurm"
    environment = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
                   "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "2"}
    result = run_cli(*job_args(workspace, out), "--quiet", env=environment)
    assert result.returncode == 0, result.stderr
    assert sorted(int(n.split("-")[1]) for n in shard_records(str(out))) == [1, 3, 5]
