"""Class folders through the whole job: groups without --class-names (no label, the
folder in /sample/group), labels with it (names in the manifest, the shards and the
index, read back by open_results); and the job's one-line warning when the predictions
collapse onto one class (the default --preprocess none on a model that expects [0, 1])."""

import contextlib
import io
import json
import os

import h5py
import numpy as np
import pytest

from sightline.cli.main import main
from sightline.store.results import open_results
from tests.jobs.jobs import read_index, write_image_folder, write_model

GROUPS = ("faces", "non-faces")
PER_GROUP = 12


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("class-names")
    write_image_folder(str(root / "images"), per_class=PER_GROUP, classes=GROUPS, corrupt=())
    write_model(str(root / "model.keras"))  # 4 classes, random weights, 16x16x3
    (root / "classes.json").write_text(json.dumps({"faces": 2, "non-faces": 0}))
    return root


def _explain(workspace, out, *extra):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["explain", "--model", str(workspace / "model.keras"), "--data",
                     str(workspace / "images"), "--out", str(workspace / out), "--devices", "1",
                     "--batch-size", "8", *extra])
    return code, stderr.getvalue(), str(workspace / out)


def _keras_predictions(workspace, scale):
    """The model's own predictions on the images as the job resizes them (a plain Keras
    call, none of the engine): (classes [N], top probabilities [N])."""
    import keras
    import tensorflow as tf
    model = keras.models.load_model(str(workspace / "model.keras"))
    images = []
    for group in GROUPS:
        folder = workspace / "images" / group
        for name in sorted(os.listdir(folder)):
            pixels = tf.io.decode_png(tf.io.read_file(str(folder / name)), channels=3)
            images.append(tf.image.resize(tf.cast(pixels, tf.float32), (16, 16)).numpy())
    probabilities = model.predict(np.stack(images) * scale, verbose=0)
    return probabilities.argmax(axis=1), probabilities.max(axis=1)


@pytest.fixture(scope="module")
def grouped(workspace):
    return _explain(workspace, "grouped")


def test_folders_without_class_names_are_groups_not_labels(grouped):
    code, _, out = grouped
    assert code == 0
    data = read_index(out)
    np.testing.assert_array_equal(data["sample/label"], -1)
    np.testing.assert_array_equal(data["sample/group"], np.repeat([0, 1], PER_GROUP))
    run = json.load(open(os.path.join(out, "manifest.json")))["run"]
    assert run["labels_are"] == "groups" and run["group_names"] == list(GROUPS)
    assert run["class_names"] is None and run["num_classes"] == 4
    with open_results(out) as results:
        assert results.group_names == GROUPS and results.class_names is None
        assert results.labels_are == "groups" and results.num_classes == 4
        assert results.sample(index=PER_GROUP)["group"] == 1


def test_collapsed_predictions_are_one_warning_line_and_in_the_manifest(workspace, grouped):
    code, stderr, out = grouped
    classes, scores = _keras_predictions(workspace, 1.0)  # --preprocess none: 0..255
    top = np.bincount(classes).argmax()
    assert np.mean(classes == top) >= 0.5 and scores[classes == top].mean() >= 0.9  # guard
    (line,) = [line for line in stderr.splitlines() if "warning" in line]
    assert f"{np.sum(classes == top)} of {len(classes)} images are predicted as class {top}" in line
    assert "--preprocess none" in line
    warnings = json.load(open(os.path.join(out, "manifest.json")))["warnings"]
    first = warnings[0]
    assert first["kind"] == "collapsed_predictions" and first["set"] == "all images"
    assert first["class"] == top and first["count"] == int(np.sum(classes == top))
    np.testing.assert_allclose(first["mean_score"], scores[classes == top].mean(), rtol=1e-4)


def test_a_mapping_makes_folders_labels_and_names_reach_the_store(workspace):
    code, stderr, out = _explain(workspace, "mapped", "--class-names",
                                 str(workspace / "classes.json"), "--preprocess", "[0,1]")
    assert code == 0
    data = read_index(out)
    np.testing.assert_array_equal(data["sample/label"], np.repeat([2, 0], PER_GROUP))
    names = ["non-faces", "class 1", "faces", "class 3"]
    with h5py.File(os.path.join(out, "index.h5"), "r") as index:
        assert list(index.attrs["class_names"]) == names  # an h5py reader maps classes
        assert list(index.attrs["group_names"]) == list(GROUPS)
    shard = os.path.join(out, "shards", sorted(os.listdir(os.path.join(out, "shards")))[0])
    with h5py.File(shard, "r") as handle:
        assert list(handle.attrs["class_names"]) == names
    with open_results(out) as results:
        assert results.class_names == tuple(names) and results.labels_are == "classes"
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["run"]["class_names"] == names
    # On [0,1] inputs this random model spreads its predictions: no warning.
    classes, scores = _keras_predictions(workspace, 1 / 255)
    assert np.bincount(classes).max() < 0.9 * len(classes) or scores.mean() < 0.9  # guard
    assert "warnings" not in manifest and "warning" not in stderr


def test_a_class_index_the_model_lacks_stops_before_any_work(workspace, tmp_path):
    mapping = tmp_path / "beyond.json"
    mapping.write_text(json.dumps({"faces": 9, "non-faces": 0}))
    code, stderr, out = _explain(workspace, "beyond", "--class-names", str(mapping))
    assert code == 2
    assert stderr.strip().count("\n") == 0
    assert "maps folder 'faces' to class 9, but the model has 4 classes" in stderr
    assert not os.path.exists(out)


@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
def test_a_model_that_rescales_its_input_is_warned_about_scaling_twice(flavor):
    from sightline.model.input_range import input_rescaling, rescaling_warning
    from tests.models import keras_module
    keras = keras_module(flavor)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_symmetric")(inputs)
    x = keras.layers.Conv2D(2, 3)(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    (found,) = input_rescaling(model)
    assert found[0] == "to_symmetric"
    np.testing.assert_allclose(found[1:], (1 / 127.5, -1.0), rtol=1e-6)
    line = rescaling_warning([found], "[0,1]")
    assert "0..255 to [-1, 1]" in line and "--preprocess [0,1] scales the images" in line
    assert rescaling_warning([found], "none") is None
    # A Rescaling after the first convolution is the model's business, not the input's.
    later = keras.layers.Rescaling(0.5)(keras.layers.Conv2D(2, 3)(inputs))
    assert input_rescaling(keras.Model(inputs, later)) == []
