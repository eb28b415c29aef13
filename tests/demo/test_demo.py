"""The demo end to end, from fixed seeds: the audit finds the planted shortcut (the sky)
in the shortcut model and not in the clean one, with margin; without masks it finds the
tagged group in the tagged model (against the ground truth, confirmed by ablation) and
nothing in the clean one; the report it writes holds valid pictures only."""

import base64
import json
import os
import pickle
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf

from sightline.audit.audit import DEFAULT_THRESHOLD
from sightline.cli.main import build_parser, main
from sightline.demo.demo import (IMAGE_SIZE, MARKER_FILE, OVERVIEW_IMAGES, OVERVIEW_METHODS, TILE_ZOOM,
                         _mean_over_images, check_demo_folder, run_demo)
from sightline.demo.scenes import TAG_CLASS
from tests.jobs.jobs import REPO
from tests.report.pages import assert_png, parse


# Run in a fresh environment by the command of the wheel installed there (see `demo`):
# it records what run_demo returns for the tests below to read.
_RUN_INSTALLED_DEMO = """
import os, pickle, sys
import sightline, sightline.cli.demo as command
from sightline.cli.main import main
returned = []
def recorded(*args, **kwargs):
    returned.append(command_run_demo(*args, **kwargs))
    return returned[-1]
command_run_demo, command.run_demo = command.run_demo, recorded
code = main(["demo", "--out", sys.argv[1], "--seed", "0", "--num-train", "1200",
             "--num-held-out", "200"])
with open(sys.argv[2], "wb") as handle:
    pickle.dump({"code": code, "sightline_file": sightline.__file__, "sys_path": sys.path,
                 "demo": returned[0]}, handle)
"""


