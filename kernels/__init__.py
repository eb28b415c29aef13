"""Explanation kernels: the math and nothing else.

Pure, batch-first TensorFlow functions, safe to trace and to compile with XLA; the
engine decides where to compile. The table of methods (`sightline.kernels.methods`)
names each method's kernel. Kernels load lazily: importing this package or the table
does not import TensorFlow.
"""

import importlib

# Public name -> the module under sightline.kernels that defines it.
_LAZY = {
    "cam": "activation_maps", "gradcam": "activation_maps",
    "gradcam_plus_plus": "activation_maps", "layercam": "activation_maps",
    "hirescam": "activation_maps", "xgradcam": "activation_maps",
    "eigencam": "activation_maps", "scorecam": "activation_maps",
    "saliency": "gradient_maps", "smoothgrad": "gradient_maps",
    "integrated_gradients": "gradient_maps", "mean_gradient_over_copies": "gradient_maps",
    "CHANNEL_REDUCTIONS": "gradient_maps",
    "resize_heatmaps": "postprocess", "scale_heatmaps": "postprocess",
    "scale_to_unit_range": "postprocess",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'sightline.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sightline.kernels.{_LAZY[name]}"), name)
