"""Explanation kernels: the math and nothing else.

Pure, batch-first TensorFlow functions, safe to trace and to compile with XLA; the
engine decides where to compile. `KERNELS` maps each method name to its kernel.
"""

from sightline.kernels.activation_maps import cam, gradcam, gradcam_plus_plus, scorecam
from sightline.kernels.gradient_maps import (CHANNEL_REDUCTIONS, integrated_gradients,
                                   mean_gradient_over_copies, saliency, smoothgrad)
from sightline.kernels.postprocess import resize_heatmaps, scale_heatmaps, scale_to_unit_range

KERNELS = {
    "cam": cam,
    "gradcam": gradcam,
    "gradcam_plus_plus": gradcam_plus_plus,
    "scorecam": scorecam,
    "saliency": saliency,
    "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients,
}

# Maps these methods make live at the target layer's resolution; the others at the input's.
ACTIVATION_METHODS = ("cam", "gradcam", "gradcam_plus_plus", "scorecam")
GRADIENT_METHODS = ("saliency", "smoothgrad", "integrated_gradients")

__all__ = [
    "KERNELS", "ACTIVATION_METHODS", "GRADIENT_METHODS", "CHANNEL_REDUCTIONS",
    "cam", "gradcam", "gradcam_plus_plus", "scorecam", "saliency", "smoothgrad",
    "integrated_gradients", "mean_gradient_over_copies", "resize_heatmaps",
    "scale_heatmaps", "scale_to_unit_range",
]
