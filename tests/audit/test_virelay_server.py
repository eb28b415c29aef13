"""The ViRelAy export opened by the real ViRelAy server (the test extra installs it): for a
grayscale and a colour run, the server is started on 127.0.0.1 and its REST API is asked
for a sample, the sample's image, an attribution and its heatmap over the image.

What it must serve is computed here independently: the images as written to the data
folder, the model's probabilities from a plain Keras call on the preprocessed images,
every class of the model in the label map, and no label for a sample whose class folder
is only a group."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from sightline.audit.audit import run_audit
from sightline.audit.shortcuts import ShortcutOptions
from sightline.cli.main import main
from tests import models

pytest.importorskip("virelay", reason="the test extra installs ViRelAy")
PIL = pytest.importorskip("PIL.Image")

SIDE = 16
NUM_CLASSES = 3
PER_GROUP = 6
SERVER_SECONDS = 60  # start-up bound; every request has its own timeout too


def _write_run(root, channels):
    """A folder of PNGs in two class folders (groups: no --class-names), a 3-class model
    of `channels` input channels, the job and the audit with the export."""
    import tensorflow as tf
    rng = np.random.default_rng(channels)
    pixels = {}
    for group in ("faces", "non-faces"):
        os.makedirs(root / "images" / group)
        for i in range(PER_GROUP):
            # Blocks of 4x4 pixels: what JPEG (ViRelAy serves every image as one, with
            # chroma subsampling) keeps, where pixel noise would be smeared away.
            cells = (rng.random((SIDE // 4, SIDE // 4, channels)) * 255).astype(np.uint8)
            image = np.kron(cells, np.ones((4, 4, 1), np.uint8))
            key = f"{group}/{i}.png"
            tf.io.write_file(str(root / "images" / key), tf.io.encode_png(image))
            pixels[key] = image
    model = models.functional_cnn("keras3", input_shape=(SIDE, SIDE, channels),
                                  num_classes=NUM_CLASSES, seed=channels)
    model.save(str(root / "model.keras"))
    out = root / "out"
    code = main(["explain", "--model", str(root / "model.keras"), "--data", str(root / "images"),
                 "--out", str(out), "--preprocess", "[0,1]", "--devices", "1", "--quiet"])
    assert code == 0
    export = root / "virelay"
    run_audit(str(out), shortcuts=ShortcutOptions(export_virelay=str(export)))
    keys = sorted(pixels)  # the source lists class folders in sorted order
    images = np.stack([pixels[k] for k in keys]).astype(np.float32)
    probabilities = model.predict(images / 255.0, verbose=0)
    return {"project": str(export / "project.yaml"), "keys": keys, "pixels": pixels,
            "probabilities": probabilities, "name": f"sightline {out}"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    gray = tmp_path_factory.mktemp("gray-run")
    colour = tmp_path_factory.mktemp("colour-run")
    return {"gray": _write_run(gray, 1), "colour": _write_run(colour, 3)}


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.status, response.headers.get("Content-Type"), response.read()


@pytest.fixture(scope="module")
def server(runs):
    """ViRelAy serving both projects; stopped (and waited for) at the end."""
    port = _free_port()
    # BROWSER=true: the server opens a browser tab at start-up; here that runs `true`.
    process = subprocess.Popen(
        [sys.executable, "-m", "virelay", runs["gray"]["project"], runs["colour"]["project"],
         "--host", "127.0.0.1", "--port", str(port)],
        env=dict(os.environ, BROWSER="true"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + SERVER_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"ViRelAy stopped at start-up: {process.stderr.read().decode()[-2000:]}")
            try:
                _, _, body = _get(f"{base}/projects")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ViRelAy did not answer within {SERVER_SECONDS} s")
                time.sleep(0.3)
        projects = {p["name"]: p["id"] for p in json.loads(body)}
        yield base, projects
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("kind", ["gray", "colour"])
def test_virelay_serves_each_sample_its_image_and_attribution(server, runs, kind):
    base, projects = server
    run = runs[kind]
    assert run["name"] in projects, projects
    project = f"{base}/projects/{projects[run['name']]}"
    status, _, body = _get(project)
    assert status == 200
    for row in (0, len(run["keys"]) - 1):
        status, _, body = _get(f"{project}/dataset/{row}")
        sample = json.loads(body)
        assert status == 200 and sample["index"] == row
        # Class folders are groups here: no label is made up (neither the folder's
        # number nor the predicted class).
        assert sample["labels"] == []
        status, kind_of, body = _get(f"{project}/dataset/{row}/image")
        assert status == 200 and kind_of == "image/jpeg"
        image = np.asarray(PIL.open(io.BytesIO(body)).convert("RGB"), np.float64)
        assert image.shape == (SIDE, SIDE, 3)
        expected = run["pixels"][run["keys"][row]].astype(np.float64)
        expected = np.repeat(expected, 3, axis=-1) if expected.shape[-1] == 1 else expected
        # ViRelAy re-encodes as JPEG at quality 70: close to the image, not equal.
        assert np.corrcoef(image.ravel(), expected.ravel())[0, 1] > 0.9

        status, _, body = _get(f"{project}/attributions/{row}")
        attribution = json.loads(body)
        assert status == 200 and attribution["index"] == row
        np.testing.assert_allclose(attribution["prediction"], run["probabilities"][row],
                                   rtol=1e-4, atol=1e-6)
        # The attribution's label is the explained class: the predicted one here.
        assert [label["index"] for label in attribution["labels"]] == [
            int(np.argmax(run["probabilities"][row]))]
        status, kind_of, body = _get(f"{project}/attributions/{row}/heatmap"
                                     "?colorMap=black-fire-red&superimpose=true")
        assert status == 200 and kind_of == "image/jpeg"
        assert PIL.open(io.BytesIO(body)).size == (SIDE, SIDE)


def test_the_label_map_holds_every_class_of_the_model(runs):
    for run in runs.values():
        folder = os.path.dirname(run["project"])
        with open(os.path.join(folder, "label-map.json")) as handle:
            label_map = json.load(handle)
        assert [entry["index"] for entry in label_map] == list(range(NUM_CLASSES))
