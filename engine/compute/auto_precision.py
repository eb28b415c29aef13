"""precision="auto": float32 or mixed_bfloat16, whichever this machine runs faster, and
bfloat16 only when its maps agree with float32's on the first batch.

bfloat16 pays off only on CPUs with bfloat16 units (AMX, AVX-512 BF16) and on GPUs;
elsewhere it only adds casts. Its 8-bit significand can also move maps built from
gradients through many layers. So both are measured on the job's own first batch.
"""

import statistics
import time

import numpy as np

AUTO = "auto"
CANDIDATES = ("float32", "mixed_bfloat16")
# Per-map Pearson correlation of the bfloat16 maps with the float32 maps, averaged over
# the batch, that bfloat16 must reach for every method.
MIN_MAP_CORRELATION = 0.98
TIMED_CALLS = 3


def map_correlations(maps, reference):
    """Pearson correlation of each map with its reference map: maps[B,h,w] -> [B].
    Maps that are constant in either (no pattern to agree on) count as agreeing when
    they are equal and as disagreeing otherwise."""
    a = np.asarray(maps, np.float64).reshape(len(maps), -1)
    b = np.asarray(reference, np.float64).reshape(len(reference), -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    flat = norms == 0
    correlations = np.where(flat, 0.0, (a * b).sum(axis=1) / np.where(flat, 1.0, norms))
    equal = np.all(np.isclose(np.asarray(maps, np.float64).reshape(len(maps), -1),
                              np.asarray(reference, np.float64).reshape(len(reference), -1)),
                   axis=1)
    return np.where(flat, equal.astype(np.float64), correlations)


def choose_precision(seconds, correlations, min_correlation=MIN_MAP_CORRELATION):
    """The decision, from measured figures: (precision, reason).

    seconds: precision -> seconds per batch (float32 and mixed_bfloat16);
    correlations: method -> mean per-map correlation of bfloat16 with float32.
    mixed_bfloat16 only when it is faster AND every method's maps agree.
    """
    faster = seconds["mixed_bfloat16"] < seconds["float32"]
    worst = min(correlations, key=correlations.get) if correlations else None
    agrees = worst is None or correlations[worst] >= min_correlation
    if faster and agrees:
        return "mixed_bfloat16", "faster and its maps agree"
    if not faster:
        return "float32", "mixed_bfloat16 is not faster on this machine"
    return "float32", (f"mixed_bfloat16's {worst} maps correlate {correlations[worst]:.4f} "
                       f"with float32's, below {min_correlation}")


def measure_precisions(run_of, images, targets, index, methods, count=None,
                       clock=time.perf_counter):
    """Time each candidate's step on one batch and compare their maps.

    run_of: precision -> a callable (images, targets, index) -> the step's outputs
    dict. The calls alternate between the candidates, so a change in the machine's
    load touches both alike. count: the batch's samples (the rest is padding, left
    out of the comparison). Returns the figures the manifest records, the choice
    included.
    """
    outputs = {p: run_of[p](images, targets, index) for p in CANDIDATES}  # traces, warms
    times = {p: [] for p in CANDIDATES}
    for _ in range(TIMED_CALLS):
        for precision in CANDIDATES:
            started = clock()
            result = run_of[precision](images, targets, index)
            np.asarray(result["scores"])  # wait for the result on any device
            times[precision].append(clock() - started)
    seconds = {p: statistics.median(t) for p, t in times.items()}
    count = len(images) if count is None else count
    correlations = {}
    for method in methods:
        name = f"heatmaps/{method}"
        correlations[method] = float(np.mean(map_correlations(
            np.asarray(outputs["mixed_bfloat16"][name], np.float32)[:count],
            np.asarray(outputs["float32"][name], np.float32)[:count])))
    precision, reason = choose_precision(seconds, correlations)
    return {"choice": precision, "reason": reason,
            "seconds_per_batch": {p: round(s, 6) for p, s in seconds.items()},
            "map_correlation": {m: round(c, 5) for m, c in correlations.items()},
            "min_map_correlation": MIN_MAP_CORRELATION, "batch_size": int(len(images)), "samples": int(count)}
