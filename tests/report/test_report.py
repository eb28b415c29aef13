"""sightline.report.page: a self-contained page; every picture it embeds or links is a valid PNG
that exists beside it; nothing is fetched from anywhere."""

import base64
import io
import os

import numpy as np
import pytest
import tensorflow as tf

from sightline.audit.audit import run_audit
from sightline.cli.main import main
from sightline.evaluate.report_inputs import ReportInputs
from sightline.report.page import write_report
from tests.audit import audit_runs
from tests.report.pages import PNG_SIGNATURE, assert_png, parse

def masked_pictures(page):
    """The pictures of the per-class part, not of the clusters (test_report_clusters.py):
    the audit clusters every run, so an audit may also hold those."""
    files = [link for link in page.links if not link.startswith("#")]
    return [link for link in files if "-cluster-" not in link and "-embedding-" not in link]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    made = audit_runs.shortcut_run(str(root))
    # A folder of images for the run's keys, recorded as its source, so the worst images
    # are drawn over their pictures.
    images = root / "images"
    rng = np.random.default_rng(0)
    for key in made["keys"]:
        path = images / key
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (*audit_runs.SIZE, 3), dtype=np.uint8)
        tf.io.write_file(str(path), tf.io.encode_png(pixels))
    import json
    manifest_path = os.path.join(made["out"], "manifest.json")
    manifest = json.load(open(manifest_path))
    manifest["run"]["source"] = f"folder {images}"
    json.dump(manifest, open(manifest_path, "w"))
    audit = run_audit(made["out"], masks=made["masks"], regions=["sky=0:8,0:32"])
    path = write_report(str(root / "report"), [("shortcut <model>", audit),
                                               ("again", audit)], inputs=ReportInputs())
    return {"path": path, "audit": audit, "made": made, "root": root}


def test_every_picture_is_embedded_and_every_link_is_a_png_beside_it(report):
    page = parse(report["path"])
    folder = os.path.dirname(report["path"])
    assert page.sources and all(src.startswith("data:image/png;base64,") for src in page.sources)
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in page.sources]
    for data in embedded:
        assert_png(data)
    files = [link for link in page.links if not link.startswith("#")]
    assert len(files) == len(page.sources)  # each picture also links its file
    for link, data in zip(files, embedded):
        path = os.path.join(folder, link)
        assert os.path.isfile(path), link
        with open(path, "rb") as handle:
            assert handle.read() == data  # the embedded picture is the file beside it
    pngs = sorted(name for name in os.listdir(folder) if name.endswith(".png"))
    assert sorted(files) == pngs  # and nothing else lies there
    assert {"script", "link", "iframe"}.isdisjoint(page.tags)


def test_report_shows_the_verdict_tables_and_provenance(report):
    page = parse(report["path"])
    text = " ".join(page.text)
    assert "FLAGGED: class(es) disc" in text
    assert "shortcut <model>" in text  # escaped in the markup, intact as text
    for heading in ("Mean heatmaps", "On-object share", "least evidence on the object",
                    "Provenance (from the run's manifest)"):
        assert heading in text
    assert "model_sha256" in text and "0" * 64 in text and "last_conv" in text
    assert "sky share" in text
    assert len(masked_pictures(page)) == 6  # two sections: mean heatmaps, histograms, worst images


def test_worst_images_are_drawn_over_their_pictures(report):
    folder = os.path.dirname(report["path"])
    image = assert_png(open(os.path.join(folder, "shortcut-model-worst.png"), "rb").read())
    # 8 worst per class, two panels each: a wide picture with many colours (the random
    # pixels of the source images, not a blank placeholder).
    assert image.shape[1] > image.shape[0]
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 1000


def test_report_with_activations_and_the_cli(report, tmp_path):
    import keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)),
                              keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.save(str(tmp_path / "m.keras"))
    data = str(report["root"] / "images")
    assert main(["activations", "--model", str(tmp_path / "m.keras"), "--data", data,
                 "--out", str(tmp_path / "act"), "--limit", "6"]) == 0
    made = report["made"]
    out = str(tmp_path / "cli-report")
    assert main(["audit", made["out"], "--masks", made["masks"], "--report", out,
                 "--activations", str(tmp_path / "act"), "--json",
                 str(tmp_path / "a.json")]) == 0
    page = parse(os.path.join(out, "report.html"))
    text = " ".join(page.text)
    assert "Activations: model" in text and "c1" in text
    for src in page.sources:
        assert_png(base64.b64decode(src.split(",", 1)[1]))
    for link in page.links:
        if not link.startswith("#"):
            assert_png(open(os.path.join(out, link), "rb").read())
    # The activations' own report also stands alone.
    own = parse(os.path.join(tmp_path / "act", "report.html"))
    for link in own.links:
        if not link.startswith("#"):
            assert os.path.isfile(os.path.join(tmp_path / "act", link))


def test_report_of_an_audit_without_masks(report, tmp_path):
    audit = run_audit(report["made"]["out"])
    path = write_report(str(tmp_path / "r"), [("no masks", audit)], inputs=ReportInputs())
    page = parse(path)
    assert len(masked_pictures(page)) == 1  # the mean heatmaps only
    text = " ".join(page.text)
    # Nothing found, and the verdict says what could not be checked.
    assert "nothing flagged; checked:" in text
    assert "evidence on the object: no masks or boxes (pass --masks or --boxes)" in text
    assert io.BytesIO(base64.b64decode(page.sources[0].split(",", 1)[1])).read(8) == PNG_SIGNATURE
