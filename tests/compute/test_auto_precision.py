"""precision="auto": the choice from injected timings and map agreements (no speed is
asserted), the per-map correlation against NumPy's, and explain() with "auto"."""

import itertools

import numpy as np
import pytest

from sightline.compute.auto_precision import (MIN_MAP_CORRELATION, choose_precision,
                                              map_correlations, measure_precisions)


@pytest.mark.parametrize("bf16_seconds, correlation, expected", [
    (0.5, 0.999, "mixed_bfloat16"),   # faster and agrees
    (1.5, 0.999, "float32"),          # agrees but slower
    (1.0, 0.999, "float32"),          # a tie is not faster
    (0.5, 0.97, "float32"),           # faster but its maps disagree
    (0.5, MIN_MAP_CORRELATION, "mixed_bfloat16"),  # the threshold itself agrees
])
def test_choice_needs_faster_and_agreeing(bf16_seconds, correlation, expected):
    choice, reason = choose_precision({"float32": 1.0, "mixed_bfloat16": bf16_seconds},
                                      {"gradcam": 0.999, "saliency": correlation})
    assert choice == expected
    if expected == "float32" and correlation < MIN_MAP_CORRELATION:
        assert "saliency" in reason


def test_map_correlations_match_numpy_corrcoef_per_map():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(5, 4, 6))
    maps = reference + rng.normal(scale=0.5, size=reference.shape)
    expected = [np.corrcoef(m.ravel(), r.ravel())[0, 1] for m, r in zip(maps, reference)]
    np.testing.assert_allclose(map_correlations(maps, reference), expected, rtol=1e-12)
    flat = np.zeros((2, 3, 3))
    np.testing.assert_array_equal(map_correlations(flat, flat), [1.0, 1.0])
    np.testing.assert_array_equal(map_correlations(flat, flat + [[[1.0]]]), [0.0, 0.0])


def test_measure_uses_injected_clock_and_ignores_padding():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4, 3, 3)).astype(np.float32)
    # bfloat16 maps agree on the 3 samples; the padding row is noise and must not count.
    noisy = reference.copy()
    noisy[3] = rng.normal(size=(3, 3))
    run_of = {"float32": lambda *_: {"heatmaps/gradcam": reference, "scores": np.ones(4)},
              "mixed_bfloat16": lambda *_: {"heatmaps/gradcam": noisy, "scores": np.ones(4)}}
    # Calls alternate float32, bfloat16: each timed call reads the clock twice.
    durations = itertools.cycle([2.0, 1.0])  # float32 takes 2 s, bfloat16 1 s
    now = [0.0]
    ticks = iter(range(1000))

    def clock():
        if next(ticks) % 2:
            now[0] += next(durations)
        return now[0]

    figures = measure_precisions(run_of, np.zeros((4, 2, 2, 1)), None, None, ("gradcam",),
                                 count=3, clock=clock)
    assert figures["seconds_per_batch"] == {"float32": 2.0, "mixed_bfloat16": 1.0}
    assert figures["map_correlation"]["gradcam"] == pytest.approx(1.0)
    assert figures["choice"] == "mixed_bfloat16"
    assert figures["samples"] == 3 and figures["batch_size"] == 4


def test_explain_auto_returns_one_of_the_two_and_its_maps():
    from sightline import explain
    from tests import models
    model = models.functional_cnn("keras3", seed=5)
    images = np.random.default_rng(1).uniform(0, 1, (6, 16, 16, 3)).astype(np.float32)
    result = explain(model, images, methods=("gradcam",), precision="auto", batch_size=8)
    assert result.precision in ("float32", "mixed_bfloat16")
    settled = explain(model, images, methods=("gradcam",), precision=result.precision,
                      batch_size=8)
    np.testing.assert_array_equal(result.heatmaps["gradcam"], settled.heatmaps["gradcam"])
