"""A table of bad inputs, each run as a real `python -m sightline.cli.main` process: exit
2, exactly one line on stderr, and nothing left in --out (an existing run untouched)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.jobs.jobs import IMAGE_SHAPE, REPO, write_arrays, write_model


def _snapshot(folder):
    """Every path under `folder` with its size and modification time."""
    found = {}
    for parent, _, files in os.walk(folder):
        for name in files + [""]:
            path = os.path.join(parent, name)
            status = os.stat(path)
            found[path] = (status.st_size, status.st_mtime_ns)
    return found


def _run(args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="0")
    return subprocess.run([sys.executable, "-m", "sightline.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    import keras
    root = tmp_path_factory.mktemp("bad")
    write_arrays(str(root), count=6)
    model = write_model(str(root / "model.keras"))
    write_model(str(root / "model.h5"), flavor="tf_keras")
    for name in ("model.keras", "model.h5"):
        data = open(root / name, "rb").read()
        (root / f"truncated-{name}").write_bytes(data[:len(data) // 2])
    (root / "notes.keras").write_text("not a model\n")
    (root / "a-file").write_text("a file\n")
    inputs = keras.Input(IMAGE_SHAPE)
    features = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    features = keras.layers.Lambda(lambda x: x * 2.0, name="double")(features)
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(features))
    keras.Model(inputs, outputs).save(root / "lambda.keras")
    first, second = keras.Input(IMAGE_SHAPE), keras.Input(IMAGE_SHAPE)
    joined = keras.layers.Conv2D(4, 3, name="conv")(keras.layers.Add()([first, second]))
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(joined))
    keras.Model([first, second], outputs).save(root / "two-inputs.keras")
    images = np.load(root / "images.npy")
    np.save(root / "grey.npy", images[..., :1])
    with_nan = images.copy()
    with_nan[4, 3, 2, 1] = np.nan
    np.save(root / "nan.npy", with_nan)
    with_inf = images.copy()
    with_inf[2, 0, 0, 0] = np.inf
    np.save(root / "inf.npy", with_inf)
    np.save(root / "short-labels.npy", np.zeros(4, np.int64))
    os.makedirs(root / "empty")
    os.makedirs(root / "no-images")
    (root / "no-images" / "readme.txt").write_text("no images here\n")
    (root / "bad.toml").write_text("methods = [gradcam\nbatch_size = \n")
    (root / "folders.json").write_text('{"faces": 0, "other": 1}\n')
    (root / "bad-names.json").write_text('{"faces": "zero"}\n')
    os.makedirs(root / "not-a-run")
    (root / "not-a-run" / "notes.txt").write_text("hello\n")
    # Another run, whose folder a refused run must leave as it was.
    from sightline.cli.main import main
    assert main(["explain", "--model", model, "--data", str(root / "images.npy"), "--out",
                 str(root / "other-run"), "--quiet", "--devices", "1", "--batch-size", "3",
                 "--shard-size", "3"]) == 0

    return root


def _cases(root):
    model, data = str(root / "model.keras"), str(root / "images.npy")
    out = str(root / "out")

    def explain(*extra, **replace):
        given = {"--model": model, "--data": data, "--out": out, "--devices": "1"}
        given.update({f"--{k.replace('_', '-')}": str(v) for k, v in replace.items()})
        args = ["explain"]
        for flag, value in given.items():
            args += [flag, value]
        return args + list(extra)

    return {
        "model missing": (explain(model=root / "missing.keras"), r"model file not found"),
        "model is a text file": (explain(model=root / "notes.keras"),
                                 r"is damaged or not a model: its config"),
        "model has an unknown suffix": (explain(model=root / "a-file"),
                                        r"neither a \.keras nor an \.h5 file"),
        "truncated .keras": (explain(model=root / "truncated-model.keras"),
                             r"is damaged or not a model"),
        "truncated .h5": (explain(model=root / "truncated-model.h5"),
                          r"is damaged or not a model"),
        "Lambda without --unsafe": (explain(model=root / "lambda.keras"),
                                    r"Lambda layer\(s\) 'double' holding Python code"),
        "two inputs": (explain(model=root / "two-inputs.keras"), r"2 inputs"),
        "data missing": (explain(data=root / "missing.npy"), r"data source not found"),
        "data an empty folder": (explain(data=root / "empty"), r"holds no images"),
        "data a folder with no images": (explain(data=root / "no-images"), r"holds no images"),
        "wrong channel count": (explain(data=root / "grey.npy"),
                                r"the images have 1 channel\(s\) but the model takes 3"),
        "NaN pixels": (explain(data=root / "nan.npy"), r"sample 4 .* holds NaN or Inf pixels"),
        "Inf pixels": (explain(data=root / "inf.npy"), r"sample 2 .* holds NaN or Inf pixels"),
        "labels of another length": (explain(labels=root / "short-labels.npy"),
                                     r"must be 6 integers, one per image; got shape \(4,\)"),
        "HDF5 dataset missing": (explain(data=f"{root / 'arrays.h5'}:/nothing"),
                                 r"nothing"),
        "unknown method": (explain(methods="gradcam,lime"), r"unknown method\(s\) 'lime'"),
        "class names file missing": (explain(class_names=root / "missing.json"),
                                     r"--class-names file not found"),
        "class name given twice": (explain(class_names="cat,dog,cat"),
                                   r"--class-names names a class twice \(cat\)"),
        "class folder mapped to a word": (explain(class_names=root / "bad-names.json"),
                                          r"maps folder 'faces' to 'zero'"),
        "class names of another count": (explain(class_names="cat,dog"),
                                         r"--class-names gives 2 name\(s\) but the model has "),
        "class folders mapped on an array": (explain(class_names=root / "folders.json"),
                                             r"maps folders to classes, but .* is not a folder"),
        "negative batch size": (explain(batch_size=-4), r"batch_size must be an integer >= 1"),
        "non-integer batch size": (explain(batch_size="2.5"),
                                   r"--batch-size: invalid int value: '2\.5'"),
        "unknown precision": (explain(precision="float8"), r"precision must be one of"),
        "unknown resize mode": (explain(resize="squash"),
                                r"resize must be one of 'stretch', 'pad', 'crop'; got 'squash'"),
        "worker out of range": (explain("--worker", "3", "--workers", "2"),
                                r"worker index 3 .*out of range for 2 worker"),
        "target class the model lacks": (explain(target=7),
                                         r"--target 7 is not a class of this model"),
        "malformed TOML": (explain("--config", str(root / "bad.toml")), r"is not valid TOML"),
        "unknown option": (explain("--colour", "red"), r"unrecognized arguments: --colour"),
        "out is a file": (explain(out=root / "a-file"), r"is a file, not a folder"),
        "out under a file": (explain(out=root / "a-file" / "sub"), r"is not writable"),
        # /proc refuses new files even to root, which ignores permission bits.
        "out not writable": (explain(out="/proc/sightline-out"), r"is not writable"),
        "out holds another run": (explain(out=root / "other-run", methods="saliency"),
                                  r"holds another run's shards"),
        "audit a folder that is not a run": (["audit", str(root / "not-a-run")], r"not-a-run"),
        "index a folder that is not a run": (["index", str(root / "not-a-run")], r"not-a-run"),
        "inspect a folder that is not a run": (["inspect", str(root / "not-a-run")],
                                               r"not-a-run"),
        "inspect a missing folder": (["inspect", str(root / "nowhere")],
                                     r"run folder .*nowhere. does not exist"),
        "index a file": (["index", str(root / "a-file")], r"run folder .*a-file. is a file"),
    }


CASES = sorted(_cases(__import__("pathlib").Path("/r")))


def test_the_table_has_every_kind_of_bad_input():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_with_one_line_and_leaves_nothing(root, name):
    import re
    args, message = _cases(root)[name]
    before = {folder: _snapshot(root / folder) for folder in ("other-run", "not-a-run")}
    done = _run(args)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert lines[0].startswith(f"sightline {args[0]}: error: ") or \
        lines[0].startswith("sightline: error: ") or \
        lines[0].startswith(f"sightline {args[0]}: error:"), lines[0]
    assert not os.path.exists(root / "out"), os.listdir(root / "out")
    for folder, snapshot in before.items():
        assert _snapshot(root / folder) == snapshot, folder
    print(lines[0])


@pytest.mark.parametrize("name", ["model missing", "data missing", "malformed TOML",
                                  "unknown method", "class names file missing",
                                  "class name given twice", "class folder mapped to a word",
                                  "worker out of range", "out is a file",
                                  "out not writable", "negative batch size",
                                  "unknown resize mode"])
def test_typos_fail_before_tensorflow_is_imported(root, name):
    """--verbose leaves descriptor 2 alone, so -X importtime shows every import."""
    args, message = _cases(root)[name]
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "sightline.cli.main",
                           "--verbose", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert "sightline.cli.explain" in imported  # the record is there: it is read
    # TensorFlow, and the libraries that cost most of a second to import (the audit's
    # clustering, the report's plotting): a typo waits for none of them.
    heavy = ("tensorflow", "keras", "tf_keras", "sklearn", "scipy", "matplotlib")
    assert not [m for m in imported if m.split(".")[0] in heavy]


def test_verbose_shows_what_the_capture_hides(root):
    """The same failure after TensorFlow loaded, with --verbose: its own lines appear too,
    so the one line of the table is the capture's doing, not a quiet environment."""
    args, message = _cases(root)["target class the model lacks"]
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="0")
    done = subprocess.run([sys.executable, "-m", "sightline.cli.main", "--verbose", *args],
                          env=env, capture_output=True, text=True, timeout=300)
    import re
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) > 1 and re.search(message, lines[-1]), done.stderr


