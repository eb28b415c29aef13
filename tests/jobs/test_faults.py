"""Faults during a job: a full disk, and two processes on one output folder and worker."""

import errno
import os
import signal
import subprocess

import pytest

from sightline.cli.main import main
from tests.jobs.jobs import run_cli
# The same job, data and uninterrupted reference as the kill -9 and signal tests.
from tests.jobs.processes import (assert_same_as_reference, job_args,  # noqa: F401
                                  wait_for_a_record, workspace)


def _leftovers(out):
    return [name for name in os.listdir(out / "shards") + os.listdir(out) if ".tmp" in name]


def test_full_disk_stops_with_one_line_and_a_resume_completes(workspace, monkeypatch, capsys):
    from sightline.store import shards
    real_append = shards._OpenShard.append
    calls = []

    def append_until_the_disk_is_full(self, arrays):
        calls.append(self.shard)
        if len(calls) == 5:  # shards 0 and 1 are done (2 batches each), shard 2 is open
            raise OSError(errno.ENOSPC, "No space left on device", self.temporary)
        real_append(self, arrays)

    monkeypatch.setattr(shards._OpenShard, "append", append_until_the_disk_is_full)
    out = workspace / "full-disk"
    assert main(job_args(workspace, out) + ["--quiet"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert str(out) in lines[0] and "the disk is full" in lines[0], lines[0]
    assert "2 of 7 shard(s) are finished and kept" in lines[0], lines[0]
    assert not _leftovers(out), "a half-written shard was left"
    assert sorted(name for name in os.listdir(out / "shards") if name.endswith(".h5")) == \
        ["shard-00000-of-00007.h5", "shard-00001-of-00007.h5"]
    assert not os.path.exists(out / "index.h5")

    monkeypatch.setattr(shards._OpenShard, "append", real_append)  # space freed
    assert main(job_args(workspace, out) + ["--quiet"]) == 0
    assert_same_as_reference(workspace, out)


def test_second_process_on_the_same_worker_is_refused_and_kill_9_frees_the_lock(workspace):
    out = workspace / "race"
    first = run_cli(*job_args(workspace, out), wait=False)
    wait_for_a_record(first, str(out))
    # Frozen mid-run, it holds the lock for as long as the test needs (no timing race).
    first.send_signal(signal.SIGSTOP)
    try:
        second = run_cli(*job_args(workspace, out))
    finally:
        first.send_signal(signal.SIGKILL)  # a stopped process dies at once
        first.wait(timeout=60)
    lines = second.stderr.splitlines()
    assert second.returncode == 2, second.stderr
    assert len(lines) == 1, second.stderr
    assert f"being written by another process (worker 0, pid {first.pid} " in lines[0], lines[0]
    assert first.returncode == -signal.SIGKILL
    assert not os.path.exists(out / "index.h5")
    resumed = run_cli(*job_args(workspace, out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert not _leftovers(out)
    assert_same_as_reference(workspace, out)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size (root only); remounted larger to free space."""
    folder = tmp_path / "small-disk"
    os.makedirs(folder)

    def mount(size, remount=False):
        options = f"{'remount,' if remount else ''}size={size}"
        return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                              capture_output=True, text=True).returncode == 0

    yield folder, mount
    subprocess.run(["umount", str(folder)], capture_output=True)


def test_real_full_disk_stops_with_one_line_and_a_resume_completes(workspace, small_disk):
    """The same through a tmpfs too small for the run: h5py's own failure (a RuntimeError
    with errno 28 in its text) and the HDF5 library's state after it, in a real process."""
    folder, mount = small_disk
    reference = workspace / "reference" / "shards"
    total = sum(os.path.getsize(reference / name) for name in os.listdir(reference))
    if os.geteuid() != 0 or not mount(max(16384, total // 2 // 4096 * 4096)):
        pytest.skip("mounting a tmpfs needs root and mount(8); the injected full disk above "
                    "covers the same path")
    out = folder / "run"
    stopped = run_cli(*job_args(workspace, out), "--quiet")
    lines = stopped.stderr.splitlines()
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    assert len(lines) == 1 and "the disk is full" in lines[0], stopped.stderr[-3000:]
    assert "shard(s) are finished and kept" in lines[0] and str(out) in lines[0]
    assert not _leftovers(out)
    assert mount("64m", remount=True)
    resumed = run_cli(*job_args(workspace, out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as_reference(workspace, out)
