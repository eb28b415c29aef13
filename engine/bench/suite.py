"""One benchmark run: every (method, mode) against the inference ceiling, the ratios,
and the issue's targets; run_suite is the whole of `sightline bench` but the printing.
"""

import os
import shutil
import tempfile
import time

from sightline.bench.end_to_end import end_to_end, peak_memory
from sightline.bench.faithfulness import curve_targets, measure_curves
from sightline.bench.guards import bf16_capability, guard, probability_guard
from sightline.bench.timing import measure
from sightline.bench.zoo import (BENCH_METHOD_OPTIONS, BENCH_METHODS, BUILTIN_MODELS, MODES,
                                 Context)
from sightline.compute.auto_precision import CANDIDATES, measure_precisions
from sightline.config import make_config
from sightline.errors import UsageError

# The targets.
TARGET_CAM_FAMILY = 0.8  # cam and gradcam against the inference ceiling
TARGET_SALIENCY = 0.4
TARGET_EAGER_SPEEDUP = 50.0  # against the naive eager loop, Fashion-MNIST CNN
TARGET_END_TO_END = 0.85  # sightline explain against explain() on arrays
TARGET_MEMORY_GROWTH = 1.10  # peak RSS at 4N over N
TARGET_END_TO_END_ARRAY = 0.9  # the job on a .npy source against explain() on the arrays
# SmoothGrad and Integrated Gradients against saliency's rate / num_copies (num_steps).
TARGET_MULTI_PASS = 0.9
MULTI_PASS_OPTION = {"smoothgrad": "num_copies", "integrated_gradients": "num_steps"}
# explain(model, images, methods=(m,)) as users call it, with every default (batch size,
# normalize, map_size), on EXPLAIN_BATCHES of the bench's batches.
TARGET_EXPLAIN_DEFAULTS = 0.85
EXPLAIN_METHODS = ("cam", "gradcam")
EXPLAIN_BATCHES = 8
EXPLAIN_MODE = "explain()"


def run_benchmark(context, methods=BENCH_METHODS, modes=MODES, log=None, curves=False):
    """Measure every (method, mode) and the inference ceiling; returns a list of rows.
    curves: also the evaluation's curves per fill, into context.curve_rows."""
    rows = _Rows(log)
    ceiling_call = _measure_inference(context, modes, rows)
    for method in methods:
        if method not in context.methods_supported:
            rows.say(f"  {method}: not supported by this model, skipped")
            continue
        _measure_method(context, method, modes, rows, ceiling_call)
    _measure_explain(context, [m for m in EXPLAIN_METHODS if m in methods
                               and m in context.methods_supported], rows, ceiling_call)
    if curves:
        context.curve_rows = measure_curves(context, ceiling_call, log=rows.say)
    return rows.rows


def _measure_explain(context, methods, rows, ceiling_call):
    """explain() with its defaults on EXPLAIN_BATCHES batches, timed in alternation with
    the ceiling; guarded by the eager loop on the classes explain() chose."""
    import numpy as np

    from sightline import explain
    from sightline.bench.eager_baseline import eager_maps
    images = np.concatenate([context.images] * EXPLAIN_BATCHES)
    for method in methods:
        options = context.options(method)

        def call(method=method, options=options):
            return explain(context.model, images, methods=(method,), **options)

        result, startup, median, reps = measure(call, context.seconds, paired=ceiling_call)
        count = context.eager_images
        reference = eager_maps(method, context.adapter, images[:count], result.targets[:count],
                               **options)
        # explain() scales each map to [0, 1]: heatmap * scale is the map's ReLU.
        found = result.heatmaps[method][:count] * result.scales[method][:count, None, None]
        entry = rows.add(method, EXPLAIN_MODE, "float32", len(images), startup, median, reps,
                         guard(method, EXPLAIN_MODE, found, np.maximum(reference, 0),
                               "eager_loop"))
        entry["ceiling_alongside"] = round(context.batch / measure.paired_median, 3)


