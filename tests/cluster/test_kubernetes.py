"""The Kubernetes manifest, read as Kubernetes reads it: one Indexed Job whose pods
sightline places from JOB_COMPLETION_INDEX and --workers, covering every shard once."""

import os

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the test extra: pip install -e .[test]")

from sightline.cli.main import build_parser  # noqa: E402
from sightline.jobs.workers import resolve_worker, shards_of  # noqa: E402
from tests.jobs.jobs import REPO  # noqa: E402

MANIFEST = os.path.join(REPO, "scripts", "cluster", "kubernetes_indexed_job.yaml")


@pytest.fixture(scope="module")
def job():
    with open(MANIFEST) as handle:
        documents = [d for d in yaml.safe_load_all(handle) if d is not None]
    # One Job only: `kubectl apply -f` starts every document at once, so a second Job
    # (an index step) would run before any shard exists. The last worker builds the index.
    assert [d["kind"] for d in documents] == ["Job"]
    return documents[0]


def _explain_arguments(job):
    container, = job["spec"]["template"]["spec"]["containers"]
    command = [*container["command"], *container.get("args", [])]
    assert os.path.basename(command[0]) == "sightline", command
    return container, build_parser().parse_args(command[1:])


def test_the_job_is_indexed_with_one_worker_per_completion(job):
    spec = job["spec"]
    _, arguments = _explain_arguments(job)
    assert arguments.command == "explain"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == arguments.workers
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert arguments.model and arguments.data and arguments.out


def test_each_pod_finds_its_index_where_sightline_reads_it(job):
    container, _ = _explain_arguments(job)
    variables = {item["name"]: item for item in container.get("env", [])}
    field = variables["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_the_completion_indexes_cover_every_shard_once(job):
    _, arguments = _explain_arguments(job)
    completions = job["spec"]["completions"]
    num_shards = 3 * completions + 1
    owners = {}
    for index in range(completions):
        worker, workers = resolve_worker(workers=arguments.workers,
                                         environ={"JOB_COMPLETION_INDEX": str(index)})
        assert (worker, workers) == (index, completions)
        for shard in shards_of(worker, workers, num_shards):
            owners.setdefault(shard, []).append(worker)
    assert owners == {shard: [shard % completions] for shard in range(num_shards)}


def test_the_output_is_on_the_volume_every_pod_shares(job):
    container, arguments = _explain_arguments(job)
    pod = job["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}
    for path in (arguments.model, arguments.data, arguments.out):
        assert any(path.startswith(mount + "/") and claims.get(name)
                   for name, mount in mounts.items()), path
