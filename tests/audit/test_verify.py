"""Proof by ablation against an eager per-image reference on a tiny Keras model whose
class 0 reads only the top-left corner of the image."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sightline.audit.verify import (ablate, ablation_drops, apply_verification, control_region,
                                    own_regions, own_spot_drops, region_pixels, verify_cluster)
from tests.references import eager_drops

SIDE = 8
CORNER = [0.0, 3 / 8, 0.0, 3 / 8]  # rows 0..2, cols 0..2
ELSEWHERE = [5 / 8, 1.0, 0.0, 3 / 8]  # bottom-left: class 0 ignores it


@pytest.fixture(scope="module")
def corner_model():
    """Flatten -> Dense(2) -> softmax. Class 0's logit is 2 x the sum of the top-left 3x3
    pixels of channel 0; class 1's is 0.3 x the sum of every pixel of both channels."""
    model = keras.Sequential([keras.Input((SIDE, SIDE, 2)), keras.layers.Flatten(),
                              keras.layers.Dense(2), keras.layers.Softmax()])
    kernel = np.zeros((SIDE, SIDE, 2, 2), np.float32)
    kernel[:3, :3, 0, 0] = 2.0
    kernel[:, :, :, 1] = 0.3
    model.layers[1].set_weights([kernel.reshape(-1, 2), np.zeros(2, np.float32)])
    compiled = tf.function(lambda images: model(images, training=False))
    return model, compiled


def corner_images(count, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, (count, SIDE, SIDE, 2)).astype(np.float32)
    images[:, :3, :3, 0] += rng.uniform(0.6, 1.0, (count, 3, 3)).astype(np.float32)
    return images


def cluster_looking_at(region, mean_heatmap, flagged=True):
    return {"id": 4, "class": 0, "class_name": "horse", "hot_region": region,
            "mean_heatmap": mean_heatmap, "flagged": flagged,
            "reasons": ["12% of class 'horse': ..."], "verification": None}


def corner_heatmap():
    heatmap = np.full((SIDE, SIDE), 0.05)
    heatmap[:3, :3] = 1.0
    return heatmap


def test_drops_match_the_eager_reference(corner_model):
    model, compiled = corner_model
    images = corner_images(13)
    hot, control = ablation_drops(compiled, images, 0, [CORNER, ELSEWHERE], batch_size=5)
    for numbers, region in ((hot, CORNER), (control, ELSEWHERE)):
        drop, changed = eager_drops(model, images, region, 0)
        assert numbers["mean_drop"] == pytest.approx(drop, abs=1e-5)
        assert numbers["changed_share"] == pytest.approx(changed)
        assert numbers["count"] == 13
    assert hot["mean_drop"] > 0.3 and abs(control["mean_drop"]) < 0.05


def test_numbers_do_not_depend_on_batching(corner_model):
    _, compiled = corner_model
    images = corner_images(11, seed=1)
    one = ablation_drops(compiled, images, 0, [CORNER], batch_size=1)
    chunks = ablation_drops(compiled, [images[:4], images[4:]], 0, [CORNER], batch_size=3)
    assert one[0]["mean_drop"] == pytest.approx(chunks[0]["mean_drop"], abs=1e-6)
    assert one[0]["changed_share"] == chunks[0]["changed_share"]


def test_batches_never_exceed_the_batch_size(corner_model):
    _, compiled = corner_model
    sizes = []

    def probabilities(batch):
        sizes.append(len(batch))
        return compiled(batch)

    ablation_drops(probabilities, corner_images(10), 0, [CORNER, None], batch_size=4)
    # Per batch: the originals and one ablated copy (the None region is skipped).
    assert sizes == [4, 4, 4, 4, 2, 2]