class _Rows:
    """The rows measured so far, each logged as it comes."""

    def __init__(self, log):
        self.rows = []
        self.say = log or (lambda *_: None)

    def add(self, method, mode, precision, images, startup, median, reps, guard_info=None):
        entry = {"method": method, "mode": mode, "precision": precision,
                 "images_per_call": images, "startup_seconds": round(startup, 4),
                 "median_seconds": median, "reps": reps,
                 "images_per_second": round(images / median, 3) if median > 0 else 0.0,
                 "guard": guard_info}
        self.rows.append(entry)
        self.say(f"  {method:22s} {mode:13s} {precision:15s} {entry['images_per_second']:10.2f} img/s"
                 f"  start-up {startup:7.2f} s" + ("" if guard_info is None else
                                                    f"  guard {'ok' if guard_info['passed'] else 'FAILED'}"
                                                    f" ({guard_info['value']})"))
        return entry


def _measure_inference(context, modes, rows):
    """The ceiling: compiled inference in graph mode and XLA (and bf16); returns the
    faster float32 call, timed alongside every compiled row after it."""
    batch = context.batch
    inference, inference_calls = {}, {}
    for xla in (False, True):
        if ("xla" if xla else "graph") not in modes and xla:
            continue
        inference_calls[xla] = context.inference_call(xla=xla)
        result, startup, median, reps = measure(inference_calls[xla], context.seconds)
        inference[xla] = result
        guard_info = None
        if xla and False in inference:
            guard_info = guard("inference", "xla", result, inference[False], "graph")
        rows.add("inference", "xla" if xla else "graph", "float32", batch, startup, median, reps,
                 guard_info)
    fastest_inference = "xla" if _faster(rows.rows, "inference", "xla", "graph") else "graph"
    ceiling_call = inference_calls[fastest_inference == "xla"]
    if "bf16" in modes:
        result, startup, median, reps = measure(
            context.inference_call("mixed_bfloat16", xla=fastest_inference == "xla"),
            context.seconds, paired=ceiling_call)
        paired = measure.paired_median
        entry = rows.add("inference", "bf16", "mixed_bfloat16", batch, startup, median, reps,
                         probability_guard(result, inference[False]) if False in inference
                         else None)
        entry["ceiling_alongside"] = round(batch / paired, 3)
    return ceiling_call


def _measure_method(context, method, modes, rows, ceiling_call):
    batch = context.batch
    eager_reference = None
    if "eager_loop" in modes:
        count = context.eager_images
        one = context.eager_call(method, 1)
        started = time.perf_counter()
        one()
        startup = time.perf_counter() - started
        eager_reference, _, median, reps = measure(context.eager_call(method, count),
                                                   context.seconds, warmup=False)
        rows.add(method, "eager_loop", "float32", count, startup, median, reps, None)
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
        entry = rows.add(method, mode, "float32", batch, startup, median, reps, guard_info)
        if paired:
            entry["ceiling_alongside"] = round(batch / paired, 3)
    if "bf16" in modes:
        xla = _faster(rows.rows, method, "xla", "graph")
        call = context.step_call(method, precision="mixed_bfloat16", xla=xla)
        result, startup, median, reps = measure(call, context.seconds, paired=ceiling_call)
        paired = measure.paired_median
        reference = graph_result if graph_result is not None else eager_reference
        guard_info = None
        if reference is not None:
            guard_info = guard(method, "bf16", result[:len(reference)], reference,
                               "graph float32" if graph_result is not None else "eager_loop")
        entry = rows.add(method, "bf16", "mixed_bfloat16", batch, startup, median, reps,
                         guard_info)
        entry["bf16_in"] = "xla" if xla else "graph"
        entry["ceiling_alongside"] = round(batch / paired, 3)


def find_row(rows, method, mode):
    for entry in rows:
        if entry["method"] == method and entry["mode"] == mode:
            return entry
    return None


