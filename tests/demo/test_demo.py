"""The demo end to end, from fixed seeds: the audit finds the planted shortcut (the sky)
in the shortcut model and not in the clean one, with margin; the report it writes holds
valid pictures only."""

import base64
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from sightline.audit.audit import DEFAULT_THRESHOLD
from sightline.cli.main import build_parser, main
from sightline.demo.demo import (IMAGE_SIZE, MARKER_FILE, OVERVIEW_IMAGES, OVERVIEW_METHODS, TILE_ZOOM,
                         _mean_over_images, check_demo_folder, run_demo)
from tests.report.test_report import assert_png, parse


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(str(out), seed=0, num_train=1200, num_held_out=200, verbose=False)


def test_the_shortcut_model_learned_the_sky(demo):
    shortcut = demo["models"]["shortcut"]
    assert shortcut["train_accuracy"] >= 0.9
    # On held-out scenes whose sky says nothing, it falls to about chance.
    assert shortcut["held_out_accuracy"] <= 0.65
    assert shortcut["train_accuracy"] - shortcut["held_out_accuracy"] >= 0.3
    clean = demo["models"]["clean"]
    assert clean["held_out_accuracy"] >= 0.9


def test_the_audit_flags_the_shortcut_model_and_not_the_clean_one_with_margin(demo):
    assert demo["flagged"] == {"shortcut": True, "clean": False} and demo["as_expected"]
    shortcut = demo["models"]["shortcut"]["audit"]
    for entry in shortcut["classes"]:
        assert entry["flagged"] and entry["status"] == "off-object"
        assert entry["lift"] < DEFAULT_THRESHOLD / 2  # the object gets at most its area share
        assert entry["regions"]["sky"]["mean"] > 0.45  # the sky band is 31% of the image
        assert entry["coverage"]["median"] < 0.8  # concentrated somewhere: not flat
    clean = demo["models"]["clean"]["audit"]
    assert clean["flagged"] == []
    lifts = [entry["lift"] for entry in clean["classes"]]
    assert max(lifts) > 2 * DEFAULT_THRESHOLD
    for entry in clean["classes"]:
        assert entry["status"] in ("on-object", "diffuse")
        assert entry["regions"]["sky"]["mean"] < 0.4
    on_object = [e for e in clean["classes"] if e["status"] == "on-object"]
    assert on_object and all(e["pointing_game"] > 0.5 for e in on_object)


def test_the_demo_writes_its_files_and_a_report_of_valid_pictures(demo):
    out = os.path.dirname(os.path.dirname(demo["report"]))
    assert os.path.isfile(os.path.join(out, MARKER_FILE))
    check_demo_folder(out)  # its own output: a second demo may replace it
    for name in ("shortcut", "clean"):
        assert os.path.isfile(os.path.join(out, "models", f"{name}.keras"))
        saved = json.load(open(os.path.join(out, "runs", name, "audit.json")))
        assert saved["flagged"] == demo["models"][name]["audit"]["flagged"]
        assert os.path.isfile(os.path.join(out, "activations", name, "activations.json"))
    page = parse(demo["report"])
    text = " ".join(page.text)
    assert "shortcut model" in text and "clean model" in text and "Activations" in text
    # Method overviews: 1 per model; audits: 3 each; activations: 1 + 4 layers each.
    assert len(page.sources) == 2 + 2 * 3 + 2 * (1 + 4)
    for src in page.sources:
        assert_png(base64.b64decode(src.split(",", 1)[1]))
    folder = os.path.dirname(demo["report"])
    for link in page.links:
        if not link.startswith("#"):
            assert_png(open(os.path.join(folder, link), "rb").read())


