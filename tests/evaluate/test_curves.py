"""The compiled curves against hand computations: a linear model with a known gradient
(every curve, area and one-pass score recomputed in float64 NumPy), and a model that
reads only the left half of the image (where a map on that half must score a high SRG)."""

import keras
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from sightline.evaluate import curves as curves_module
from sightline.evaluate.curves import CurveSettings, build_controls, build_curves, build_prepare
from sightline.kernels import faithfulness as F
from sightline.model.adapter import adapt_model

SIDE = 16
GRID = (4, 4)
STEPS = 4
CLASSES = 3
BATCH = 4


def linear_model(weights, bias):
    model = keras.Sequential([keras.Input((SIDE, SIDE, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(weights.shape[1]), keras.layers.Softmax()])
    model.layers[1].set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    return adapt_model(model)


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(7)
    weights = rng.normal(0, 0.05, (SIDE * SIDE, CLASSES))
    bias = rng.normal(0, 0.1, CLASSES)
    adapter = linear_model(weights, bias)
    settings = CurveSettings(steps=STEPS, fill="mean", grid=GRID, seed=0)
    # Two rows per call: the rows of one image span several model calls.
    curves = build_curves(adapter, (SIDE, SIDE, 1), BATCH, settings)
    tight = build_curves(adapter, (SIDE, SIDE, 1), BATCH, settings)
    return {"weights": weights, "bias": bias, "curves": curves, "tight": tight,
            "adapter": adapter, "prepare": build_prepare(GRID, (SIDE, SIDE))}


def softmax(logits):
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def reference_curves(image, heatmap, target, weights, bias):
    """Float64, one image: MoRF, LeRF and insertion probabilities and fractions."""
    cells = heatmap.reshape(GRID[0], SIDE // GRID[0], GRID[1], SIDE // GRID[1]).mean(axis=(1, 3))
    order = np.argsort(-cells.ravel(), kind="stable")  # the maps here have no ties
    counts = [round(s * 16 / STEPS) for s in range(STEPS + 1)]
    blurred = scipy.ndimage.gaussian_filter(image, sigma=(SIDE / 16, SIDE / 16, 0), mode="reflect",
                                            truncate=3.0)
    mean = image.mean(axis=(0, 1))

    def score(x):
        return softmax(x.reshape(-1) @ weights + bias)[target]

    def cell_mask(chosen):
        mask = np.zeros(16, bool)
        mask[chosen] = True
        return np.kron(mask.reshape(GRID), np.ones((SIDE // GRID[0], SIDE // GRID[1]))) > 0

    out = {"morf": [], "lerf": [], "insertion": []}
    for k in counts:
        hidden = cell_mask(order[:k])
        out["morf"].append(score(np.where(hidden[..., None], mean, image)))
        hidden = cell_mask(order[::-1][:k])
        out["lerf"].append(score(np.where(hidden[..., None], mean, image)))
        shown = cell_mask(order[:k])
        out["insertion"].append(score(np.where(shown[..., None], image, blurred)))
    fractions = np.array(counts) / 16
    scaled = (heatmap - heatmap.min()) / (heatmap.max() - heatmap.min())
    one_pass = score(image * scaled[..., None])
    return out, fractions, one_pass, score(image)


def test_linear_model_curves_areas_and_one_pass_scores_by_hand(linear):
    rng = np.random.default_rng(8)
    count = 3  # a short batch: the padding must not leak into the numbers
    images = rng.uniform(0, 1, (BATCH, SIDE, SIDE, 1))
    targets = np.array([0, 2, 1, 0], np.int32)
    # The map of the explained class: its gradient, |W[:, c]| at every pixel.
    heatmaps = np.abs(linear["weights"][:, targets].T.reshape(BATCH, SIDE, SIDE))
    cells, pixel = linear["prepare"](heatmaps.astype(np.float32))
    outputs = linear["curves"](images.astype(np.float32), cells, pixel, targets,
                               np.arange(BATCH, dtype=np.int64))
    for b in range(count):
        expected, fractions, one_pass, original = reference_curves(
            images[b], heatmaps[b], targets[b], linear["weights"], linear["bias"])
        for column, name in enumerate(F.CURVES):
            np.testing.assert_allclose(outputs["probabilities"].numpy()[b, column],
                                       expected[name], atol=2e-6)
            np.testing.assert_allclose(outputs["fractions"].numpy()[b, column], fractions,
                                       atol=1e-7)
            assert outputs["auc"].numpy()[b, column] == pytest.approx(
                np.trapezoid(expected[name], fractions), abs=2e-6)
        assert outputs["one_pass"].numpy()[b] == pytest.approx(one_pass, abs=2e-6)
        assert outputs["original"].numpy()[b] == pytest.approx(original, abs=2e-6)
        assert outputs["tie_fraction"].numpy()[b] == 0.0
    # Logits too: the explained class's pre-softmax score of the untouched image.
    logits = images[0].reshape(-1) @ linear["weights"] + linear["bias"]
    assert outputs["logits"].numpy()[0, 0, 0] == pytest.approx(logits[targets[0]], abs=2e-5)


def test_numbers_do_not_depend_on_rows_per_call(linear, monkeypatch):
    rng = np.random.default_rng(9)
    images = rng.uniform(0, 1, (BATCH, SIDE, SIDE, 1)).astype(np.float32)
    heatmaps = rng.uniform(0, 1, (BATCH, *GRID)).astype(np.float32)
    cells, pixel = linear["prepare"](heatmaps)
    targets = np.zeros(BATCH, np.int32)
    index = np.arange(BATCH, dtype=np.int64)
    one_call = linear["curves"](images, cells, pixel, targets, index)
    # A 1 MB budget still fits every row of this small model in one call: force one.
    monkeypatch.setattr(curves_module, "rows_per_call", lambda *args, **kwargs: 1)
    tight = build_curves(linear["adapter"], (SIDE, SIDE, 1), BATCH,
                         CurveSettings(steps=STEPS, grid=GRID))
    many_calls = tight(images, cells, pixel, targets, index)
    for key in ("probabilities", "fractions", "auc", "one_pass"):
        np.testing.assert_allclose(one_call[key].numpy(), many_calls[key].numpy(), atol=1e-6)


def test_road_numbers_do_not_depend_on_rows_per_call(linear, monkeypatch):
    """All deletion rows in one call impute each distinct mask once (a 2x2 grid in 8
    steps repeats masks, and its last rows hide every cell); one row a call imputes
    every row: the same numbers."""
    rng = np.random.default_rng(10)
    images = rng.uniform(0, 1, (BATCH, SIDE, SIDE, 1)).astype(np.float32)
    heatmaps = rng.uniform(0, 1, (BATCH, 2, 2)).astype(np.float32)
    cells, pixel = build_prepare((2, 2), (SIDE, SIDE))(heatmaps)
    targets = np.arange(BATCH, dtype=np.int32) % CLASSES
    index = np.arange(BATCH, dtype=np.int64) + 20
    settings = dict(steps=8, fill="road", grid=(2, 2), seed=3)
    one_call = build_curves(linear["adapter"], (SIDE, SIDE, 1), BATCH,
                            CurveSettings(**settings))(images, cells, pixel, targets, index)
    # One row a call: no budget this small model fits is that tight.
    monkeypatch.setattr(curves_module, "rows_per_call", lambda *args, **kwargs: 1)
    many_calls = build_curves(linear["adapter"], (SIDE, SIDE, 1), BATCH,
                              CurveSettings(**settings))(images, cells, pixel, targets, index)
    for key in ("probabilities", "fractions", "auc"):
        np.testing.assert_allclose(one_call[key].numpy(), many_calls[key].numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def left_half():
    """Class 0's logit reads only the left half of the image; class 1's is constant."""
    weights = np.zeros((SIDE, SIDE, 2))
    weights[:, :SIDE // 2, 0] = 0.1
    bias = np.array([-6.0, 0.0])
    adapter = linear_model(weights.reshape(-1, 2), bias)
    functions = {}
    # Not blur: it keeps a region's low frequencies, which is all a model that sums
    # pixels reads.
    for fill in ("mean", "road"):
        functions[fill] = build_curves(adapter, (SIDE, SIDE, 1), BATCH,
                                       CurveSettings(steps=8, fill=fill, grid=GRID, seed=0))
    functions["adapter"] = adapter
    return functions


def left_half_images(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.2, (BATCH, SIDE, SIDE, 1))
    images[:, :, :SIDE // 2] = rng.uniform(0.6, 1.0, (BATCH, SIDE, SIDE // 2, 1))
    return images.astype(np.float32)


@pytest.mark.parametrize("fill", ["mean", "road"])
def test_a_map_on_what_the_model_reads_scores_a_high_srg(left_half, fill):
    images = left_half_images()
    index = np.arange(BATCH, dtype=np.int64)
    targets = np.zeros(BATCH, np.int32)
    left = np.zeros((BATCH, *GRID), np.float32)
    left[:, :, :GRID[1] // 2] = 1.0
    controls = build_controls(GRID, 0)(images, index)
    srg = {}
    prepare = build_prepare(GRID, (SIDE, SIDE))
    for name, heatmaps in (("left", left), ("right", 1.0 - left),
                           ("random", controls["random"].numpy())):
        cells, pixel = prepare(heatmaps)
        outputs = left_half[fill](images, cells, pixel, targets, index)
        auc = outputs["auc"].numpy()
        srg[name] = auc[:, F.LERF] - auc[:, F.MORF]
        if name == "left":
            assert outputs["tie_fraction"].numpy().min() == 1.0  # two values, all tied
    assert srg["left"].min() > 0.15, srg
    # Pointing at the half the model ignores ranks what matters last: LeRF hides it
    # first, so the SRG is the left map's with its sign turned.
    assert srg["right"].max() < -0.15, srg
    assert abs(srg["random"].mean()) < 0.1, srg


def test_road_noise_and_ties_follow_the_sample_not_its_place_in_the_batch(left_half):
    """ROAD's noise and the tie jitter are seeded by the sample index: the same sample
    scores the same wherever it sits in the batch."""
    images = left_half_images(seed=4)
    index = np.array([10, 11, 12, 13], np.int64)
    targets = np.zeros(BATCH, np.int32)
    rng = np.random.default_rng(5)
    heatmaps = rng.integers(0, 3, (BATCH, *GRID)).astype(np.float32)  # ties to break
    cells, pixel = build_prepare(GRID, (SIDE, SIDE))(heatmaps)
    first = left_half["road"](images, cells, pixel, targets, index)
    order = np.array([2, 0, 3, 1])
    second = left_half["road"](images[order], tf.gather(cells, order), tf.gather(pixel, order),
                               targets[order], index[order])
    for key in ("probabilities", "auc", "tie_fraction"):
        np.testing.assert_allclose(second[key].numpy(), first[key].numpy()[order], atol=1e-6)
    # Another seed moves the noise and the tie order: the numbers are not blind to it.
    other = build_curves(left_half["adapter"], (SIDE, SIDE, 1), BATCH,
                         CurveSettings(steps=8, fill="road", grid=GRID, seed=1))
    moved = other(images, cells, pixel, targets, index)["probabilities"].numpy()
    assert np.abs(moved - first["probabilities"].numpy()).max() > 1e-4


def test_road_numbers_do_not_depend_on_the_batch(left_half):
    """The solver is compiled by XLA for each batch shape: a sample's imputation must not
    depend on how many images share its call."""
    images = left_half_images(seed=6)
    index = np.arange(BATCH, dtype=np.int64) + 30
    targets = np.zeros(BATCH, np.int32)
    heatmaps = np.random.default_rng(7).uniform(0, 1, (BATCH, *GRID)).astype(np.float32)
    cells, pixel = build_prepare(GRID, (SIDE, SIDE))(heatmaps)
    whole = left_half["road"](images, cells, pixel, targets, index)
    half = BATCH // 2
    smaller = build_curves(left_half["adapter"], (SIDE, SIDE, 1), half,
                           CurveSettings(steps=8, fill="road", grid=GRID, seed=0))
    for start in (0, half):
        part = smaller(images[start:start + half], cells[start:start + half],
                       pixel[start:start + half], targets[start:start + half],
                       index[start:start + half])
        for key in ("probabilities", "auc"):
            np.testing.assert_allclose(part[key].numpy(), whole[key].numpy()[start:start + half],
                                       atol=1e-6)


def test_road_calls_leave_room_in_the_budget_for_the_solver(linear, monkeypatch):
    """ROAD's solver holds many input-sized arrays per row: with a small model on large
    images they, not the model, bound the rows a call may take."""
    budget_mb, total = 64, 42
    model_only = curves_module.rows_per_call(linear["adapter"], BATCH, total, budget_mb,
                                             on_gpu=True)
    fill_values = curves_module.ROAD_WORKING_COPIES * 96 * 96 * 3
    with_solver = curves_module.rows_per_call(linear["adapter"], BATCH, total, budget_mb,
                                              on_gpu=True, fill_values_per_row=fill_values)
    assert model_only == total
    assert 1 <= with_solver < model_only
    assert with_solver * BATCH * fill_values * 4 <= budget_mb * 2 ** 20
    # And build_curves asks for it on the deletion rows of road only.
    asked = []
    real = curves_module.rows_per_call

    def recording(*args, **kwargs):
        asked.append(args[5] if len(args) > 5 else kwargs.get("fill_values_per_row", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(curves_module, "rows_per_call", recording)
    for fill in ("mean", "road"):
        build_curves(linear["adapter"], (SIDE, SIDE, 1), BATCH,
                     CurveSettings(steps=STEPS, fill=fill, grid=GRID))
    assert asked == [0, 0, curves_module.ROAD_WORKING_COPIES * SIDE * SIDE, 0]