def _faster(rows, method, mode, other):
    a, b = find_row(rows, method, mode), find_row(rows, method, other)
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
        eager = find_row(rows, entry["method"], "eager_loop")
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
        entry = find_row(rows, method, auto)
        add(f"{method} >= {threshold}x compiled inference ({auto} mode, xla=auto)",
            entry["x_ceiling"] if guarded(entry) else None, threshold, ">=")
    for method in BENCH_METHODS:
        entry = find_row(rows, method, auto)
        ratio = entry["x_eager_loop"] if guarded(entry) else None
        note = "" if result["model"] == "fashion" else "the issue's target is for the fashion CNN"
        add(f"{method} >= {TARGET_EAGER_SPEEDUP:g}x the naive eager loop", ratio,
            TARGET_EAGER_SPEEDUP, ">=", note)
    bf16_units = result["cpu_bf16"]
    for method in ("inference",) + BENCH_METHODS:
        bf16 = find_row(rows, method, "bf16")
        float32 = [r for r in rows if r["method"] == method and r["precision"] == "float32"
                   and r["mode"] in ("graph", "xla")]
        if bf16 is None or not float32 or not guarded(bf16):
            continue
        # Both sides relative to the inference ceiling timed alongside each of them.
        best = max(r["x_ceiling"] for r in float32)
        add(f"{method}: mixed_bfloat16 faster than float32", bf16["x_ceiling"] / best,
            1.0, ">", "" if bf16_units else "this CPU has no bfloat16 units: not a target here")
    for method in EXPLAIN_METHODS:
        entry = find_row(rows, method, EXPLAIN_MODE)
        add(f"explain(methods=('{method}',)) with its defaults >= {TARGET_EXPLAIN_DEFAULTS}x "
            "compiled inference", entry["x_ceiling"] if guarded(entry) else None,
            TARGET_EXPLAIN_DEFAULTS, ">=")
    saliency = find_row(rows, "saliency", auto)
    for method, option in MULTI_PASS_OPTION.items():
        entry = find_row(rows, method, auto)
        passes = result["method_options"].get(method, {}).get(option)
        ratio = None
        if guarded(entry) and guarded(saliency) and passes:
            # Both relative to the inference timed alongside each: load drift cancels.
            ratio = entry["x_ceiling"] * passes / saliency["x_ceiling"]
        add(f"{method} >= {TARGET_MULTI_PASS}x saliency / {option}", ratio,
            TARGET_MULTI_PASS, ">=")
    e2e = result.get("end_to_end")
    if e2e:
        add(f"end to end >= {TARGET_END_TO_END}x kernel alone ({','.join(e2e['methods'])})",
            e2e["ratio"], TARGET_END_TO_END, ">=")
    e2e_array = result.get("end_to_end_array")
    if e2e_array:
        add(f"array source: job >= {TARGET_END_TO_END_ARRAY}x kernel alone "
            f"({','.join(e2e_array['methods'])}, .npy, no decoding)", e2e_array["ratio"],
            TARGET_END_TO_END_ARRAY, ">=")
    if result.get("curves"):
        curve_targets(result["curves"], lambda *target: add(*target))
    memory = result.get("memory")
    if memory:
        add(f"peak memory {memory['large']} vs {memory['small']} images within 10%",
            memory["ratio"], TARGET_MEMORY_GROWTH, "<=")
    return targets


