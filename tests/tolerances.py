"""Every numerical tolerance of the suite, with the reason it is what it is."""

# float32 kernels against float64 NumPy references on inputs of order 1: float32
# rounding in sums over up to a few hundred terms.
KERNEL_RTOL = 1e-5
KERNEL_ATOL = 1e-5

# Whole models in float32 (oneDNN convolutions, different summation orders between
# batch shapes and between graph mode and XLA), compared on maps scaled to [0, 1].
MODEL_ATOL = 2e-4

# Raw (unscaled) maps through whole models: relative to each map's largest magnitude.
MODEL_RELATIVE_ATOL = 1e-4

# Saliency against central finite differences in float64 on a tiny model: step 1e-3,
# truncation error O(step^2) plus float32 forward-pass rounding in the gradient.
FINITE_DIFFERENCE_ATOL = 2e-3

# Integrated Gradients completeness at the default 32 midpoint steps on small ReLU
# networks: the midpoint rule's error on a piecewise-linear path integral.
IG_COMPLETENESS_RTOL = 0.03

# Grad-CAM == ReLU(CAM) / (h*w) on GAP + dense heads: the same float32 sums in two orders.
GRADCAM_CAM_RTOL = 1e-5

# Mixed precision against float32, as the correlation of the scaled maps. CAM-family
# maps use one layer's activations (float32 arithmetic in the kernels); input
# gradients pass back through every layer in bfloat16 (8-bit significand), so on
# random-weight models saliency keeps less: 0.975 measured for mixed_bfloat16.
MIXED_PRECISION_MIN_CORRELATION = {"cam": 0.98, "gradcam": 0.98, "saliency": 0.95}

# Maps stored as float16 in [0, 1] against float32 maps: half a float16 step near 1
# (2**-11) plus MODEL_ATOL for the different batch shapes of the two runs.
FLOAT16_ATOL = 2 ** -11 + MODEL_ATOL
