"""Models and sizes for the throughput benchmarks.

SIGHTLINE_BENCH_SIZE=full (default) measures the issue's configurations: the course's
Fashion-MNIST CNN at 28x28x1, MobileNetV2 and ResNet50 at 224x224x3 (random weights,
nothing downloaded). SIGHTLINE_BENCH_SIZE=tiny shrinks inputs and batches so CI runs
every benchmark once quickly:

    SIGHTLINE_BENCH_SIZE=tiny pytest benchmarks      (scripts/test.sh does this)

SIGHTLINE_BENCH_MODELS=fashion,mobilenet_v2 limits the models.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from sightline.bench import bench  # noqa: E402

SIZE = os.environ.get("SIGHTLINE_BENCH_SIZE", "full")
if SIZE not in ("tiny", "full"):
    raise ValueError(f"SIGHTLINE_BENCH_SIZE must be tiny or full; got {SIZE!r}")
MODELS = tuple(m for m in os.environ.get("SIGHTLINE_BENCH_MODELS",
                                         ",".join(bench.BUILTIN_MODELS)).split(",") if m)


def pytest_configure(config):
    # Tiny timings mean nothing: run each benchmark once (pytest-benchmark's
    # --benchmark-disable) and keep its table out of the test output.
    if SIZE == "tiny":
        config.option.benchmark_disable = True


def fashion_cnn():
    """The course's Fashion-MNIST CNN: conv 16/32/64/128, max pooling after the first
    three, global average pooling, dense 10 (softmax)."""
    return bench.build_model("fashion", SIZE)


def mobilenet_v2():
    return bench.build_model("mobilenet_v2", SIZE)


def resnet50():
    return bench.build_model("resnet50", SIZE)


_CONTEXTS = {}


def context_for(name):
    """One bench.Context per model for the whole session (model, batch, targets)."""
    if name not in _CONTEXTS:
        _CONTEXTS[name] = bench.Context(name, size=SIZE)
    return _CONTEXTS[name]


@pytest.fixture(scope="session", params=MODELS)
def context(request):
    return context_for(request.param)


def rounds(seconds_per_call, context):
    """Timed rounds: several when calls are short, at least one (tiny: one)."""
    if SIZE == "tiny":
        return 1
    return max(1, min(bench.MAX_REPS, int(context.seconds / max(seconds_per_call, 1e-6))))