def run_suite(model, *, methods=BENCH_METHODS, modes=MODES, batch_size=None, precision=None,
              devices=1, size="full", with_end_to_end=True, log=None, with_curves=True):
    """The whole benchmark of one model: rows, ratios, end to end and peak memory (unless
    with_end_to_end is False), the evaluation's curves (unless with_curves is False) and
    targets; returns the result dict `--json` holds."""
    unknown = [m for m in methods if m not in BENCH_METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(BENCH_METHODS)}")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UsageError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if precision not in (None, "float32", "mixed_bfloat16"):
        raise UsageError(f"--precision must be float32 or mixed_bfloat16; got {precision!r}")
    if precision == "float32":
        modes = tuple(m for m in modes if m != "bf16")
    if devices < 1:
        raise UsageError(f"--devices must be >= 1; got {devices}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1; got {batch_size}")
    if model not in BUILTIN_MODELS and not os.path.exists(model):
        raise UsageError(f"model {model!r} is neither a file nor a built-in model "
                         f"({', '.join(BUILTIN_MODELS)})")
    strategy = None
    if devices > 1:
        from sightline.compute.strategy import make_strategy
        strategy = make_strategy(devices)  # before TensorFlow initialises
    import tensorflow as tf

    from sightline.compute.step import resolve_xla
    say = log or (lambda *_: None)
    context = Context(model, size=size, batch_size=batch_size)
    if strategy is not None:
        if context.batch % strategy.num_replicas_in_sync:
            raise UsageError(f"batch size {context.batch} must be a multiple of {devices} devices")
        context.strategy = strategy
    methods = tuple(m for m in methods if m in context.methods_supported) or methods
    say(f"sightline bench: {context.name}, batch {context.batch}, input {context.image_shape}, "
        f"{devices} device(s), TensorFlow {tf.__version__}")
    rows = run_benchmark(context, methods, modes, log=say, curves=with_curves)
    auto_xla = resolve_xla("auto")
    bf16_units, cpu_model = bf16_capability()
    context.ceiling = add_ratios(rows, auto_xla)
    result = {
        "model": context.name, "size": size, "batch_size": context.batch,
        "input_shape": list(context.image_shape), "devices": devices,
        "device_kind": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "cpu_count": os.cpu_count(), "cpu_bf16": bf16_units != "none",
        "cpu_bf16_units": bf16_units, "cpu_model": cpu_model, "auto_xla": auto_xla,
        "tensorflow": tf.__version__, "method_options": BENCH_METHOD_OPTIONS[size],
        "ceiling": context.ceiling, "eager_loop_images": context.eager_images, "rows": rows,
        "curves": getattr(context, "curve_rows", None),
    }
    if "bf16" in modes:
        result["precision_auto"] = precision_auto(context, methods)
        figures = result["precision_auto"]
        say(f"  precision auto: {figures['choice']} ({figures['reason']}; seconds per batch "
            f"{figures['seconds_per_batch']}, per-map correlation {figures['map_correlation']})")
    if with_end_to_end:
        _end_to_end_and_memory(context, result, say)
    result["targets"] = evaluate_targets(result)
    return result


def precision_auto(context, methods):
    """What `--precision auto` chooses for this model on the bench's batch, and the
    figures behind it: the job's own measurement (sightline.compute.auto_precision) on
    Grad-CAM and saliency, or whichever of them the model supports."""
    import tensorflow as tf

    from sightline.compute.step import build_step
    chosen = tuple(m for m in ("gradcam", "saliency") if m in context.methods_supported
                   and m in methods) or tuple(methods[:1])
    run_of = {}
    for precision in CANDIDATES:
        config = make_config(chosen, layer=context.layer, precision=precision,
                             batch_size=context.batch, **context.options(*chosen))
        run_of[precision] = build_step(context.adapter_for(precision), config, context.batch,
                                       context.image_shape)
    figures = measure_precisions(run_of, tf.constant(context.images), tf.constant(context.targets),
                                 tf.constant(context.sample_index), chosen)
    figures["methods"] = list(chosen)
    return figures


def _end_to_end_and_memory(context, result, say):
    methods = [m for m in ("gradcam", "saliency") if m in context.methods_supported]
    # Colour models are fed JPEGs (photographs), grey ones PNGs (the course's data).
    folder_source = "jpeg" if context.image_shape[-1] == 3 else "png"
    workdir = tempfile.mkdtemp(prefix="sightline-bench-")
    try:
        result["end_to_end"], model_path, _ = end_to_end(context, methods, workdir=workdir,
                                                         log=say, source=folder_source)
        result["end_to_end_array"], _, _ = end_to_end(context, methods, workdir=workdir,
                                                      log=say, source="npy")
        if context.size != "tiny":
            # The default ("auto": none on a CPU) against the two filters, each in its
            # own rounds against explain() on the same arrays.
            result["end_to_end_compression"] = [
                end_to_end(context, methods, workdir=workdir, log=say, source="npy",
                           compression=compression)[0] for compression in ("gzip", "lzf")]
        counts = (2 * context.batch, 8 * context.batch) if context.size == "tiny" else None
        result["memory"] = peak_memory(context, model_path, workdir, methods, counts, log=say)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def failed_guards(result):
    """The rows whose accuracy guard failed."""
    return [r for r in result["rows"] if r["guard"] is not None and not r["guard"]["passed"]]
