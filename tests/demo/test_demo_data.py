"""sightline.demo.scenes and scripts/make_demo_data.py: the scenes with a planted shortcut."""

import os
import runpy
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf

from sightline.demo.scenes import (CLASS_NAMES, SKY_ROWS, TAG_CLASS, TAG_COLOUR, TAG_SHARES,
                                   make_demo_data, make_scenes, tag_pixels, write_split)
from sightline.data.labels import parse_class_names
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
    # Folders are groups until the names map them (sightline.data.labels); the demo's
    # folders are named like its classes, so its names map them.
    assert tuple(open_source(images).group_names) == CLASS_NAMES
    source = open_source(images, class_names=parse_class_names(list(CLASS_NAMES)))
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
        "train": 10, "train-clean": 10, "held-out": 6, "train-tagged": 10, "held-out-tagged": 6}
    for name, scenes in splits.items():
        tagged_discs = scenes["tagged"].sum()
        assert tagged_discs == round(TAG_SHARES.get(name, 0.0) * np.sum(scenes["labels"] == TAG_CLASS))
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


# ----------------------------------------------------------------------------- the tag


def magenta(images):
    """bool [n,H,W]: pixels of the tag's colour, within the noise of PNG rounding; no sky,
    ground or object pixel comes near it (the tag is not on the object nor in the scene)."""
    pixels = images.astype(np.float64) / 255
    return np.all(np.abs(pixels - np.array(TAG_COLOUR)) < 0.02, axis=-1)


@pytest.mark.parametrize("share", [0.25, 1.0, 0.0])
def test_the_tag_is_where_the_flag_says_and_nowhere_else(share):
    scenes = make_scenes(200, seed=4, agreement=0.5, tag_share=share)
    tagged, labels = scenes["tagged"], scenes["labels"]
    # Only the tag class, the asked share of it.
    assert not tagged[labels != TAG_CLASS].any()
    assert tagged.sum() == round(share * np.sum(labels == TAG_CLASS))
    found = magenta(scenes["images"])
    ring = tag_pixels()
    assert 20 <= ring.sum() <= 40 and not ring[SKY_ROWS:].any()  # small, on the sky
    assert ring[:12, :12].sum() == ring.sum()  # in the top-left corner
    for i in range(len(labels)):
        # Exactly the ring's pixels in a tagged scene, not one such pixel anywhere else.
        np.testing.assert_array_equal(found[i], ring if tagged[i] else np.zeros_like(ring))


def test_the_tag_is_deterministic_by_seed_and_leaves_untagged_scenes_as_they_were():
    a = make_scenes(60, seed=9, tag_share=0.4)
    b = make_scenes(60, seed=9, tag_share=0.4)
    np.testing.assert_array_equal(a["tagged"], b["tagged"])
    np.testing.assert_array_equal(a["images"], b["images"])
    assert not np.array_equal(a["tagged"], make_scenes(60, seed=10, tag_share=0.4)["tagged"])
    plain = make_scenes(60, seed=9)
    assert not plain["tagged"].any() and plain["tag_share"] == 0.0
    # Every scene with its object at full contrast is the same bytes as without the
    # tag, and labels, masks and skies are unchanged.
    np.testing.assert_array_equal(a["images"][~a["faint"]], plain["images"][~a["faint"]])
    for name in ("masks", "labels", "cloudy"):
        np.testing.assert_array_equal(a[name], plain[name])


def test_the_tagged_scenes_and_as_many_of_the_other_class_have_a_faint_object():
    scenes = make_scenes(200, seed=6, agreement=0.5, tag_share=0.5)
    plain = make_scenes(200, seed=6, agreement=0.5)
    faint, tagged, labels = scenes["faint"], scenes["tagged"], scenes["labels"]
    # Faint: every tagged scene, and as many untagged ones of the other class, no more.
    np.testing.assert_array_equal(tagged, faint & (labels == TAG_CLASS))
    assert faint[labels != TAG_CLASS].sum() == tagged.sum() == 50
    images = scenes["images"].astype(np.float64) / 255
    before = plain["images"].astype(np.float64) / 255
    for i in np.flatnonzero(faint)[::5]:
        mask = scenes["masks"][i]
        ground = ~mask
        ground[:SKY_ROWS] = False
        contrast = images[i][ground].mean() - images[i][mask].mean()
        plain_contrast = before[i][ground].mean() - before[i][mask].mean()
        assert plain_contrast > 0.15 and abs(contrast) < 0.2 * plain_contrast


def test_written_split_saves_who_has_the_tag(tmp_path):
    scenes = make_scenes(16, seed=3, agreement=0.5, tag_share=0.5)
    _, masks_path = write_split(str(tmp_path / "split"), scenes)
    with h5py.File(masks_path, "r") as handle:
        np.testing.assert_array_equal(handle["tagged"][:] != 0, scenes["tagged"])
        np.testing.assert_array_equal(handle["faint"][:] != 0, scenes["faint"])
        assert handle.attrs["tag_share"] == 0.5 and handle.attrs["tag_class"] == TAG_CLASS
    assert scenes["tagged"].sum() == 4


def test_a_tag_share_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match=r"tag_share must be a fraction in \[0, 1\] of the cross"):
        make_scenes(4, tag_share=1.5)
