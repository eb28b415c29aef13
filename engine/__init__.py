"""sightline engine: model adaptation, the compiled explanation step and the API.

Attributes load lazily so that `sightline --version` and `--help` answer without
importing TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "explain": "engine.api", "Explanation": "engine.api",
    "ExplainConfig": "engine.config", "make_config": "engine.config",
    "ModelAdapter": "engine.model", "adapt_model": "engine.model", "load_model": "engine.model",
    "open_results": "engine.results", "run_job": "engine.runner",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
