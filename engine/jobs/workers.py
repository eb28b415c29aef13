"""Which worker of a job this process is: flags, Slurm array, Kubernetes Indexed Job or
TF_CONFIG. Shard `s` belongs to worker `s mod W`; no two workers write one file."""

import json

from sightline.errors import UsageError


def resolve_worker(worker=None, workers=None, environ=None):
    """(index, count) of this worker, validated. Flags win over the environment.

    Slurm: SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_MIN, _COUNT and _STEP (ids need
    not start at 0: --array=5-11:2 gives ids 5, 7, 9, 11). Kubernetes Indexed Job:
    JOB_COMPLETION_INDEX (the job's completion count is not in the environment: pass
    --workers). TF_CONFIG: the task's index among the cluster's workers.
    """
    import os
    environ = os.environ if environ is None else environ
    environment_worker, environment_workers, source = _from_environment(environ)
    if worker is None:
        worker = environment_worker
    else:
        source = "--worker"
    if workers is None:
        workers = environment_workers
    if workers is None:
        if source == "JOB_COMPLETION_INDEX":
            raise UsageError("JOB_COMPLETION_INDEX is set but the number of workers is not: pass "
                             "--workers with the job's completions")
        workers = 1
    worker = 0 if worker is None else worker
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UsageError(f"workers must be an integer >= 1; got {workers!r}")
    if not isinstance(worker, int) or isinstance(worker, bool) or not 0 <= worker < workers:
        raise UsageError(f"worker index {worker!r} (from {source or 'defaults'}) is out of range "
                         f"for {workers} worker(s): it must be 0 to {workers - 1}")
    return worker, workers


def _from_environment(environ):
    """(worker or None, workers or None, the variable they came from)."""
    if "SLURM_ARRAY_TASK_ID" in environ:
        task = _int(environ, "SLURM_ARRAY_TASK_ID")
        first = _int(environ, "SLURM_ARRAY_TASK_MIN", 0)
        step = _int(environ, "SLURM_ARRAY_TASK_STEP", 1)
        if step < 1 or (task - first) % step:
            raise UsageError(f"SLURM_ARRAY_TASK_ID {task} is not on the array's grid "
                             f"(min {first}, step {step})")
        count = _int(environ, "SLURM_ARRAY_TASK_COUNT", 0) or None
        return (task - first) // step, count, "SLURM_ARRAY_TASK_ID"
    if "JOB_COMPLETION_INDEX" in environ:
        return _int(environ, "JOB_COMPLETION_INDEX"), None, "JOB_COMPLETION_INDEX"
    if "TF_CONFIG" in environ:
        worker, workers = _from_tf_config(environ["TF_CONFIG"])
        return worker, workers, "TF_CONFIG"
    return None, None, None


def _int(environ, name, default=None):
    value = environ.get(name)
    if value is None:
        if default is None:
            raise UsageError(f"{name} is not set; it is needed to place this worker")
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name} must be an integer; got {value!r}") from None


def _from_tf_config(text):
    try:
        config = json.loads(text)
        task = config["task"]
        cluster = config["cluster"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UsageError("TF_CONFIG must be JSON with 'cluster' and 'task'; got "
                         f"{text[:80]!r}") from None
    members = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
    if not members:
        raise UsageError("TF_CONFIG lists no chief or worker tasks")
    offset = len(cluster.get("chief", [])) if task.get("type") == "worker" else 0
    if task.get("type") not in ("chief", "worker"):
        raise UsageError(f"TF_CONFIG task type {task.get('type')!r} does not explain images; "
                         "use chief or worker tasks")
    return offset + int(task.get("index", 0)), len(members)


def shards_of(worker, workers, num_shards):
    return [shard for shard in range(num_shards) if shard % workers == worker]
