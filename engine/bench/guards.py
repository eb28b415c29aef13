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
# mixed_bfloat16 against float32: correlation of the raw maps over the batch. Input
# gradients pass back through every layer in bfloat16 (8-bit significand), so maps
# built from them keep less than CAM-family maps; measured on the built-in models.
BF16_MIN_CORRELATION = {"cam": 0.98, "gradcam": 0.95, "gradcam_plus_plus": 0.9,
                        "saliency": 0.8, "smoothgrad": 0.8, "integrated_gradients": 0.8}

# Probabilities under mixed_bfloat16 against float32: logits carry bfloat16's relative
# rounding of 2**-8 (0.4%) per layer; probabilities move by at most a few 1e-3.
BF16_PROBABILITY_ATOL = 2e-2


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
