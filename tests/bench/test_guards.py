"""The accuracy guards: what they let through and what they catch."""

import numpy as np

from sightline.bench.guards import GUARD_RELATIVE_ATOL, guard, relative_error


def _maps(seed=0, count=4, side=224):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (count, side, side))


def test_a_flipped_kink_block_passes_saliency_and_fails_the_worst_pixel_rule():
    reference = _maps()
    result = reference.copy()
    # One unit's mask flipped: its 7x7 receptive field moves by 3% of the map's range.
    result[0, 176:183, 50:57] += 0.03 * reference[0].max()
    assert guard("saliency", "graph", result, reference, "eager_loop")["passed"]
    assert not guard("gradcam", "graph", result, reference, "eager_loop")["passed"]
    assert relative_error(result, reference) > 10 * GUARD_RELATIVE_ATOL


def test_saliency_guard_still_catches_wrong_maps():
    reference = _maps()
    other_class = _maps(seed=1)
    assert not guard("saliency", "graph", other_class, reference, "eager_loop")["passed"]
    everywhere = reference * (1 + 5 * GUARD_RELATIVE_ATOL)  # a small error on every pixel
    assert not guard("saliency", "graph", everywhere, reference, "eager_loop")["passed"]
    # 1% of the pixels off is more than a flipped unit or two: caught.
    spread = reference.copy()
    flat = spread.reshape(len(spread), -1)
    flat[:, ::100] += 0.03
    assert not guard("saliency", "graph", spread, reference, "eager_loop")["passed"]


def test_quantile_error_matches_a_per_map_reference():
    reference = _maps(count=3, side=20)
    result = reference + np.random.default_rng(2).normal(0, 1e-3, reference.shape)
    scale = np.abs(reference).max(axis=(1, 2), keepdims=True)
    expected = max(np.quantile((np.abs(result - reference) / scale)[i], 0.995) for i in range(3))
    assert np.isclose(relative_error(result, reference, 0.995), expected, rtol=1e-12)
    assert np.isclose(relative_error(result, reference),
                      (np.abs(result - reference) / scale).max(), rtol=1e-12)