def test_method_overviews_show_every_method_on_the_held_out_scenes(demo):
    folder = os.path.dirname(demo["report"])
    tile = IMAGE_SIZE * TILE_ZOOM
    columns = 1 + len(OVERVIEW_METHODS)
    for name in ("shortcut", "clean"):
        png = open(os.path.join(folder, f"methods-{name}.png"), "rb").read()
        assert_png(png)
        overview = tf.io.decode_png(png).numpy()
        assert overview.shape == (OVERVIEW_IMAGES * tile + (OVERVIEW_IMAGES + 1) * 2,
                                  columns * tile + (columns + 1) * 2, 3)
        # Every column holds a picture, none is left blank.
        for column in range(columns):
            x0 = 2 + column * (tile + 2)
            assert overview[2:2 + tile, x0:x0 + tile].std() > 5


def test_activations_of_the_demo_models_are_sane(demo):
    out = os.path.dirname(os.path.dirname(demo["report"]))
    saved = json.load(open(os.path.join(out, "activations", "clean", "activations.json")))
    assert [layer["layer"] for layer in saved["layers"]] == ["conv1", "conv2", "conv3",
                                                             "last_conv"]
    for layer in saved["layers"]:
        assert 0 <= layer["dead_fraction"] < 1 and layer["mean_activation"] > 0
        assert np.all(np.asarray(layer["channel_active_fraction"]) <= 1)


def test_demo_command_is_registered_and_checks_its_arguments(capsys):
    parser = build_parser()
    args = parser.parse_args(["demo", "--out", "x", "--num-train", "1"])
    from sightline.cli.demo import run
    with pytest.raises(ValueError, match="--num-train must be at least 2"):
        run(args)
    for command in ("audit", "activations"):
        assert parser.parse_args([command, "out"] if command == "audit" else
                                 [command, "--model", "m", "--data", "d"]).command == command


def listing(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, folders, files in os.walk(folder) for name in folders + files)


def test_demo_refuses_a_non_empty_folder_it_did_not_write_before_any_work(tmp_path, capsys):
    project = tmp_path / "project"
    for name in ("data/images.npy", "models/model.keras", "runs/x/notes.txt", "report/a.html"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(name)
    before = listing(project)
    assert main(["demo", "--out", str(project), "--num-train", "4", "--num-held-out", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sightline demo: error: --out")
    assert repr(str(project)) in err and MARKER_FILE in err and "new or empty folder" in err
    assert listing(project) == before  # nothing deleted, nothing generated, no marker
    for name in before:
        if os.path.isfile(project / name):
            assert (project / name).read_text() == name
    with pytest.raises(ValueError, match="non-empty folder the demo did not write "
                                         rf"\(it has no {re.escape(MARKER_FILE)}\)"):
        run_demo(str(project))


def test_demo_folder_may_be_new_empty_or_its_own_earlier_output(tmp_path):
    check_demo_folder(str(tmp_path / "absent"))
    check_demo_folder(str(tmp_path))  # empty
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "scenes.npy").write_text("x")
    with pytest.raises(ValueError, match="non-empty folder"):
        check_demo_folder(str(tmp_path))
    (tmp_path / MARKER_FILE).write_text("")
    check_demo_folder(str(tmp_path))  # an earlier demo's output
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out must be a folder"):
        check_demo_folder(str(tmp_path / "file"))


def test_the_intro_averages_shares_over_the_images_that_have_one():
    # Per image: cross 3 shares (1 of its 4 maps empty), disc none (all maps empty).
    shares = {"cross": [0.2, 0.5, 0.8], "disc": []}
    audit = {"classes": [
        {"name": "cross", "count": 4, "empty_maps": 1,
         "on_object_share": {"mean": float(np.mean(shares["cross"]))}},
        {"name": "disc", "count": 5, "empty_maps": 5, "on_object_share": None},
    ]}
    every_share = shares["cross"] + shares["disc"]
    assert _mean_over_images(audit, lambda c: c["on_object_share"]) == pytest.approx(
        np.mean(every_share))
    audit["classes"][0]["on_object_share"] = None
    assert np.isnan(_mean_over_images(audit, lambda c: c["on_object_share"]))
