"""Generated datasets and models for dataset-job tests, and helpers to run the CLI."""

import os
import subprocess
import sys

import h5py
import numpy as np

from tests import models

IMAGE_SHAPE = (16, 16, 3)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_image_folder(folder, *, per_class=12, classes=("cat", "dog"), size=(20, 24), seed=0,
                       corrupt=("dog/zz-broken.png",)):
    """PNG images in class subfolders (varied sizes to exercise resizing), plus corrupt files."""
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((size[0] + i % 3, size[1], 3)) * 255).astype(np.uint8)
            tf.io.write_file(os.path.join(folder, name, f"{i:03d}.png"), tf.io.encode_png(pixels))
    for relative in corrupt:
        with open(os.path.join(folder, relative), "wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n definitely not a png")
    return folder


def write_arrays(folder, count=30, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (count, *IMAGE_SHAPE)).astype(np.float32)
    labels = rng.integers(0, 4, count).astype(np.int64)
    np.save(os.path.join(folder, "images.npy"), images)
    np.save(os.path.join(folder, "labels.npy"), labels)
    with h5py.File(os.path.join(folder, "arrays.h5"), "w") as handle:
        handle["images"] = images
        handle["labels"] = labels
    return images, labels


def write_model(path, flavor="keras3", seed=0, **kwargs):
    models.functional_cnn(flavor, input_shape=IMAGE_SHAPE, num_classes=4, seed=seed,
                          **kwargs).save(path)
    return path


def split_and_whole_runs(root, *, count, methods, index_split=False):
    """One tiny model on `count` generated arrays, explained twice in-process: by 2
    workers with shard 4 and batch 4 into root/split (indexed when asked), and by one
    worker with shard 7 and batch 8 into root/whole. Returns the paths and the data."""
    from sightline.cli.main import main
    images, labels = write_arrays(str(root), count=count, seed=5)
    model = write_model(str(root / "model.keras"), seed=3)
    common = ["--model", model, "--data", str(root / "images.npy"), "--labels",
              str(root / "labels.npy"), "--methods", methods, "--quiet"]
    split, whole = str(root / "split"), str(root / "whole")
    for worker in ("0", "1"):
        assert main(["explain", *common, "--out", split, "--shard-size", "4", "--batch-size", "4",
                     "--workers", "2", "--worker", worker]) == 0
    if index_split:
        assert main(["index", split]) == 0
    assert main(["explain", *common, "--out", whole, "--shard-size", "7", "--batch-size", "8"]) == 0
    return {"root": root, "images": images, "labels": labels, "model": model, "split": split,
            "whole": whole}


def run_cli(*args, env=None, wait=True):
    """The CLI in a fresh process (for signals, kill -9 and concurrent workers)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, **(env or {}))
    command = [sys.executable, "-m", "sightline.cli.main", *args]
    if not wait:
        return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=300)


def read_index(out):
    """Every dataset of index.h5 as arrays, sorted by sample index."""
    with h5py.File(os.path.join(out, "index.h5"), "r") as handle:
        names = []
        handle.visititems(lambda name, item: names.append(name)
                          if isinstance(item, h5py.Dataset) else None)
        data = {name: handle[name][:] for name in names}
    order = np.argsort(data["sample/index"])
    return {name: values[order] for name, values in data.items()}
