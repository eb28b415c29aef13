"""Accuracy guards: every benchmark row's maps must match a reference, or the row is
marked failed and counts for no target (a fast wrong result must not pass)."""

import math

import numpy as np

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
# Saliency (one input gradient) is judged at a quantile of each map's pixels, not at its
# worst pixel. A deep ReLU6 network holds units within float32 rounding of a kink (3 of
# the 401,408 of MobileNetV2's first convolution on one random image lie within 1e-6 of
# one): graph mode at batch 16, whose backward kernels round differently from a batch of
# one, then flips that unit's mask, and the map changes by up to 3e-2 of its range over
# the unit's receptive field alone (a 7x7 block of pixels: 42 of 50,176 here), while a
# float64 copy of the model agrees with the batch of one to 2e-6. Measured on the
# random-weight MobileNetV2: 2 of 4 maps held such a block (0.0295 and 0.0053 at the
# worst pixel). A wrong class, layer or method moves most pixels by O(1), so 0.5% of
# pixels left out still catches it. Not every flip is that small: on 1 of the 16 images
# of that batch graph mode departs from the float64 copy on 10.6% of the pixels (by up to
# 2.3e-2: a deeper unit, a wider field) where XLA agrees with it, so XLA's row, judged
# against graph's, still fails there (9.5e-3); a float64 reference would settle it.
GUARD_PIXEL_QUANTILE = {"saliency": 0.995}
# mixed_bfloat16 against float32: correlation of the raw maps over the batch. Input
# gradients pass back through every layer in bfloat16 (8-bit significand), so maps
# built from them keep less than CAM-family maps; measured on the built-in models.
BF16_MIN_CORRELATION = {"cam": 0.98, "gradcam": 0.95, "gradcam_plus_plus": 0.9,
                        "saliency": 0.8, "smoothgrad": 0.8, "integrated_gradients": 0.8}

# Probabilities under mixed_bfloat16 against float32: logits carry bfloat16's relative
# rounding of 2**-8 (0.4%) per layer; probabilities move by at most a few 1e-3.
BF16_PROBABILITY_ATOL = 2e-2


def relative_error(actual, expected, quantile=None):
    """Largest |actual - expected| relative to each expected map's largest magnitude; with
    `quantile`, each map's error at that quantile of its values, the largest over maps."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return math.inf
    axes = tuple(range(1, expected.ndim))
    scale = np.abs(expected).max(axis=axes, keepdims=True)
    scale = np.maximum(scale, max(np.abs(expected).max() * 1e-6, 1e-30))
    error = np.abs(actual - expected) / scale
    if quantile is None or expected.ndim < 2:
        return float(error.max())
    per_map = np.quantile(error.reshape(len(error), -1), quantile, axis=1)  # [B]
    return float(per_map.max())


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
    quantile = GUARD_PIXEL_QUANTILE.get(method)
    value = relative_error(result, reference, quantile)
    threshold = GUARD_RELATIVE_ATOL_AVERAGED.get(method, GUARD_RELATIVE_ATOL)
    metric = ("max relative error" if quantile is None
              else f"relative error at the {100 * quantile:g}th percentile of pixels")
    return {"reference": reference_name, "metric": metric,
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


# /proc/cpuinfo flags of the CPU's bfloat16 units, most capable first.
BF16_UNITS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"))


def bf16_capability(cpuinfo="/proc/cpuinfo"):
    """The CPU's bfloat16 units as people name them ("AMX", "AVX-512 BF16", "none"),
    and the CPU's model name, from /proc/cpuinfo (("none", "") where it is unreadable)."""
    try:
        with open(cpuinfo) as handle:
            text = handle.read()
    except OSError:
        return "none", ""
    flags, model = set(), ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
        elif key.strip() == "model name" and not model:
            model = value.strip()
    units = [name for flag, name in BF16_UNITS if flag in flags]
    return (", ".join(units) or "none"), model
