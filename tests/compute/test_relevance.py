"""Each channel's relevance to the explained class (the audit's "what" view): the step's
values against an eager float64 reference, the closed form of a GAP + dense head against
the gradient form, and the job's shards against explain()."""

import h5py
import numpy as np
import pytest
import tensorflow as tf

from sightline import explain
from sightline.cli.main import main
from sightline.compute.step import CAM_RELEVANCE, GRADIENT_RELEVANCE, run_relevance
from sightline.model.adapter import adapt_model
from sightline.store.results import open_results
from sightline.store.layout import RELEVANCE, RELEVANCE_SCALE
from tests import models
from tests.tolerances import FLOAT16_ATOL, MODEL_RELATIVE_ATOL


@pytest.fixture(scope="module")
def model():
    return models.functional_cnn("keras3", input_shape=(16, 16, 3), num_classes=4)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(0, 1, (10, 16, 16, 3)).astype(np.float32)


def eager_relevance(model, images, targets):
    """sum_ij A * dy_c/dA per channel, one image at a time, the gradient taken eagerly on
    a sub-model that ends at the last convolution, summed in float64."""
    target_layer = model.get_layer("conv_c")
    head_start = model.layers.index(target_layer) + 1
    backbone = tf.keras.Model(model.inputs, target_layer.output)
    rows = []
    for image, target in zip(images, targets):
        activations = backbone(image[None])
        with tf.GradientTape() as tape:
            tape.watch(activations)
            x = activations
            for layer in model.layers[head_start:]:
                if layer.name == "probabilities":
                    break  # the explained score is the logit, not the probability
                x = layer(x, training=False)
            score = x[0, int(target)]
        gradient = tape.gradient(score, activations).numpy().astype(np.float64)
        rows.append((activations.numpy().astype(np.float64) * gradient).sum(axis=(0, 1, 2)))
    return np.array(rows)  # [N,K]


def relative_error(got, want):
    return np.abs(got - want).max() / np.abs(want).max()


@pytest.mark.parametrize("methods", [("gradcam",), ("saliency",), ("eigencam",)])
def test_relevance_equals_the_eager_reference_whatever_the_methods(model, images, methods):
    result = explain(model, images, methods=methods, batch_size=4)
    want = eager_relevance(model, images, result.targets)
    assert result.relevance.shape == (len(images), 12)
    assert relative_error(result.relevance, want) < MODEL_RELATIVE_ATOL


def test_cam_only_run_uses_the_closed_form_and_it_equals_the_gradient_form(model, images):
    adapter = adapt_model(model)
    assert run_relevance(adapter, ("cam",)) == CAM_RELEVANCE
    assert run_relevance(adapter, ("cam", "gradcam")) == GRADIENT_RELEVANCE
    targets = np.arange(len(images)) % 4  # every class, not only the predicted one
    closed = explain(model, images, methods=("cam",), targets=targets).relevance
    gradient = explain(model, images, methods=("gradcam",), targets=targets).relevance
    want = eager_relevance(model, images, targets)
    assert relative_error(closed, want) < MODEL_RELATIVE_ATOL
    assert relative_error(closed, gradient) < MODEL_RELATIVE_ATOL


def test_a_model_without_feature_map_has_no_relevance():
    dense = models.dense_only("keras3")
    images = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 1)).astype(np.float32)
    assert explain(dense, images, methods=("saliency",)).relevance is None


def test_the_job_stores_relevance_that_explain_computes(model, images, tmp_path):
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "images.npy", images)
    out = tmp_path / "out"
    assert main(["explain", "--model", str(tmp_path / "model.keras"), "--data",
                 str(tmp_path / "images.npy"), "--out", str(out), "--methods", "gradcam",
                 "--batch-size", "4", "--shard-size", "6", "--quiet"]) == 0
    want = explain(model, images, methods=("gradcam",)).relevance
    with open_results(str(out)) as results:
        assert results.relevance == GRADIENT_RELEVANCE and results.relevance_channels == 12
        parts = [(chunk["sample/index"], results.relevance_of(chunk))
                 for chunk in results.chunks(["sample/index", RELEVANCE, RELEVANCE_SCALE], rows=4)]
    index = np.concatenate([p[0] for p in parts])
    stored = np.concatenate([p[1] for p in parts])
    assert list(index) == list(range(len(images)))
    # float16 of values scaled to max |r| = 1: half a step near 1, relative to each row.
    error = np.abs(stored - want).max(axis=1) / np.abs(want).max(axis=1)
    assert error.max() < FLOAT16_ATOL
    with h5py.File(out / "index.h5", "r") as index_file:
        assert index_file[RELEVANCE].dtype == np.float16
        assert index_file[RELEVANCE].shape == (len(images), 12)