def test_a_region_the_model_uses_is_verified(corner_model):
    _, compiled = corner_model
    cluster = cluster_looking_at(CORNER, corner_heatmap())
    verification = verify_cluster(compiled, corner_images(12, seed=2), cluster, batch_size=8)
    assert verification["depends"]
    # The control is the far corner, away from the hot box, where the map is low.
    assert verification["control"]["region"] == [5 / 8, 1.0, 5 / 8, 1.0]
    apply_verification(cluster, {"region": verification})
    assert cluster["flagged"] and not cluster["downgraded"]
    assert cluster["reasons"][-1].startswith("verified: hiding the region lowers the "
                                             "probability of class 'horse' by 0.")


def test_a_region_the_model_ignores_downgrades_the_flag(corner_model):
    _, compiled = corner_model
    heatmap = np.full((SIDE, SIDE), 0.05)
    heatmap[5:, :3] = 1.0
    cluster = cluster_looking_at(ELSEWHERE, heatmap)
    verification = verify_cluster(compiled, corner_images(12, seed=3), cluster)
    assert not verification["depends"]
    assert verification["hot"]["mean_drop"] < 0.1
    apply_verification(cluster, {"region": verification})
    assert not cluster["flagged"] and cluster["downgraded"]
    assert "downgraded: the model does not depend on this region" in cluster["reasons"][-1]


def test_control_region_by_hand():
    mean_map = np.zeros((4, 4))
    mean_map[:2, :2] = 1.0  # hot: top-left 2x2
    assert control_region(mean_map, [0, 0.5, 0, 0.5]) == [0.5, 1.0, 0.5, 1.0]
    # The far corner holds mass now. The 2x2 boxes apart from the hot one start at
    # (2,0), (2,1), (2,2), (0,2), (1,2); only (2,2) holds mass, so the median is 0 and it
    # drops out. Farthest of the rest (centre to centre): (2,1) and (1,2), 0.56 of the side
    # away; the tie goes to row-major order: (1,2).
    mean_map[3, 3] = 2.0
    assert control_region(mean_map, [0, 0.5, 0, 0.5]) == [0.25, 0.75, 0.5, 1.0]
    assert control_region(np.ones((2, 2)), [0, 1, 0, 1]) is None


def test_ablation_fills_the_box_with_the_image_mean_and_copies():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    kept = images.copy()
    out = ablate(images, [0.25, 0.75, 0.5, 1.0])
    np.testing.assert_array_equal(images, kept)
    for n in range(2):
        for c in range(3):
            expected = kept[n, :, :, c].mean()
            np.testing.assert_allclose(out[n, 1:3, 2:4, c], expected)
            outside = np.ones((4, 4), bool)
            outside[1:3, 2:4] = False
            np.testing.assert_array_equal(out[n, :, :, c][outside], kept[n, :, :, c][outside])
    assert region_pixels([0.3, 0.7, 0.1, 0.95], 10, 10) == (3, 7, 1, 10)


def test_bad_input_is_refused(corner_model):
    _, compiled = corner_model
    with pytest.raises(ValueError, match="0 <= y0 < y1 <= 1"):
        region_pixels([0.5, 0.2, 0, 1], 8, 8)
    with pytest.raises(ValueError, match=r"images must be \[n, height, width, channels\]"):
        ablation_drops(compiled, np.zeros((2, 8, 8)), 0, [CORNER])
    with pytest.raises(ValueError, match="explained class 5"):
        ablation_drops(compiled, corner_images(2), 5, [CORNER])
    with pytest.raises(ValueError, match="no images to ablate"):
        ablation_drops(compiled, [], 0, [CORNER])
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        ablation_drops(compiled, corner_images(2), 0, [CORNER], batch_size=0)


