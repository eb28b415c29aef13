"""sightline.demo.scenes and scripts/make_demo_data.py: the scenes with a planted shortcut."""

import os
import runpy
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf

from sightline.demo.scenes import (CLASS_NAMES, SKY_ROWS, make_demo_data, make_scenes, write_split)
from sightline.data.sources import open_source

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_deterministic_by_seed():
    a, b = make_scenes(40, seed=5), make_scenes(40, seed=5)
    for name in ("images", "masks", "labels", "cloudy"):
        np.testing.assert_array_equal(a[name], b[name])
    assert a["keys"] == b["keys"]
    assert not np.array_equal(a["images"], make_scenes(40, seed=6)["images"])


@pytest.mark.parametrize("agreement", [0.95, 0.5, 1.0, 0.0])
def test_sky_agrees_with_the_class_at_the_asked_rate_in_each_class(agreement):
    scenes = make_scenes(400, seed=1, agreement=agreement)
    labels, cloudy = scenes["labels"], scenes["cloudy"]
    assert np.sum(labels == 0) == np.sum(labels == 1) == 200
    for label in (0, 1):
        own_sky = cloudy if label == 0 else ~cloudy  # crosses: cloudy; discs: sunny
        assert np.mean(own_sky[labels == label]) == pytest.approx(agreement, abs=0.003)


def test_scene_layout_sky_ground_and_object():
    scenes = make_scenes(200, seed=2, agreement=0.5)
    images = scenes["images"].astype(np.float64) / 255
    masks, cloudy = scenes["masks"], scenes["cloudy"]
    assert images.shape == (200, 64, 64, 3) and scenes["images"].dtype == np.uint8
    assert masks.shape == (200, 64, 64) and masks.dtype == bool
    # The object lies wholly on the ground, never in the sky band, and is never cut off.
    assert not masks[:, :SKY_ROWS].any()
    assert not masks[:, -1].any() and not masks[:, :, 0].any() and not masks[:, :, -1].any()
    area = masks.mean(axis=(1, 2))
    assert area.min() > 0.012 and area.max() < 0.04
    # Crosses and discs have the same area on average: only the shape tells them apart.
    labels = scenes["labels"]
    assert area[labels == 0].mean() == pytest.approx(area[labels == 1].mean(), rel=0.1)
    # The object is darker than the ground around it.
    ground = ~masks
    ground[:, :SKY_ROWS] = False
    for i in range(0, 200, 17):
        assert images[i][masks[i]].mean() < images[i][ground[i]].mean() - 0.15
    # Sunny skies are blue, cloudy skies grey.
    sky = images[:, :SKY_ROWS].mean(axis=(1, 2))
    blueness = sky[:, 2] - sky[:, 0]
    assert blueness[~cloudy].min() > 0.3 and blueness[cloudy].max() < 0.15
    # A disc's mask is round, a cross's is not: a disc fills more of its bounding box.
    for i in range(6):
        ys, xs = np.nonzero(masks[i])
        fill = masks[i].sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        assert (fill > 0.7) if labels[i] == 1 else (fill < 0.7)


def test_written_split_is_a_source_with_labels_and_masks_keyed_alike(tmp_path):
    scenes = make_scenes(12, seed=3, agreement=0.95)
    images, masks_path = write_split(str(tmp_path / "split"), scenes)
    source = open_source(images)
    assert source.class_names == CLASS_NAMES
    with h5py.File(masks_path, "r") as handle:
        keys = [k.decode() for k in handle["keys"][:]]
        masks = handle["masks"][:]
        assert list(handle.attrs["class_names"]) == list(CLASS_NAMES)
        assert handle.attrs["agreement"] == 0.95
        np.testing.assert_array_equal(handle["sky"][:], scenes["cloudy"])
    assert sorted(keys) == sorted(source.keys)
    for key, label in zip(source.keys, source.labels):
        i = keys.index(key)
        assert label == scenes["labels"][i]
        decoded = tf.io.decode_png(tf.io.read_file(os.path.join(images, key))).numpy()
        np.testing.assert_array_equal(decoded, scenes["images"][i])  # PNG: lossless
        np.testing.assert_array_equal(masks[i] != 0, scenes["masks"][i])


def test_make_demo_data_and_its_script(tmp_path, monkeypatch, capsys):
    splits = make_demo_data(str(tmp_path / "a"), seed=1, num_train=10, num_held_out=6)
    assert {name: len(s["keys"]) for name, s in splits.items()} == {
        "train": 10, "train-clean": 10, "held-out": 6}
    monkeypatch.setattr(sys, "argv", ["make_demo_data.py", "--out", str(tmp_path / "b"),
                                      "--seed", "1", "--num-train", "10", "--num-held-out", "6"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(REPO, "scripts", "make_demo_data.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert "sky agrees with the class 95% of the time" in capsys.readouterr().out
    for split in ("train", "train-clean", "held-out"):
        for name in ("masks.h5",):
            a = h5py.File(tmp_path / "a" / split / name, "r")
            b = h5py.File(tmp_path / "b" / split / name, "r")
            np.testing.assert_array_equal(a["masks"][:], b["masks"][:])
            a.close()
            b.close()
        a_files = sorted(os.listdir(tmp_path / "a" / split / "images" / "disc"))
        assert a_files == sorted(os.listdir(tmp_path / "b" / split / "images" / "disc"))
