"""The naive eager loop (sightline.bench.eager_baseline) as a second reference: `explain` with
raw, native-size maps must give the same maps, method by method."""

import numpy as np
import pytest

from sightline import explain
from sightline.bench.eager_baseline import EAGER_FUNCTIONS, eager_maps
from tests import models
from tests.models import FLAVORS
from tests.tolerances import MODEL_RELATIVE_ATOL

NUM_IMAGES = 6
OPTIONS = {"smoothgrad": dict(num_copies=3, noise_sigma=0.2, noise_seed=5),
           "integrated_gradients": dict(num_steps=4)}


@pytest.fixture(scope="module", params=FLAVORS)
def model(request):
    return models.fashion_cnn(request.param, seed=11)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(21).uniform(0, 1, (NUM_IMAGES, 28, 28, 1)).astype(np.float32)


def _close_relative(actual, expected, atol):
    scale = np.maximum(np.abs(expected).max(axis=(1, 2), keepdims=True), 1e-12)
    np.testing.assert_allclose(actual / scale, expected / scale, atol=atol)


@pytest.mark.parametrize("method", sorted(EAGER_FUNCTIONS))
@pytest.mark.parametrize("targets", [None, "fixed"])
def test_explain_matches_the_eager_loop(model, images, method, targets):
    if targets == "fixed":
        targets = np.arange(NUM_IMAGES, dtype=np.int32) % 10
    options = OPTIONS.get(method, {})
    expected = eager_maps(method, model, images, targets, **options)
    result = explain(model, images, methods=(method,), targets=targets, normalize=False,
                     map_size="native", batch_size=4, xla=False, **options)
    assert result.heatmaps[method].shape == expected.shape
    assert expected.dtype == np.float32
    _close_relative(result.heatmaps[method], expected, MODEL_RELATIVE_ATOL)


def test_unknown_method_is_refused(model, images):
    with pytest.raises(ValueError, match="no method"):
        eager_maps("scorecam", model, images)
