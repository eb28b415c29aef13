"""Throughput of every method and mode against compiled inference and the naive eager
loop (pytest-benchmark). Start-up (the first call: trace and compile) goes into
extra_info["startup_seconds"], apart from the steady-state timings; every benchmark
first checks its accuracy guard, so a fast wrong result never counts.

    pytest benchmarks --benchmark-json out.json          # full size (minutes)
    SIGHTLINE_BENCH_SIZE=tiny pytest benchmarks      # CI (scripts/test.sh): every one once
"""

import os
import shutil
import tempfile
import time

import numpy as np
import pytest

from benchmarks.conftest import MODELS, SIZE, context_for, rounds
from sightline.bench import bench

# References computed once per (model, method): the eager loop and float32 graph mode.
_REFERENCES = {}


def _reference(context, method, kind):
    key = (context.name, method, kind)
    if key not in _REFERENCES:
        if kind == "eager_loop":
            _REFERENCES[key] = context.eager_call(method, context.eager_images)()
        else:
            _REFERENCES[key] = context.step_call(method)()
    return _REFERENCES[key]


def _timed_benchmark(benchmark, call, context, images, guard_info=None, **info):
    started = time.perf_counter()
    call()  # start-up: trace and compile (or the first eager call)
    startup = time.perf_counter() - started
    per_call = startup
    if SIZE != "tiny":  # tiny: every benchmark once, to keep it from rotting; no warm-up
        started = time.perf_counter()
        call()  # warm-up
        per_call = time.perf_counter() - started
    benchmark.extra_info.update(startup_seconds=round(startup, 4), images_per_call=images,
                                batch_size=context.batch, size=SIZE, **info)
    if guard_info is not None:
        benchmark.extra_info["guard"] = guard_info
    benchmark.pedantic(call, rounds=rounds(per_call, context), iterations=1, warmup_rounds=0)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["images_per_second"] = round(images / stats.stats.median, 3)


@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
def test_inference_ceiling(benchmark, context, xla):
    call = context.inference_call(xla=xla)
    guard_info = None
    if xla:
        guard_info = bench.guard("inference", "xla", call(), context.inference_call()(), "graph")
        assert guard_info["passed"], guard_info
    _timed_benchmark(benchmark, call, context, context.batch, guard_info, method="inference",
                     mode="xla" if xla else "graph")


def _method_cases():
    """(model, method, mode) for every measured row. At the tiny size (CI) the whole
    matrix runs on the Fashion-MNIST CNN; MobileNetV2 and ResNet50 run every method in
    graph mode (guarded by the eager loop), which keeps their builders and adapters from
    rotting without tracing their 50+ layers two dozen times."""
    for model in MODELS:
        for method in bench.BENCH_METHODS:
            for mode in bench.MODES:
                if SIZE == "tiny" and model != "fashion" and mode != "graph":
                    continue
                yield pytest.param(model, method, mode, id=f"{model}-{method}-{mode}")


@pytest.mark.parametrize("model_name, method, mode", list(_method_cases()))
def test_method_throughput(benchmark, model_name, method, mode):
    context = context_for(model_name)
    if method not in context.methods_supported:
        pytest.skip(f"{context.name} does not support {method}")
    images = context.batch
    if mode == "eager_loop":
        images = context.eager_images
        call = context.eager_call(method, images)
        guard_info = None  # it is the reference
    elif mode == "bf16":
        # mixed_bfloat16 in whichever float32 mode is the faster: graph on CPUs, where
        # XLA lost (see `sightline bench`), XLA on GPUs.
        from sightline.compute.step import resolve_xla
        xla = resolve_xla("auto")
        call = context.step_call(method, precision="mixed_bfloat16", xla=xla)
        guard_info = bench.guard(method, "bf16", call(), _reference(context, method, "graph"),
                                 "graph float32")
    else:
        call = context.step_call(method, xla=mode == "xla", eager=mode == "eager_batched")
        if mode == "graph":
            reference = _reference(context, method, "eager_loop")
            guard_info = bench.guard(method, mode, call()[:len(reference)], reference,
                                     "eager_loop")
        else:
            guard_info = bench.guard(method, mode, call(), _reference(context, method, "graph"),
                                     "graph")
    if guard_info is not None:
        assert guard_info["passed"], guard_info
    _timed_benchmark(benchmark, call, context, images, guard_info, method=method, mode=mode)


@pytest.fixture(scope="module")
def fashion():
    return context_for("fashion")


@pytest.fixture(scope="module")
def workdir():
    folder = tempfile.mkdtemp(prefix="sightline-bench-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_end_to_end_against_kernel_alone(benchmark, fashion, workdir):
    """run_job (decode -> explain -> HDF5) on a generated PNG folder against explain()
    on the same images as arrays; the job's stored maps must equal the kernel's."""
    entry, model_path, _ = bench.end_to_end(fashion, ("gradcam", "saliency"), workdir=workdir)
    assert entry["guard"]["passed"], entry["guard"]
    benchmark.extra_info.update(entry)
    benchmark.extra_info["target"] = f">= {bench.TARGET_END_TO_END}"
    # The timed part: the kernel alone on the large set (the job was timed above, twice,
    # to take its start-up out).
    from sightline import explain
    images = np.random.default_rng(0).uniform(0, 1, (entry["large"], *fashion.image_shape))
    images = images.astype(np.float32)
    benchmark.pedantic(lambda: explain(fashion.model, images, methods=("gradcam", "saliency"),
                                       batch_size=fashion.batch, map_size="native"),
                       rounds=1 if SIZE == "tiny" else 3, iterations=1, warmup_rounds=1)
    with open(os.path.join(workdir, "model_path"), "w") as handle:
        handle.write(model_path)


def test_peak_memory_n_and_4n(benchmark, fashion, workdir):
    """Peak RSS (VmHWM) of run_job for N and 4N images, each in a fresh subprocess."""
    model_path = os.path.join(workdir, "model.keras")
    if not os.path.exists(model_path):
        fashion.model.save(model_path)
    counts = (2 * fashion.batch, 8 * fashion.batch) if SIZE == "tiny" else None
    entry = benchmark.pedantic(
        lambda: bench.peak_memory(fashion, model_path, workdir, ("gradcam", "saliency"), counts),
        rounds=1, iterations=1)
    benchmark.extra_info.update(entry)
    benchmark.extra_info["target"] = f"<= {bench.TARGET_MEMORY_GROWTH}"
    assert entry["ratio"] > 0
