"""Worker placement from flags and cluster environments; progress lines."""

import io
import json

import pytest

from sightline.jobs.progress import Progress
from sightline.compute.strategy import parse_devices
from sightline.jobs.workers import resolve_worker, shards_of

SLURM = {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_STEP": "2",
         "SLURM_ARRAY_TASK_COUNT": "4"}
TF_CONFIG = json.dumps({"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]},
                        "task": {"type": "worker", "index": 1}})


@pytest.mark.parametrize("kwargs, environ, expected", [
    ({}, {}, (0, 1)),
    ({"worker": 1, "workers": 3}, {}, (1, 3)),
    ({}, SLURM, (2, 4)),  # ids 5, 7, 9, 11: id 9 is the third task
    ({}, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, (3, 4)),
    ({"workers": 4}, {"JOB_COMPLETION_INDEX": "3"}, (3, 4)),
    ({}, {"TF_CONFIG": TF_CONFIG}, (2, 3)),  # the chief is worker 0
    ({"worker": 0, "workers": 2}, SLURM, (0, 2)),  # flags win
])
def test_worker_resolution(kwargs, environ, expected):
    assert resolve_worker(environ=environ, **kwargs) == expected


@pytest.mark.parametrize("kwargs, environ, message", [
    ({"worker": 3, "workers": 3}, {}, r"worker index 3 \(from --worker\) is out of range for 3 "
                                      r"worker\(s\): it must be 0 to 2"),
    ({}, {"JOB_COMPLETION_INDEX": "1"}, r"pass --workers with the job's completions"),
    ({}, {**SLURM, "SLURM_ARRAY_TASK_ID": "8"}, r"SLURM_ARRAY_TASK_ID 8 is not on the array's "
                                                r"grid \(min 5, step 2\)"),
    ({}, {"SLURM_ARRAY_TASK_ID": "x"}, r"SLURM_ARRAY_TASK_ID must be an integer; got 'x'"),
    ({}, {"TF_CONFIG": "{"}, r"TF_CONFIG must be JSON"),
    ({"workers": 0}, {}, r"workers must be an integer >= 1; got 0"),
])
def test_worker_errors(kwargs, environ, message):
    with pytest.raises(ValueError, match=message):
        resolve_worker(environ=environ, **kwargs)


# The placement, written out: shards owned by workers 0, 1, ... for (shards, workers).
PLACEMENTS = [
    (5, 1, [[0, 1, 2, 3, 4]]),
    (7, 3, [[0, 3, 6], [1, 4], [2, 5]]),
    (10, 4, [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]),
    (4, 4, [[0], [1], [2], [3]]),
    (3, 5, [[0], [1], [2], [], []]),  # more workers than shards: the last ones idle
    (11, 2, [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]),
    (0, 2, [[], []]),
]


@pytest.mark.parametrize("num_shards, workers, expected", PLACEMENTS)
def test_shards_of_each_worker(num_shards, workers, expected):
    assert [shards_of(w, workers, num_shards) for w in range(workers)] == expected


@pytest.mark.parametrize("kwargs, environ, num_shards, expected", [
    # Slurm --array=5-11:2: ids 5, 7, 9, 11; id 9 is worker 2 of 4.
    ({}, SLURM, 10, [2, 6]),
    ({}, {**SLURM, "SLURM_ARRAY_TASK_ID": "5"}, 10, [0, 4, 8]),
    # Slurm --array=0-2: id 1 is worker 1 of 3.
    ({}, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, 8, [1, 4, 7]),
    # Kubernetes Indexed Job with 3 completions, pod 2.
    ({"workers": 3}, {"JOB_COMPLETION_INDEX": "2"}, 8, [2, 5]),
    # TF_CONFIG: one chief and two workers; worker 1 comes after the chief and worker 0.
    ({}, {"TF_CONFIG": TF_CONFIG}, 7, [2, 5]),
    ({}, {"TF_CONFIG": json.dumps({"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]},
                                   "task": {"type": "chief", "index": 0}})}, 7, [0, 3, 6]),
])
def test_shards_of_a_worker_placed_by_its_environment(kwargs, environ, num_shards, expected):
    worker, workers = resolve_worker(environ=environ, **kwargs)
    assert shards_of(worker, workers, num_shards) == expected


def test_devices_parse():
    assert parse_devices("all") == "all" and parse_devices("2") == 2 and parse_devices(None) == "all"
    for bad in ("0", "two", -1):
        with pytest.raises(ValueError, match=r"devices must be a number >= 1 or 'all'"):
            parse_devices(bad)


def test_progress_without_terminal_prints_periodic_plain_lines():
    stream = io.StringIO()
    progress = Progress(100, stream=stream, every_seconds=0.0)
    progress.advance(20)
    progress.advance(20)
    progress.event("skipped", message="a.png: broken")
    progress.summary(images=40, skipped=1)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("sightline: first batch done after ")
    assert lines[1].startswith("sightline: 20/100 images, start-up ")
    assert lines[2].startswith("sightline: 40/100 images, ") and "img/s, eta" in lines[2]
    assert lines[3] == "sightline: skipped: a.png: broken"
    assert lines[4] == "sightline: done: images 40, skipped 1"


def test_progress_json_lines_and_quiet():
    stream = io.StringIO()
    progress = Progress(10, stream=stream, log_json=True, every_seconds=0.0)
    progress.advance(5)
    progress.summary(images=5)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["progress", "summary"]
    assert events[0]["images"] == 5 and events[0]["total"] == 10
    quiet = io.StringIO()
    silent = Progress(10, stream=quiet, quiet=True, every_seconds=0.0)
    silent.advance(5)
    silent.summary(images=5)
    assert quiet.getvalue() == ""