def _python_paths(python):
    """sys.prefix and purelib (site-packages) of an interpreter."""
    done = subprocess.run([python, "-c", "import sys, sysconfig; "
                           "print(sys.prefix); print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo as a user gets it: the wheel built from a clean clone of the committed
    tree, installed into a fresh environment outside the checkout, `sightline demo` run
    there from a folder outside it. The fresh environment borrows the project
    environment's dependencies (TensorFlow and the rest) by a .pth line naming its
    site-packages, so nothing is downloaded; a .pth line adds a path but does not run
    the .pth files there, so the project's own editable install stays out of it."""
    root = tmp_path_factory.mktemp("installed")
    clone, wheels, fresh = root / "clone", root / "wheels", root / "env"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", REPO, str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(clone)],
                   check=True, capture_output=True)
    (wheel,) = wheels.glob("sightline_explain-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    fresh_python = str(fresh / "bin" / "python")
    _, fresh_site = _python_paths(fresh_python)
    _, project_site = _python_paths(sys.executable)
    with open(os.path.join(fresh_site, "project-dependencies.pth"), "w") as handle:
        handle.write(project_site + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", fresh_python, "install",
                    "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    out, record = root / "demo-out", root / "demo.pickle"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run([fresh_python, "-c", _RUN_INSTALLED_DEMO, str(out), str(record)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(record, "rb") as handle:
        recorded = pickle.load(handle)
    assert recorded["code"] == 0
    # The wheel's package ran, not the checkout's folders or its editable install.
    assert recorded["sightline_file"].startswith(fresh_site + os.sep), recorded["sightline_file"]
    assert [path for path in recorded["sys_path"] if path.startswith(REPO + os.sep)
            and not path.startswith(project_site)] == [], recorded["sys_path"]
    # Its console script is there too (--version answers without TensorFlow).
    version = subprocess.run([str(fresh / "bin" / "sightline"), "--version"], cwd=root,
                             env=env, capture_output=True, text=True)
    assert version.stdout.startswith("sightline "), version.stderr
    return recorded["demo"]


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
    for name in ("tagged", "clean"):
        run = os.path.join(out, "runs", f"{name}-on-tagged")
        saved = json.load(open(os.path.join(run, "audit.json")))
        assert [c["flagged"] for c in saved["clusters"]] == [
            c["flagged"] for c in demo["models"][name]["mask_free_audit"]["clusters"]]
        assert os.path.isfile(os.path.join(run, "clusters.h5"))
    page = parse(demo["report"])
    text = " ".join(page.text)
    assert "shortcut model" in text and "clean model" in text and "Activations" in text
    # Method overviews: 1 per model; masked audits: 3 each, mask-free ones 1 each, and
    # every audit with clusters one layout per class and one grid per cluster;
    # activations: 1 + 4 layers each.
    models = demo["models"]
    audits = [models["shortcut"]["audit"], models["clean"]["audit"]]
    mask_free = [models["tagged"]["mask_free_audit"], models["clean"]["mask_free_audit"]]
    cluster_pictures = sum(len({c["class"] for c in a.get("clusters") or []})
                           + len(a.get("clusters") or []) for a in audits + mask_free)
    # ... and each masked model's evaluation: its mean curves, its sanity panel and strip,
    # and its unmoved images.
    assert len(page.sources) == 2 + 2 * 3 + 2 * 1 + cluster_pictures + 2 * (1 + 4) + 2 * 4
    assert text.count("Which method to trust") == 2
    assert text.count("For this model use ") >= 2
    assert text.count("(it passes the sanity checks)") >= 2
    for name in ("shortcut", "clean"):
        evaluation = models[name]["evaluation"]
        # Adebayo et al.'s finding on a trained model: gradients and Grad-CAM pass (with
        # the whole network random for saliency), the edge map fails.
        for method in ("gradcam", "saliency"):
            assert evaluation["methods"][method]["sanity"]["passes"], (name, method)
        assert not evaluation["controls"]["edge"]["sanity"]["passes"], name
        recommended = evaluation["recommended"]
        assert recommended["method"] == max(
            ("gradcam", "saliency"), key=lambda m: evaluation["methods"][m]["srg"])
        assert f"For this model use {recommended['method']}" in text
    for src in page.sources:
        assert_png(base64.b64decode(src.split(",", 1)[1]))
    folder = os.path.dirname(demo["report"])
    for link in page.links:
        if not link.startswith("#"):
            assert_png(open(os.path.join(folder, link), "rb").read())


def test_the_tag_group_is_flagged_without_masks_and_the_clean_model_is_not(demo):
    tagged = demo["models"]["tagged"]
    # The tagged model reads the tag: it tells the faint tagged crosses apart.
    assert tagged["train_accuracy"] >= 0.95 and tagged["held_out_accuracy"] >= 0.95
    group = demo["tag_group"]
    assert group is not None and demo["as_expected"]
    # Against the ground truth saved with the data: the flagged group is the tagged scenes.
    scenes = h5py.File(os.path.join(os.path.dirname(os.path.dirname(demo["report"])), "data",
                                    "held-out-tagged", "masks.h5"), "r")
    assert group["tagged"] == int(scenes["tagged"][:].sum()) == 25
    scenes.close()
    assert group["precision"] >= 0.9 and group["recall"] >= 0.9
    # Hiding the tag's region takes the class away, hiding a same-size region elsewhere
    # does not.
    for hot, control in zip(group["hot_drop"], group["control_drop"]):
        assert hot >= 0.5 and hot >= 5 * max(control, 0.01)
    flagged = [c for c in tagged["mask_free_audit"]["clusters"] if c["flagged"]]
    assert [c["id"] for c in flagged] == group["clusters"]
    for entry in flagged:
        assert entry["class"] == TAG_CLASS and entry["verification"]["depends"]
        y0, y1, x0, x1 = entry["hot_region"]
        assert y1 <= 0.3 and x1 <= 0.3  # the top-left corner, where the tag is
    assert demo["flagged_groups"] == {"tagged": group["clusters"], "clean": []}


def test_the_sky_is_found_without_masks_and_the_clean_model_is_not(demo):
    """The tank story without masks: the shortcut model's labels explained, the scenes it
    sees its class in (the sky agrees) stand apart, and the model depends on them."""
    group = demo["sky_groups"]["shortcut"]
    assert group is not None, "the shortcut model's sky was not flagged without masks"
    assert group["precision"] >= 0.9 and group["verified"], group
    flagged = [c for c in demo["models"]["shortcut"]["sky_audit"]["clusters"] if c["flagged"]]
    assert {c["kind"] for c in flagged} <= {"diffuse", "concept"}
    assert demo["sky_groups"]["clean"] is None


def test_the_verdict_names_each_finding_with_its_numbers(demo):
    lines = demo["verdict"]
    assert len(lines) == 6
    assert lines[0].startswith("verdict: shortcut model FLAGGED by the masks")
    assert lines[1].startswith("verdict: clean model not flagged by the masks")
    group = demo["tag_group"]
    assert lines[2].startswith("verdict: tagged model FLAGGED without masks")
    for number in (f"precision {group['precision']:.2f}", f"recall {group['recall']:.2f}",
                   f"{group['hot_drop'][0]:.3f} vs {group['control_drop'][0]:.3f} for a control"):
        assert number in lines[2]
    assert lines[3].startswith("verdict: clean model not flagged without masks on the tagged")
    assert lines[4].startswith("verdict: shortcut model FLAGGED without masks")
    assert lines[5].startswith("verdict: clean model not flagged without masks: no group")
    page = " ".join(" ".join(parse(demo["report"]).text).split())
    for line in lines:
        assert line in page
    # The report's tagged section shows its flagged cluster first.
    section = page[page.index("tagged model on the tagged scenes, without masks FLAGGED"):]
    assert section.index(f"cluster {group['clusters'][0]} of class cross: FLAGGED") < \
        section.index("of class cross: not flagged")


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
