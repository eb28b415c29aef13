"""Explanation kernels: the math and nothing else.

Pure, batch-first TensorFlow functions, safe to trace and to compile with XLA; the
engine decides where to compile. The table of methods (`sightline.kernels.methods`)
names each method's kernel. Kernels load lazily: importing this package or the table
does not import TensorFlow.
"""

import importlib

from sightline.kernels.methods import METHODS

# Public name -> the module under sightline.kernels that defines it: every row's kernel
# (a new row is exported without an edit here), plus the helpers.
_LAZY = {function: module
         for module, function in (row.kernel.split(":") for row in METHODS.values())}
_LAZY.update({
    "mean_gradient_over_copies": "gradient_maps", "CHANNEL_REDUCTIONS": "gradient_maps",
    "resize_heatmaps": "postprocess", "scale_heatmaps": "postprocess",
    "scale_to_unit_range": "postprocess", "spearman": "similarity", "ssim": "similarity",
    "channel_relevance": "activation_maps", "cam_channel_relevance": "activation_maps",
})

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'sightline.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sightline.kernels.{_LAZY[name]}"), name)
