"""The Slurm array script on a real Slurm: a single-node cluster on localhost (munged,
slurmctld, slurmd from Debian's slurm-wlm), started for this module and stopped after.

The script is submitted exactly as its header documents, from a folder that is not the
checkout (Slurm runs a spooled copy, so the script must find sightline from the
environment). Its output must equal a single-process run, also when one task is
requeued in the middle of its shards.
"""

import json
import os
import re
import sys
import time

import numpy as np
import pytest

from tests.cluster.localslurm import LocalSlurm, missing_programs
from tests.jobs.jobs import REPO, read_index, run_cli, write_image_folder, write_model

SCRIPT = os.path.join(REPO, "scripts", "cluster", "slurm_explain.sbatch")
TASKS = 3
SHARD_SIZE = 2
IMAGES_PER_CLASS = 15  # 30 images and one corrupt file: 16 shards, 5 or 6 per task
# SmoothGrad's many noisy copies keep each shard busy for about a second (with 400 copies
# a task's five shards took 0.2 s together, faster than a requeue reaches it), so a task
# can be requeued between two of its shards.
JOB = ["--methods", "gradcam,smoothgrad", "--num-copies", "1500", "--batch-size", "2",
       "--shard-size", str(SHARD_SIZE), "--preprocess", "[0,1]", "--devices", "1"]
JOB_TIMEOUT = 420


def _unavailable(reason):
    # In CI a missing Slurm means the install step broke: that is a failure, not a skip.
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}: scripts/install_slurm.sh should have installed it")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm():
    missing = missing_programs()
    if missing:
        _unavailable(f"Slurm is not installed (missing {', '.join(missing)}; "
                     "scripts/install_slurm.sh installs it as root)")
    if os.geteuid() != 0:
        _unavailable("starting slurmd and munged for a private cluster needs root")
    cluster = LocalSlurm(cpus=TASKS)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    os.chmod(root, 0o755)
    write_image_folder(str(root / "images"), per_class=IMAGES_PER_CLASS)
    write_model(str(root / "model.keras"))
    result = run_cli("explain", "--model", str(root / "model.keras"), "--data",
                     str(root / "images"), "--out", str(root / "reference"), "--quiet", *JOB)
    assert result.returncode == 0, result.stderr
    return root