def test_a_region_no_more_needed_than_the_control_is_not_proof():
    """A model that reads texture everywhere (class 0's logit grows with the image's
    variance) loses about as much from the control box as from the hot one: a drop, but
    no proof that the hot region matters."""

    def texture(images):
        logit = 60.0 * images.reshape(len(images), -1).var(axis=1) - 4.0
        first = 1.0 / (1.0 + np.exp(-logit))
        return np.stack([first, 1.0 - first], axis=1)

    images = np.random.default_rng(4).uniform(0, 1, (20, SIDE, SIDE, 2)).astype(np.float32)
    cluster = cluster_looking_at(CORNER, corner_heatmap())
    verification = verify_cluster(texture, images, cluster)
    hot, control = verification["hot"]["mean_drop"], verification["control"]["mean_drop"]
    assert hot >= 0.1 and control > hot / 2, (hot, control)
    assert not verification["depends"]


@pytest.mark.parametrize("seed", range(4))
def test_control_region_matches_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(6, 15, 2)
    mean_map = rng.uniform(0, 1, (height, width))
    top, left = rng.integers(0, height - 3), rng.integers(0, width - 3)
    bottom, right = top + rng.integers(1, 4), left + rng.integers(1, 4)
    region = [top / height, bottom / height, left / width, right / width]
    # Reference: every box position through a sliding window, the rule applied to arrays.
    boxes = np.lib.stride_tricks.sliding_window_view(mean_map, (bottom - top, right - left))
    mass = boxes.sum(axis=(2, 3))  # [positions_y, positions_x]
    rows, cols = np.indices(mass.shape)
    apart = ((rows >= bottom) | (rows + bottom - top <= top) |
             (cols >= right) | (cols + right - left <= left))
    centre_y = (rows + (bottom - top) / 2) / height - (top + bottom) / 2 / height
    centre_x = (cols + (right - left) / 2) / width - (left + right) / 2 / width
    distance = np.hypot(centre_y, centre_x)
    allowed = apart & (mass <= np.median(mass[apart]) + 1e-9)
    best = max(zip(distance[allowed], -mass[allowed], -rows[allowed], -cols[allowed]))
    row, col = -best[2], -best[3]
    expected = [row / height, (row + bottom - top) / height, col / width,
                (col + right - left) / width]
    assert control_region(mean_map, region) == pytest.approx(expected)


def test_each_members_own_spot_is_drawn_in_cells_of_the_layer(corner_model):
    """A pixel map (saliency's) whose hot pixels are two of the corner's nine: on the
    pixels, the spot hides the 2x2 box around them and leaves the rest of the corner the
    model reads; on a 4x4 layer grid (cells of 2x2 pixels) the box widens to the cells
    it touches, the top-left 4x4 pixels. Drops against the eager reference."""
    model, compiled = corner_model
    images = corner_images(6, seed=4)
    maps = np.full((6, SIDE, SIDE), 0.05)
    maps[:, 1, 1], maps[:, 2, 2] = 1.0, 0.6
    pixels, _ = own_regions(maps)
    assert pixels == [[1 / 8, 3 / 8, 1 / 8, 3 / 8]] * 6
    hot, control = own_regions(maps, grid=(4, 4))
    # The control: on the map averaged to the cells (0.29 and 0.19 on the diagonal, 0.05
    # elsewhere), the same-size box apart from the spot, low, and farthest from it.
    assert hot == [[0.0, 0.5, 0.0, 0.5]] * 6
    assert control == [[0.5, 1.0, 0.5, 1.0]] * 6
    numbers = own_spot_drops(compiled, images, 0, hot, control, batch_size=4)
    assert numbers["mean_drop"] == pytest.approx(eager_drops(model, images, hot[0], 0)[0],
                                                 abs=1e-5)
    assert numbers["control_drop"] == pytest.approx(
        eager_drops(model, images, control[0], 0)[0], abs=1e-5)
    on_pixels = own_spot_drops(compiled, images, 0, pixels, own_regions(maps)[1])
    assert numbers["mean_drop"] > on_pixels["mean_drop"] + 0.1
    # A map already at the layer's grid (Grad-CAM's) is taken as it is.
    assert own_regions(maps, grid=(SIDE, SIDE)) == own_regions(maps)