def test_damaged_images_are_recorded_as_skipped(root):
    """Flipped bytes in PNG files: the run completes, and every image is either explained
    or listed as skipped in the manifest, with its reason."""
    import json

    import tensorflow as tf
    folder = root / "flipped-images"
    os.makedirs(folder / "cat")
    rng = np.random.default_rng(7)
    for i in range(12):
        pixels = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        data = bytearray(tf.io.encode_png(pixels).numpy())
        if i % 2:  # every other file damaged, a few bytes past the signature
            for position in rng.integers(8, len(data), int(rng.integers(1, 6))):
                data[position] ^= int(rng.integers(1, 256))
        (folder / "cat" / f"{i:02d}.png").write_bytes(bytes(data))
    (folder / "cat" / "99-cut.png").write_bytes(bytes(data[:len(data) // 3]))
    out = root / "flipped-out"
    done = _run(["explain", "--model", str(root / "model.keras"), "--data", str(folder),
                 "--out", str(out), "--devices", "1", "--batch-size", "4", "--quiet"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    manifest = json.load(open(out / "manifest.json"))
    skipped = {entry["key"] for entry in manifest["skipped"]}
    assert "cat/99-cut.png" in skipped
    assert skipped <= {f"cat/{i:02d}.png" for i in range(1, 12, 2)} | {"cat/99-cut.png"}
    assert manifest["shards_complete"] == 1
    explained = sum(entry["num_samples"] for entry in manifest["shards"])
    assert explained + len(skipped) == 13
    shutil.rmtree(out)
