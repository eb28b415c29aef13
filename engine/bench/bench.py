"""`sightline bench`: images/s of every method and mode against compiled inference and
the naive eager loop, on the user's own model and hardware, all measured in one run.

Modes: `eager_loop` (the course's loop: one image at a time, eager, GradientTape;
sightline.bench.eager_baseline), `eager_batched` (the compiled step's Python function run
eagerly on whole batches), `graph` (tf.function), `xla` (tf.function with
jit_compile), `bf16` (mixed_bfloat16 in whichever of graph and XLA was faster for
that method). The ceiling is compiled inference of the same model on the same batches,
the faster of graph mode and XLA.

Start-up (trace and compile: the first call) is reported apart from steady-state
images/s (the median of several timed calls after a warm-up call). Every row carries
an accuracy guard: its maps must match a reference (the eager loop for float32 graph
mode, float32 graph mode for the others) or the row is marked failed and counts for
no target.

TensorFlow is imported inside functions: the CLI imports this module to build --help.
"""

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np  # light; TensorFlow stays out of import time

from sightline.bench.eager_baseline import EAGER_FUNCTIONS
from sightline.kernels.methods import CLASS_WEIGHTS, LAYER
from sightline.kernels.methods import METHODS as METHOD_TABLE

# Every method of the table with an eager loop to measure it against, in table order.
METHODS = tuple(name for name in METHOD_TABLE if name in EAGER_FUNCTIONS)
MODES = ("eager_loop", "eager_batched", "graph", "xla", "bf16")
BUILTIN_MODELS = ("fashion", "mobilenet_v2", "resnet50")
# The settings; the tiny size (CI: every benchmark once, so none can rot) keeps
# the code paths and cuts the work per image.
METHOD_OPTIONS = {
    "full": {"smoothgrad": {"num_copies": 8}, "integrated_gradients": {"num_steps": 16}},
    "tiny": {"smoothgrad": {"num_copies": 2}, "integrated_gradients": {"num_steps": 2}},
}

# Per size and model: input shape, batch size, images the eager loop explains, and the
# seconds of timed calls per row (at least one call, at most MAX_REPS).
PRESETS = {
    "full": {
        "fashion": dict(input_shape=(28, 28, 1), classes=10, batch=256, eager_images=16,
                        seconds=2.0),
        "mobilenet_v2": dict(input_shape=(224, 224, 3), classes=1000, batch=16,
                             eager_images=2, seconds=4.0),
        "resnet50": dict(input_shape=(224, 224, 3), classes=1000, batch=16, eager_images=2,
                         seconds=4.0),
        "path": dict(batch=32, eager_images=4, seconds=3.0),
    },
    "tiny": {
        "fashion": dict(input_shape=(28, 28, 1), classes=10, batch=8, eager_images=2,
                        seconds=0.0),
        "mobilenet_v2": dict(input_shape=(32, 32, 3), classes=10, batch=2, eager_images=1,
                             seconds=0.0),
        "resnet50": dict(input_shape=(32, 32, 3), classes=10, batch=2, eager_images=1,
                         seconds=0.0),
        "path": dict(batch=4, eager_images=1, seconds=0.0),
    },
}
MAX_REPS = 7

# Accuracy guards. Float32 against float32: the largest difference relative to each
# map's largest magnitude. Graph mode, XLA and the eager loop run different oneDNN
# kernels and summation orders (batch of 1 against a batch of B); through 50+ layers
# of a random-weight network the gradients differ by up to a few 1e-4 of the map's
# range, so the guard allows 2e-3: tight enough to catch a wrong class, layer, method
# or sign, which move maps by O(1).
GUARD_RELATIVE_ATOL = 2e-3
# SmoothGrad and Integrated Gradients average gradients at 8-16 perturbed inputs per
# image; a float32 rounding difference (XLA's convolutions against oneDNN's) that moves
# a pre-activation across a ReLU kink at one of them changes that gradient locally by
# O(1). Measured: 1.4e-2 between XLA and graph mode for SmoothGrad on the Fashion-MNIST
# CNN at batch 256, while its noise is bit-identical in both (kernels.sample_noise).
GUARD_RELATIVE_ATOL_AVERAGED = {"smoothgrad": 3e-2, "integrated_gradients": 3e-2}
# mixed_bfloat16 against float32: correlation of the raw maps over the batch. Input
# gradients pass back through every layer in bfloat16 (8-bit significand), so maps
# built from them keep less than CAM-family maps; measured on the built-in models.
BF16_MIN_CORRELATION = {"cam": 0.98, "gradcam": 0.95, "gradcam_plus_plus": 0.9,
                        "saliency": 0.8, "smoothgrad": 0.8, "integrated_gradients": 0.8}

