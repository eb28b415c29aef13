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

The room's modules, one topic each: zoo (models, the fixed batch, the timed calls),
timing, guards, suite (one run, ratios, targets), end_to_end (the job and its peak
memory, measured by memory_child in a process of its own), report (tables and chart).
This module gathers their public names, one per line, for benchmarks/ and users.
"""

from sightline.bench.end_to_end import end_to_end
from sightline.bench.end_to_end import job_config
from sightline.bench.end_to_end import peak_memory
from sightline.bench.guards import correlation
from sightline.bench.guards import guard
from sightline.bench.guards import probability_guard
from sightline.bench.guards import relative_error
from sightline.bench.report import format_table
from sightline.bench.report import format_targets
from sightline.bench.report import write_bench_report
from sightline.bench.suite import TARGET_CAM_FAMILY
from sightline.bench.suite import TARGET_EAGER_SPEEDUP
from sightline.bench.suite import TARGET_END_TO_END
from sightline.bench.suite import TARGET_MEMORY_GROWTH
from sightline.bench.suite import TARGET_SALIENCY
from sightline.bench.suite import add_ratios
from sightline.bench.suite import evaluate_targets
from sightline.bench.suite import run_benchmark
from sightline.bench.suite import run_suite
from sightline.bench.timing import MAX_REPS
from sightline.bench.timing import measure
from sightline.bench.zoo import BENCH_METHOD_OPTIONS
from sightline.bench.zoo import BENCH_METHODS
from sightline.bench.zoo import BUILTIN_MODELS
from sightline.bench.zoo import MODES
from sightline.bench.zoo import PRESETS
from sightline.bench.zoo import Context
from sightline.bench.zoo import build_model

__all__ = [
    "BENCH_METHODS", "BENCH_METHOD_OPTIONS", "BUILTIN_MODELS", "Context", "MAX_REPS", "MODES",
    "PRESETS",
    "TARGET_CAM_FAMILY", "TARGET_EAGER_SPEEDUP", "TARGET_END_TO_END", "TARGET_MEMORY_GROWTH",
    "TARGET_SALIENCY", "add_ratios", "build_model", "correlation", "end_to_end",
    "evaluate_targets", "format_table", "format_targets", "guard", "job_config", "measure",
    "peak_memory", "probability_guard", "relative_error", "run_benchmark", "run_suite",
    "write_bench_report",
]
