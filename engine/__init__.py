"""sightline: a batch explanation engine for TensorFlow/Keras image classifiers.

The rooms, in the direction data flows (lower rooms never import higher ones; the
contracts in pyproject.toml are checked by import-linter):

    kernels   the math: pure, batch-first TensorFlow functions and the table of methods
    config    one validated description of what to explain and how
    model     load a model safely, mixed-precision copies, the adapter the step calls
    data      sources (folders, TFRecords, arrays) and the tf.data pipeline
    compute   the compiled step, the device strategy and the in-memory `explain`
    store     the one owner of the on-disk format and its reader `open_results`
    jobs      the dataset job: runner, worker placement, signals, progress
    audit     where the evidence sits: metrics, masks, activations
    report    the HTML page, its figures and overlays
    bench     throughput against compiled inference and the naive eager loop
    demo      the planted-shortcut scenes and the end-to-end demonstration
    cli       the `sightline` command: parse arguments and call the rooms above

Public names load lazily, so `sightline --version` and `--help` answer without
importing TensorFlow; `dir(sightline)` (and a notebook's tab completion) lists them and
the rooms all the same.
"""

import importlib as _importlib

__version__ = "0.2.0"

_EXPORTS = {
    "explain": "sightline.compute.explain",
    "Explanation": "sightline.compute.explain",
    "ExplainConfig": "sightline.config",
    "make_config": "sightline.config",
    "ModelAdapter": "sightline.model.adapter",
    "adapt_model": "sightline.model.adapter",
    "load_model": "sightline.model.adapter",
    "open_results": "sightline.store.results",
    "run_job": "sightline.jobs.runner",
    "run_audit": "sightline.audit.audit",
    "overlay": "sightline.report.overlay",
    "show": "sightline.report.overlay",
}
_ROOMS = ("kernels", "config", "model", "data", "compute", "store", "jobs", "audit", "report",
          "bench", "demo", "cli")

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    if name in _ROOMS:
        return _importlib.import_module(f"sightline.{name}")
    raise AttributeError(f"module 'sightline' has no attribute {name!r}")


def __dir__():
    return sorted({*__all__, *_ROOMS})