# Probabilities under mixed_bfloat16 against float32: logits carry bfloat16's relative
# rounding of 2**-8 (0.4%) per layer; probabilities move by at most a few 1e-3.
BF16_PROBABILITY_ATOL = 2e-2

# The targets.
TARGET_CAM_FAMILY = 0.8  # cam and gradcam against the inference ceiling
TARGET_SALIENCY = 0.4
TARGET_EAGER_SPEEDUP = 50.0  # against the naive eager loop, Fashion-MNIST CNN
TARGET_END_TO_END = 0.85  # sightline explain against explain() on arrays
TARGET_MEMORY_GROWTH = 1.10  # peak RSS at 4N over N


# ----------------------------------------------------------------------------- models


def build_model(name, size="full", seed=0):
    """A built-in model with random weights (nothing is downloaded)."""
    import keras as K
    preset = PRESETS[size][name]
    K.utils.set_random_seed(seed)
    shape, classes = preset["input_shape"], preset["classes"]
    if name == "fashion":
        # The course's Fashion-MNIST CNN.
        return K.Sequential([
            K.Input(shape),
            K.layers.Conv2D(16, 3, padding="same", activation="relu"),
            K.layers.MaxPooling2D(),
            K.layers.Conv2D(32, 3, padding="same", activation="relu"),
            K.layers.MaxPooling2D(),
            K.layers.Conv2D(64, 3, padding="same", activation="relu"),
            K.layers.MaxPooling2D(),
            K.layers.Conv2D(128, 3, padding="same", activation="relu", name="last_conv"),
            K.layers.GlobalAveragePooling2D(),
            K.layers.Dense(classes, activation="softmax", name="classifier"),
        ], name="fashion_cnn")
    if name == "mobilenet_v2":
        return K.applications.MobileNetV2(input_shape=shape, weights=None, classes=classes)
    if name == "resnet50":
        return K.applications.ResNet50(input_shape=shape, weights=None, classes=classes)
    raise ValueError(f"unknown built-in model {name!r}; choose from {', '.join(BUILTIN_MODELS)} "
                     "or pass a model file")