def _environment():
    """What the submitting shell exports: where sightline is, and quiet TensorFlow."""
    home = REPO if os.access(os.path.join(REPO, ".venv", "bin", "sightline"), os.X_OK) else None
    if home is None:  # a test run from another environment: its own sightline command
        return {"SIGHTLINE": os.path.join(os.path.dirname(sys.executable), "sightline"),
                "TF_CPP_MIN_LOG_LEVEL": "3"}
    return {"SIGHTLINE_HOME": home, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _submit(slurm, workspace, out, environment=None):
    """sbatch --array=0-2 slurm_explain.sbatch MODEL DATA OUT ..., run in a folder that is
    not the checkout; returns the array's job id and that folder."""
    submit_folder = workspace / f"{out}-submit"
    submit_folder.mkdir()
    slurm.env.update(_environment() if environment is None else environment)
    stdout = slurm.run("sbatch", "--parsable", f"--array=0-{TASKS - 1}", "--open-mode=append",
                       SCRIPT, str(workspace / "model.keras"), str(workspace / "images"),
                       str(workspace / out), *JOB, cwd=str(submit_folder))
    return stdout.strip().split(";")[0], submit_folder


def _jobs(slurm, submit_folder):
    """{job id: (name, state, reason)} of the jobs submitted from (or by tasks running in)
    submit_folder that the controller still knows."""
    stdout = slurm.run("scontrol", "show", "job", "--oneliner", check=False)
    jobs = {}
    for line in stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields and fields.get("WorkDir") == str(submit_folder):
            task = fields.get("ArrayTaskId")
            key = f"{fields['ArrayJobId']}_{task}" if task else fields["JobId"]
            jobs[key] = (fields.get("JobName"), fields.get("JobState"), fields.get("Reason"))
    return jobs


def _wait_for_array_and_index(slurm, array_job, submit_folder):
    """Until the array's tasks and the index job it submitted are all COMPLETED; a
    failed or cancelled one, or the time limit, ends the test with the logs."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        jobs = _jobs(slurm, submit_folder)
        tasks = {k: v for k, v in jobs.items() if k.startswith(f"{array_job}_")}
        index = {k: v for k, v in jobs.items() if v[0] == "sightline-index"}
        states = [state for _, state, _ in (*tasks.values(), *index.values())]
        if any(state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
               for state in states):
            pytest.fail(f"a job ended badly: {jobs}\n{_logs(submit_folder)}")
        if len(tasks) == TASKS and len(index) == 1 and set(states) == {"COMPLETED"}:
            return jobs
        time.sleep(0.5)
    pytest.fail(f"the array and its index job did not finish in {JOB_TIMEOUT} s: "
                f"{_jobs(slurm, submit_folder)}\n{_logs(submit_folder)}\n{slurm.log('slurmctld.log')}")


def _logs(folder):
    return "\n".join(f"--- {name}\n{(folder / name).read_text(errors='replace')[-3000:]}"
                     for name in sorted(os.listdir(folder)))


def _summaries(path):
    """The summary events of one task's log (one per run of the task)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "summary":
                events.append(event)
    return events


def _assert_same_as_reference(workspace, out):
    reference = read_index(str(workspace / "reference"))
    result = read_index(str(workspace / out))
    assert set(result) == set(reference)
    assert len(reference["sample/index"]) == 2 * IMAGES_PER_CLASS
    for name in reference:
        np.testing.assert_array_equal(result[name], reference[name], err_msg=name)
    with open(workspace / "reference" / "manifest.json") as handle:
        reference_skipped = json.load(handle)["skipped"]
    with open(workspace / out / "manifest.json") as handle:
        assert json.load(handle)["skipped"] == reference_skipped


def test_array_job_equals_a_single_process_run(slurm, workspace):
    array_job, submit_folder = _submit(slurm, workspace, "array")
    _wait_for_array_and_index(slurm, array_job, submit_folder)
    _assert_same_as_reference(workspace, "array")
    logs = sorted(name for name in os.listdir(submit_folder) if name.startswith("sightline-"))
    assert logs == [*(f"sightline-{array_job}_{task}.log" for task in range(TASKS)),
                    *[name for name in logs if name.startswith("sightline-index-")]]
    assert "shard(s) verified" in _logs(submit_folder)


def test_a_task_requeued_mid_run_still_gives_the_same_output(slurm, workspace):
    array_job, submit_folder = _submit(slurm, workspace, "requeued")
    task = 1
    num_shards = -(-(2 * IMAGES_PER_CLASS + 1) // SHARD_SIZE)
    shard_folder = workspace / "requeued" / "shards"
    own = [f"shard-{s:05d}-of-{num_shards:05d}.json" for s in range(task, num_shards, TASKS)]
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (shard_folder.is_dir() and set(os.listdir(shard_folder)) & set(own)):
        assert time.monotonic() < deadline, f"task {task} finished no shard in time"
        time.sleep(0.05)
    slurm.run("scontrol", "requeue", f"{array_job}_{task}")
    _wait_for_array_and_index(slurm, array_job, submit_folder)
    _assert_same_as_reference(workspace, "requeued")

    runs = _summaries(submit_folder / f"sightline-{array_job}_{task}.log")
    # The first run stopped (SIGTERM: finish the batch, keep the shards, no summary of a
    # full run) after some of its shards; the requeued run kept those and did the rest.
    final = runs[-1]
    assert final["shards_reused"] >= 1, runs
    assert final["shards_written"] >= 1, f"the task finished before the requeue: {runs}"
    assert final["shards_reused"] + final["shards_written"] == len(own)


def test_without_an_installation_the_tasks_fail_with_one_clear_line(slurm, workspace):
    # No SIGHTLINE or SIGHTLINE_HOME, submitted outside the checkout, no sightline on PATH:
    # each task stops at once with a line that says how to fix it, and no index job is
    # left waiting for an array that can never succeed.
    saved = dict(slurm.env)
    for name in ("SIGHTLINE", "SIGHTLINE_HOME"):
        slurm.env.pop(name, None)
    try:
        array_job, submit_folder = _submit(slurm, workspace, "nowhere",
                                           environment={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        deadline = time.monotonic() + 60
        while True:
            jobs = _jobs(slurm, submit_folder)
            states = {state for _, state, _ in jobs.values()}
            if len(jobs) == TASKS and states <= {"FAILED", "COMPLETED", "CANCELLED"}:
                break
            assert time.monotonic() < deadline, f"the tasks did not end in 60 s: {jobs}"
            time.sleep(0.5)
    finally:
        slurm.env.clear()
        slurm.env.update(saved)
    assert states == {"FAILED"}, jobs
    assert all(name == "sightline-explain" for name, _, _ in jobs.values()), jobs
    for task in range(TASKS):
        lines = (submit_folder / f"sightline-{array_job}_{task}.log").read_text().splitlines()
        assert len(lines) == 1 and "set SIGHTLINE_HOME" in lines[0], lines
    assert not (workspace / "nowhere").exists()