class Context:
    """One model, its adapter, one fixed batch of images and targets."""

    def __init__(self, model, size="full", batch_size=None, seed=0, layer=None):
        import numpy as np

        from sightline.model.adapter import adapt_model, load_model
        self.name = model if model in BUILTIN_MODELS else os.path.basename(str(model))
        preset = dict(PRESETS[size]["path" if model not in BUILTIN_MODELS else model])
        if model in BUILTIN_MODELS:
            self.model, self.flavor = build_model(model, size, seed), "keras3"
        else:
            self.model, self.flavor = load_model(model)
        self.source = model
        self.layer = layer
        self.adapter = adapt_model(self.model, layer=layer)
        shape = tuple(d if d is not None else 224 for d in self.adapter.input_shape)
        self.image_shape = shape
        self.batch = int(batch_size or preset["batch"])
        self.eager_images = min(int(preset["eager_images"]), self.batch)
        self.seconds = float(preset["seconds"])
        self.size = size
        rng = np.random.default_rng(seed)
        self.images = rng.uniform(0, 1, (self.batch, *shape)).astype(np.float32)
        self.targets = (np.arange(self.batch) % self.adapter.num_classes).astype(np.int32)
        self.sample_index = np.arange(self.batch, dtype=np.int64)
        self.methods_supported = [
            m for m in METHODS
            if not (CLASS_WEIGHTS in METHOD_TABLE[m].arguments and self.adapter.cam_unsupported)
            and not (METHOD_TABLE[m].resolution == LAYER and self.adapter.activations_unsupported)]
        self._adapters = {"float32": self.adapter}
        self.strategy = None

    def options(self, *methods):
        """The method options (num_copies, num_steps) of this size, for these methods."""
        return {k: v for m in methods for k, v in METHOD_OPTIONS[self.size].get(m, {}).items()}

    def adapter_for(self, precision):
        from sightline.model.adapter import adapt_model
        if precision not in self._adapters:
            self._adapters[precision] = adapt_model(self.model, layer=self.layer,
                                                    precision=precision)
        return self._adapters[precision]

    def config(self, method, precision="float32", xla=False):
        from sightline.config import make_config
        return make_config((method,), layer=self.layer, normalize=False, map_size="native",
                           precision=precision, batch_size=self.batch, xla=xla,
                           **self.options(method))

    def step_call(self, method, precision="float32", xla=False, eager=False):
        """A no-argument callable running the step on the context's batch -> raw maps."""
        import tensorflow as tf

        from sightline.compute.step import build_step
        adapter = self.adapter_for(precision)
        config = self.config(method, precision, xla)
        strategy = self.strategy
        replicas = 1 if strategy is None or eager else strategy.num_replicas_in_sync
        step = build_step(adapter, config, self.batch // replicas, self.image_shape)
        images = tf.constant(self.images)
        targets = tf.constant(self.targets)
        index = tf.constant(self.sample_index)
        key = f"heatmaps/{method}"
        if eager:
            function = step.python_function
            return lambda: function(images, targets, index)[key].numpy()
        if replicas == 1:
            return lambda: step(images, targets, index)[key].numpy()

        @tf.function
        def distributed(i, t, s):
            return strategy.run(lambda a, b, c: step(a, b, c), args=(i, t, s))[key]

        dataset = tf.data.Dataset.from_tensor_slices((images, targets, index)).batch(self.batch)
        inputs = next(iter(strategy.experimental_distribute_dataset(dataset)))
        return lambda: np.concatenate([v.numpy() for v in strategy.experimental_local_results(
            distributed(*inputs))])

    def inference_call(self, precision="float32", xla=False):
        import tensorflow as tf
        adapter = self.adapter_for(precision)
        model = adapter.model
        images = tf.constant(self.images)
        if self.flavor == "saved_model":
            function = tf.function(lambda x: adapter.forward(x)[1], jit_compile=xla)
        else:
            function = tf.function(lambda x: model(x, training=False), jit_compile=xla)
        return lambda: function(images).numpy()

    def eager_call(self, method, count):
        from sightline.bench.eager_baseline import eager_maps
        options = self.options(method)
        return lambda: eager_maps(method, self.adapter, self.images[:count],
                                  self.targets[:count], **options)


# ----------------------------------------------------------------------------- timing


def measure(call, seconds, warmup=True, paired=None):
    """(first result, start-up seconds, median steady seconds, repetitions).

    paired: another (already warm) call timed in alternation with this one, so that
    the ratio of the two stays right when the machine's load changes during the run;
    its median goes to measure.paired_median.
    """
    started = time.perf_counter()
    result = call()
    startup = time.perf_counter() - started
    if warmup:
        started = time.perf_counter()
        call()
        first = time.perf_counter() - started
    else:
        first = startup
    reps = max(1, min(MAX_REPS, int(seconds / max(first, 1e-6))))
    if paired is not None:
        reps = max(3, reps)
    times, paired_times = [], []
    for _ in range(reps):
        if paired is not None:
            started = time.perf_counter()
            paired()
            paired_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    measure.paired_median = statistics.median(paired_times) if paired_times else None
    return result, startup, statistics.median(times), reps


measure.paired_median = None


def relative_error(actual, expected):
    """Largest |actual - expected| relative to each expected map's largest magnitude."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return math.inf
    axes = tuple(range(1, expected.ndim))
    scale = np.abs(expected).max(axis=axes, keepdims=True)
    scale = np.maximum(scale, max(np.abs(expected).max() * 1e-6, 1e-30))
    return float(np.abs(actual - expected).__truediv__(scale).max())


def correlation(actual, expected):
    a = np.asarray(actual, np.float64).ravel()
    b = np.asarray(expected, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def guard(method, mode, result, reference, reference_name):
    """The accuracy guard of one row."""
    if mode == "bf16":
        value = correlation(result, reference)
        threshold = BF16_MIN_CORRELATION[method]
        return {"reference": reference_name, "metric": "correlation", "value": round(value, 5),
                "threshold": threshold, "passed": bool(value >= threshold)}
    value = relative_error(result, reference)
    threshold = GUARD_RELATIVE_ATOL_AVERAGED.get(method, GUARD_RELATIVE_ATOL)
    return {"reference": reference_name, "metric": "max relative error",
            "value": float(f"{value:.3g}"), "threshold": threshold,
            "passed": bool(value <= threshold)}


def probability_guard(result, reference):
    """Inference under mixed_bfloat16: the model's outputs (probabilities) within
    BF16_PROBABILITY_ATOL of float32's. Not a correlation: a random-weight model's
    probabilities are nearly uniform, so their variation is all rounding."""
    value = float(np.abs(np.asarray(result, np.float64) - np.asarray(reference, np.float64)).max())
    return {"reference": "graph float32", "metric": "max abs difference",
            "value": float(f"{value:.3g}"), "threshold": BF16_PROBABILITY_ATOL,
            "passed": bool(value <= BF16_PROBABILITY_ATOL)}


def has_bf16_units():
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


# ----------------------------------------------------------------------------- one run


def run_benchmark(context, methods=METHODS, modes=MODES, log=None):
    """Measure every (method, mode) and the inference ceiling; returns a list of rows."""
    import tensorflow as tf
    say = log or (lambda *_: None)
    batch = context.batch
    rows = []

    def row(method, mode, precision, images, startup, median, reps, guard_info=None):
        entry = {"method": method, "mode": mode, "precision": precision,
                 "images_per_call": images, "startup_seconds": round(startup, 4),
                 "median_seconds": median, "reps": reps,
                 "images_per_second": round(images / median, 3) if median > 0 else 0.0,
                 "guard": guard_info}
        rows.append(entry)
        say(f"  {method:22s} {mode:13s} {precision:15s} {entry['images_per_second']:10.2f} img/s"
            f"  start-up {startup:7.2f} s" + ("" if guard_info is None else
                                               f"  guard {'ok' if guard_info['passed'] else 'FAILED'}"
                                               f" ({guard_info['value']})"))
        return entry

    # The ceiling: compiled inference, graph mode and XLA.
    inference = {}
    inference_calls = {}
    for xla in (False, True):
        if ("xla" if xla else "graph") not in modes and xla:
            continue
        inference_calls[xla] = context.inference_call(xla=xla)
        result, startup, median, reps = measure(inference_calls[xla], context.seconds)
        inference[xla] = result
        guard_info = None
        if xla and False in inference:
            guard_info = guard("inference", "xla", result, inference[False], "graph")
        row("inference", "xla" if xla else "graph", "float32", batch, startup, median, reps,
            guard_info)
    fastest_inference = "xla" if _faster(rows, "inference", "xla", "graph") else "graph"
    ceiling_call = inference_calls[fastest_inference == "xla"]
    if "bf16" in modes:
        result, startup, median, reps = measure(
            context.inference_call("mixed_bfloat16", xla=fastest_inference == "xla"),
            context.seconds, paired=ceiling_call)
        paired = measure.paired_median
        row("inference", "bf16", "mixed_bfloat16", batch, startup, median, reps,
            probability_guard(result, inference[False]) if False in inference else None)
        rows[-1]["ceiling_alongside"] = round(batch / paired, 3)

    for method in methods:
        if method not in context.methods_supported:
            say(f"  {method}: not supported by this model, skipped")
            continue
        eager_reference = None
        if "eager_loop" in modes:
            count = context.eager_images
            one = context.eager_call(method, 1)
            started = time.perf_counter()
            one()
            startup = time.perf_counter() - started
            eager_reference, _, median, reps = measure(context.eager_call(method, count),
                                                       context.seconds, warmup=False)
            row(method, "eager_loop", "float32", count, startup, median, reps, None)
        graph_result = None
        for mode in ("graph", "xla", "eager_batched"):
            if mode not in modes:
                continue
            call = context.step_call(method, xla=mode == "xla", eager=mode == "eager_batched")
            result, startup, median, reps = measure(
                call, context.seconds, warmup=mode != "eager_batched",
                paired=ceiling_call if mode in ("graph", "xla") else None)
            paired = measure.paired_median
            if mode == "graph":
                graph_result = result
            if mode == "graph" and eager_reference is not None:
                guard_info = guard(method, mode, result[:len(eager_reference)], eager_reference,
                                   "eager_loop")
            elif graph_result is not None:
                guard_info = guard(method, mode, result, graph_result, "graph")
            elif eager_reference is not None:
                guard_info = guard(method, mode, result[:len(eager_reference)], eager_reference,
                                   "eager_loop")
            else:
                guard_info = None
            entry = row(method, mode, "float32", batch, startup, median, reps, guard_info)
            if paired:
                entry["ceiling_alongside"] = round(batch / paired, 3)
        if "bf16" in modes:
            xla = _faster(rows, method, "xla", "graph")
            call = context.step_call(method, precision="mixed_bfloat16", xla=xla)
            result, startup, median, reps = measure(call, context.seconds, paired=ceiling_call)
            paired = measure.paired_median
            reference = graph_result if graph_result is not None else eager_reference
            guard_info = None
            if reference is not None:
                guard_info = guard(method, "bf16", result[:len(reference)], reference,
                                   "graph float32" if graph_result is not None else "eager_loop")
            entry = row(method, "bf16", "mixed_bfloat16", batch, startup, median, reps,
                        guard_info)
            entry["bf16_in"] = "xla" if xla else "graph"
            entry["ceiling_alongside"] = round(batch / paired, 3)
    return rows


def _find(rows, method, mode):
    for entry in rows:
        if entry["method"] == method and entry["mode"] == mode:
            return entry
    return None


def _faster(rows, method, mode, other):
    a, b = _find(rows, method, mode), _find(rows, method, other)
    return a is not None and (b is None or a["images_per_second"] > b["images_per_second"])


def add_ratios(rows, auto_xla):
    """x_ceiling and x_eager on every row; returns the ceiling in images/s."""
    ceiling = max([r["images_per_second"] for r in rows if r["method"] == "inference"
                   and r["precision"] == "float32"] or [0.0])
    for entry in rows:
        # Against the ceiling measured alongside (alternating calls) where there is one:
        # robust to the machine's load changing during the run.
        reference = entry.get("ceiling_alongside") or ceiling
        entry["x_ceiling"] = round(entry["images_per_second"] / reference, 4) if reference else None
        eager = _find(rows, entry["method"], "eager_loop")
        entry["x_eager_loop"] = (round(entry["images_per_second"] / eager["images_per_second"], 2)
                                 if eager and eager["images_per_second"] else None)
    return ceiling


def evaluate_targets(result):
    """The issue's targets: measured ratio and whether each is met (None: not measured)."""
    rows = result["rows"]
    auto = "xla" if result["auto_xla"] else "graph"
    targets = []

    def add(name, ratio, threshold, comparison, note=""):
        if ratio is None:
            met = None
        elif comparison == ">=":
            met = ratio >= threshold
        elif comparison == ">":
            met = ratio > threshold
        else:
            met = ratio <= threshold
        targets.append({"target": name, "ratio": None if ratio is None else round(ratio, 3),
                        "threshold": f"{comparison} {threshold}", "met": met, "note": note})

    def guarded(entry):
        return entry is not None and (entry["guard"] is None or entry["guard"]["passed"])

    for method, threshold in (("cam", TARGET_CAM_FAMILY), ("gradcam", TARGET_CAM_FAMILY),
                              ("saliency", TARGET_SALIENCY)):
        entry = _find(rows, method, auto)
        add(f"{method} >= {threshold}x compiled inference ({auto} mode, xla=auto)",
            entry["x_ceiling"] if guarded(entry) else None, threshold, ">=")
    for method in METHODS:
        entry = _find(rows, method, auto)
        ratio = entry["x_eager_loop"] if guarded(entry) else None
        note = "" if result["model"] == "fashion" else "the issue's target is for the fashion CNN"
        add(f"{method} >= {TARGET_EAGER_SPEEDUP:g}x the naive eager loop", ratio,
            TARGET_EAGER_SPEEDUP, ">=", note)
    bf16_units = result["cpu_bf16"]
    for method in ("inference",) + METHODS:
        bf16 = _find(rows, method, "bf16")
        float32 = [r for r in rows if r["method"] == method and r["precision"] == "float32"
                   and r["mode"] in ("graph", "xla")]
        if bf16 is None or not float32 or not guarded(bf16):
            continue
        # Both sides relative to the inference ceiling timed alongside each of them.
        best = max(r["x_ceiling"] for r in float32)
        add(f"{method}: mixed_bfloat16 faster than float32", bf16["x_ceiling"] / best,
            1.0, ">", "" if bf16_units else "this CPU has no bfloat16 units: not a target here")
    e2e = result.get("end_to_end")
    if e2e:
        add(f"end to end >= {TARGET_END_TO_END}x kernel alone ({','.join(e2e['methods'])})",
            e2e["ratio"], TARGET_END_TO_END, ">=")
    memory = result.get("memory")
    if memory:
        add(f"peak memory {memory['large']} vs {memory['small']} images within 10%",
            memory["ratio"], TARGET_MEMORY_GROWTH, "<=")
    return targets


# ----------------------------------------------------------------------------- end to end


def _write_image_folder(folder, images, start=0):
    import tensorflow as tf
    os.makedirs(os.path.join(folder, "class0"), exist_ok=True)
    for i, image in enumerate(images):
        data = tf.image.encode_png(tf.constant(np.round(image * 255).astype(np.uint8)))
        tf.io.write_file(os.path.join(folder, "class0", f"{start + i:06d}.png"), data)


def _job_config(model_path, data, out, methods, batch, options=None):
    """The job as a user runs it: default shard size and compression."""
    from sightline.config import make_config
    return make_config(tuple(methods), model=model_path, data=data, out=out,
                       batch_size=batch, preprocess="[0,1]", devices=1,
                       map_size="native", quiet=True, overwrite=True, **(options or {}))


def end_to_end(context, methods=("gradcam", "saliency"), batches=None, workdir=None, log=None):
    """run_job (decode -> explain -> HDF5) against explain() on the same images as arrays.

    Steady state without start-up: after a warm-up job, the job runs on N and on M
    images; its rate is (M - N) / (t_M - t_N), which cancels loading, tracing and
    indexing. The kernel alone is explain() on the M decoded images.
    """
    if batches is None:
        # Enough extra batches for about 20 s of kernel time at the inference ceiling
        # (between 4 and 4096 images' worth), so the difference of the two jobs is
        # well above their start-up noise.
        ceiling = getattr(context, "ceiling", None) or 100.0
        extra = int(min(4096, max(4 * context.batch, 20 * ceiling)) // context.batch)
        batches = (2, 6) if context.size == "tiny" else (2, 2 + max(4, extra))
    import tensorflow as tf

    from sightline import explain
    from sightline.jobs.runner import run_job
    say = log or (lambda *_: None)
    batch = context.batch
    small, large = batches[0] * batch, batches[1] * batch
    rng = np.random.default_rng(5)
    images = rng.uniform(0, 1, (large, *context.image_shape)).astype(np.float32)
    images = np.round(images * 255) / 255  # exactly what the PNG decoder will give back
    workdir = workdir or tempfile.mkdtemp(prefix="sightline-bench-")
    model_path = os.path.join(workdir, "model.keras")
    context.model.save(model_path)
    folders = {n: os.path.join(workdir, f"images-{n}") for n in (small, large)}
    for n, folder in folders.items():
        _write_image_folder(folder, images[:n])
    wall = {}
    for n in (0, small, large):  # 0: the warm-up job, on the small folder
        config = _job_config(model_path, folders[n or small], os.path.join(workdir, f"out-{n}"),
                             methods, batch,
                             options=context.options(*methods))
        started = time.perf_counter()
        summary = run_job(config)
        wall[n] = time.perf_counter() - started
        if summary.images != (n or small):
            raise RuntimeError(f"the end-to-end job explained {summary.images} of {n} images")
    job_rate = (large - small) / max(wall[large] - wall[small], 1e-9)
    options = context.options(*methods)

    def kernel():
        return explain(context.model, images, methods=tuple(methods), batch_size=batch,
                       map_size="native", **options)

    result, startup, median, reps = measure(kernel, context.seconds, warmup=False)
    kernel_rate = large / median
    # Guard: the job's stored maps are the kernel's maps (float16 storage).
    import h5py
    with h5py.File(os.path.join(workdir, f"out-{large}", "index.h5"), "r") as handle:
        stored = {m: handle[f"heatmaps/{m}"][...].astype(np.float32) for m in methods}
    error = max(float(np.abs(stored[m] - result.heatmaps[m]).max()) for m in methods)
    entry = {"methods": list(methods), "small": small, "large": large,
             "job_seconds": {str(k): round(v, 3) for k, v in wall.items() if k},
             "job_images_per_second": round(job_rate, 3),
             "kernel_images_per_second": round(kernel_rate, 3),
             "ratio": round(job_rate / kernel_rate, 4),
             "guard": {"reference": "explain() on arrays", "metric": "max abs difference",
                       "value": float(f"{error:.3g}"), "threshold": 2e-3,
                       "passed": bool(error <= 2e-3)}}
    say(f"  end to end: job {job_rate:.2f} img/s, kernel alone {kernel_rate:.2f} img/s, "
        f"ratio {entry['ratio']:.3f}")
    del tf
    return entry, model_path, workdir


_MEMORY_CHILD = """
import json, resource, sys
from sightline.bench.bench import _job_config
from sightline.jobs.runner import run_job
args = json.loads(sys.argv[1])
summary = run_job(_job_config(**args))
with open('/proc/self/status') as handle:
    hwm = [l for l in handle if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({'images': summary.images, 'vmhwm_kb': int(hwm),
                  'ru_maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak_memory(context, model_path, workdir, methods=("gradcam", "saliency"), counts=None,
                log=None):
    """Peak RSS (VmHWM) of run_job for N and 4N images, each in a fresh subprocess."""
    say = log or (lambda *_: None)
    batch = context.batch
    small = counts[0] if counts else 4 * batch
    large = counts[1] if counts else 4 * small
    rng = np.random.default_rng(6)
    folder = os.path.join(workdir, "memory-images")
    written = 0
    peaks = {}
    for n in (small, large):
        _write_image_folder(folder, rng.uniform(0, 1, (n - written, *context.image_shape)),
                            start=written)
        written = n
        args = dict(model_path=model_path, data=folder, out=os.path.join(workdir, f"mem-{n}"),
                    methods=list(methods), batch=batch,
                    options=context.options(*methods))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(args)],
                              capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the memory subprocess failed: {done.stderr[-2000:]}")
        peaks[n] = json.loads(done.stdout.strip().splitlines()[-1])
        if peaks[n]["images"] != n:
            raise RuntimeError(f"the memory job explained {peaks[n]['images']} of {n} images")
    entry = {"small": small, "large": large,
             "vmhwm_mb": {str(n): round(p["vmhwm_kb"] / 1024, 1) for n, p in peaks.items()},
             "ratio": round(peaks[large]["vmhwm_kb"] / peaks[small]["vmhwm_kb"], 4)}
    say(f"  peak memory: {entry['vmhwm_mb']} MB, ratio {entry['ratio']:.3f}")
    return entry


# ----------------------------------------------------------------------------- report


def format_table(result):
    lines = [f"Model `{result['model']}`, batch {result['batch_size']}, input "
             f"{'x'.join(map(str, result['input_shape']))}, {result['devices']} device(s), "
             f"ceiling {result['ceiling']:.2f} img/s (compiled inference, faster of graph/XLA); "
             "x ceiling: against that inference timed in alternation with the row",
             "",
             "| method | mode | precision | images/s | start-up s | x ceiling | x eager loop | guard |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        g = r["guard"]
        guard_text = "-" if g is None else f"{'ok' if g['passed'] else 'FAILED'} ({g['value']:g} vs {g['reference']})"
        lines.append(f"| {r['method']} | {r['mode']} | {r['precision']} | "
                     f"{r['images_per_second']:.2f} | {r['startup_seconds']:.2f} | "
                     f"{_num(r.get('x_ceiling'), 3)} | {_num(r.get('x_eager_loop'), 1)} | {guard_text} |")
    return "\n".join(lines)


def format_targets(result):
    lines = ["| target | measured | threshold | met |", "|---|---:|---|---|"]
    for t in result["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        if t["note"]:
            met += f" ({t['note']})"
        lines.append(f"| {t['target']} | {_num(t['ratio'], 3)} | {t['threshold']} | {met} |")
    return "\n".join(lines)


def _num(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def write_report(results, folder):
    """Markdown tables and a PNG chart (images/s per method and mode) from bench results."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(folder, exist_ok=True)
    if isinstance(results, dict):
        results = [results]
    parts = []
    for result in results:
        parts += [f"## {result['model']}", "", format_table(result), "", format_targets(result), ""]
        e2e, memory = result.get("end_to_end"), result.get("memory")
        if e2e:
            parts += [f"End to end ({','.join(e2e['methods'])}): job "
                      f"{e2e['job_images_per_second']:.2f} img/s, kernel alone "
                      f"{e2e['kernel_images_per_second']:.2f} img/s, ratio {e2e['ratio']:.3f}.", ""]
        if memory:
            parts += [f"Peak memory (VmHWM, fresh process each): {memory['vmhwm_mb']} MB, "
                      f"ratio {memory['ratio']:.3f}.", ""]
    markdown = os.path.join(folder, "bench.md")
    with open(markdown, "w") as handle:
        handle.write("\n".join(parts))
    figure, axes = plt.subplots(len(results), 1, figsize=(10, 4 * len(results)), squeeze=False)
    for axis, result in zip(axes[:, 0], results):
        modes = [m for m in MODES if any(r["mode"] == m for r in result["rows"])]
        methods = ["inference"] + [m for m in METHODS if any(r["method"] == m for r in result["rows"])]
        width = 0.8 / max(1, len(modes))
        for k, mode in enumerate(modes):
            values = [(_find(result["rows"], m, mode) or {}).get("images_per_second", 0)
                      for m in methods]
            axis.bar(np.arange(len(methods)) + k * width, values, width, label=mode)
        axis.axhline(result["ceiling"], color="black", linestyle="--", linewidth=1,
                     label="inference ceiling")
        axis.set_xticks(np.arange(len(methods)) + width * (len(modes) - 1) / 2)
        axis.set_xticklabels(methods, rotation=15)
        axis.set_yscale("log")
        axis.set_ylabel("images/s (log)")
        axis.set_title(f"{result['model']}: batch {result['batch_size']}")
        axis.legend(fontsize=8, ncol=3)
    figure.tight_layout()
    chart = os.path.join(folder, "bench.png")
    figure.savefig(chart, dpi=100)
    plt.close(figure)
    return markdown, chart


# ----------------------------------------------------------------------------- command


def add_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="a .keras/.h5 file, a SavedModel directory, or a built-in model: "
                             "fashion, mobilenet_v2, resnet50 (random weights)")
    parser.add_argument("--methods", help=f"comma-separated (default: all of {', '.join(METHODS)})")
    parser.add_argument("--modes", help=f"comma-separated (default: all of {', '.join(MODES)})")
    parser.add_argument("--batch-size", type=int, help="images per call (default per model)")
    parser.add_argument("--precision", help="float32 (skip the bf16 mode) or mixed_bfloat16 "
                                            "(default: both)")
    parser.add_argument("--devices", type=int, default=1,
                        help="split compiled modes over N devices (GPUs, or logical CPUs)")
    parser.add_argument("--size", choices=("full", "tiny"),
                        default=os.environ.get("SIGHTLINE_BENCH_SIZE", "full"),
                        help="full (default) or tiny (quick check: small inputs and batches)")
    parser.add_argument("--no-end-to-end", action="store_true",
                        help="skip the end-to-end job and peak-memory measurements")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--report", help="write bench.md and bench.png into this folder")


def run(args):
    methods = METHODS if not args.methods else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    modes = MODES if not args.modes else tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if args.precision not in (None, "float32", "mixed_bfloat16"):
        raise ValueError(f"--precision must be float32 or mixed_bfloat16; got {args.precision!r}")
    if args.precision == "float32":
        modes = tuple(m for m in modes if m != "bf16")
    if args.devices < 1:
        raise ValueError(f"--devices must be >= 1; got {args.devices}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}")
    if args.model not in BUILTIN_MODELS and not os.path.exists(args.model):
        raise ValueError(f"model {args.model!r} is neither a file nor a built-in model "
                         f"({', '.join(BUILTIN_MODELS)})")
    strategy = None
    if args.devices > 1:
        from sightline.compute.strategy import make_strategy
        strategy = make_strategy(args.devices)  # before TensorFlow initialises
    import tensorflow as tf

    from sightline.compute.step import resolve_xla
    log = lambda text: print(text, flush=True)  # noqa: E731
    context = Context(args.model, size=args.size, batch_size=args.batch_size)
    if strategy is not None:
        if context.batch % strategy.num_replicas_in_sync:
            raise ValueError(f"batch size {context.batch} must be a multiple of {args.devices} devices")
        context.strategy = strategy
    methods = tuple(m for m in methods if m in context.methods_supported) or methods
    log(f"sightline bench: {context.name}, batch {context.batch}, input {context.image_shape}, "
        f"{args.devices} device(s), TensorFlow {tf.__version__}")
    rows = run_benchmark(context, methods, modes, log=log)
    auto_xla = resolve_xla("auto")
    ceiling = add_ratios(rows, auto_xla)
    context.ceiling = ceiling
    result = {
        "model": context.name, "size": args.size, "batch_size": context.batch,
        "input_shape": list(context.image_shape), "devices": args.devices,
        "device_kind": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "cpu_count": os.cpu_count(), "cpu_bf16": has_bf16_units(), "auto_xla": auto_xla,
        "tensorflow": tf.__version__, "method_options": METHOD_OPTIONS[args.size], "ceiling": ceiling,
        "eager_loop_images": context.eager_images, "rows": rows,
    }
    if not args.no_end_to_end:
        e2e_methods = [m for m in ("gradcam", "saliency") if m in context.methods_supported]
        workdir = tempfile.mkdtemp(prefix="sightline-bench-")
        try:
            result["end_to_end"], model_path, _ = end_to_end(context, e2e_methods,
                                                             workdir=workdir, log=log)
            counts = (2 * context.batch, 8 * context.batch) if args.size == "tiny" else None
            result["memory"] = peak_memory(context, model_path, workdir, e2e_methods, counts,
                                           log=log)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    result["targets"] = evaluate_targets(result)
    print()
    print(format_table(result))
    print()
    print(format_targets(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    if args.report:
        markdown, chart = write_report(result, args.report)
        print(f"\nreport: {markdown}, {chart}")
    failed = [r for r in rows if r["guard"] is not None and not r["guard"]["passed"]]
    if failed:
        print(f"sightline bench: {len(failed)} accuracy guard(s) failed: "
              + ", ".join(f"{r['method']}/{r['mode']}" for r in failed), file=sys.stderr)
        return 1
    return 0
