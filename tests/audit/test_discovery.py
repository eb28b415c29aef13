"""Shortcuts that do not sit still, found without masks: a tinted background, a mark at a
random place and a rare corner tag (3% of the class), on small models trained to use them
(tests/audit/shortcut_scenes.py), and their clean twins. Each planted group is
found by `sightline explain` + `sightline audit --verify` with precision >= 0.9 and recall
>= 0.8 against the generator's ground truth; a clean model is never flagged."""

import numpy as np
import pytest

from sightline.audit.audit import run_audit
from sightline.audit.shortcuts import ShortcutOptions
from sightline.audit.virelay import read_clusters
from sightline.cli.main import main
from tests.audit import shortcut_scenes as scenes

# (kind, share in training, share in the audited data, classes, training scenes, epochs)
CASES = {
    "tint": ("tint", 0.4, 0.4, 2, 1600, 8),
    "mark": ("mark", 0.4, 0.4, 2, 1600, 8),
    "rare": ("corner", 0.2, 0.03, 2, 1600, 8),
}
AUDITED = 1000
MIN_PRECISION, MIN_RECALL = 0.9, 0.8


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("discovery")


def trained(name, workspace, seed=0):
    kind, train_share, _, classes, count, epochs = CASES[name]
    data = scenes.make_scenes(count, kind, share=train_share, num_classes=classes, seed=seed)
    model = scenes.train(data, seed=seed, epochs=epochs)
    path = str(workspace / f"{name}-{seed}.keras")
    model.save(path)
    return model, path


def audited_scenes(name, seed=0, draw_cue=True):
    kind, _, share, classes, _, _ = CASES[name]
    return scenes.make_scenes(AUDITED, kind, share=share, num_classes=classes,
                              seed=seed + 100, draw_cue=draw_cue)


def explain_and_audit(model_path, data, out, method="gradcam", **job):
    np.save(out.parent / f"{out.name}.npy", data["images"])
    extra = [item for key, value in job.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    assert main(["explain", "--model", model_path, "--data", str(out.parent / f"{out.name}.npy"),
                 "--out", str(out), "--methods", method, "--quiet", *extra]) == 0
    return run_audit(str(out), method=method, shortcuts=ShortcutOptions(verify=True))


def flagged_members(audit):
    """{flagged group id: sample indices of its members} from clusters.h5."""
    table = read_clusters(audit["clusters_file"])
    columns = {"where": table["cluster"], "what": table.get("concept")}
    return {c["id"]: table["index"][columns[c["view"]] == c["id"]]
            for c in audit["clusters"] if c["flagged"]}


def precision_recall(audit, cued, cue_class=0):
    groups = flagged_members(audit)
    classes = {c["id"]: c["class"] for c in audit["clusters"]}
    found = np.zeros(len(cued), bool)
    for group, members in groups.items():
        if classes[group] == cue_class:
            found[members] = True
    hits = (found & cued).sum()
    return hits / max(found.sum(), 1), hits / cued.sum(), groups


@pytest.fixture(scope="module")
def models(workspace):
    return {name: trained(name, workspace) for name in CASES}


@pytest.fixture(scope="module")
def clean(workspace):
    """Clean twins: the same scenes with no cue and no faint objects, two seeds."""
    result = {}
    for seed in (0, 1):
        data = scenes.make_scenes(1600, "none", seed=seed)
        model = scenes.train(data, seed=seed, epochs=8)
        path = str(workspace / f"clean-{seed}.keras")
        model.save(path)
        result[seed] = path
    return result


@pytest.fixture(scope="module")
def runs():
    return {}


@pytest.mark.parametrize("name", list(CASES))
def test_each_kind_of_shortcut_is_found_and_verified(name, models, workspace, runs):
    model, path = models[name]
    data = audited_scenes(name)
    cued = data["cued"]
    assert cued.sum() >= 10
    # The model uses its shortcut: the cued scenes lose their class without the cue.
    plain = audited_scenes(name, draw_cue=False)
    assert scenes.accuracy(model, data, cued) >= 0.9
    assert scenes.accuracy(model, plain, cued) <= 0.6
    audit = runs[name] = explain_and_audit(path, data, workspace / f"run-{name}")
    precision, recall, groups = precision_recall(audit, cued)
    flagged = [c for c in audit["clusters"] if c["flagged"] and c["class"] == 0]
    assert flagged, [(c["id"], c["view"], c["reasons"]) for c in audit["clusters"]]
    assert precision >= MIN_PRECISION and recall >= MIN_RECALL, (precision, recall)
    for entry in flagged:
        assert entry["verification"]["depends"], entry["reasons"]
        assert entry["kind"] in ("place", "diffuse", "concept", "rare")
        assert entry["channels"], entry
    if name == "rare":
        assert any(c["kind"] == "rare" for c in flagged)
    if name == "tint":
        assert any(c["kind"] == "diffuse" for c in flagged)


def test_saliency_runs_find_the_tint_too(models, workspace):
    _, path = models["tint"]
    data = audited_scenes("tint")
    audit = explain_and_audit(path, data, workspace / "run-tint-saliency", method="saliency")
    precision, recall, _ = precision_recall(audit, data["cued"])
    assert precision >= MIN_PRECISION and recall >= MIN_RECALL, (precision, recall)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_clean_twin_is_not_flagged_even_on_the_tagged_scenes(clean, workspace, seed):
    """As the demo's clean model: trained without the cue, audited on scenes that carry
    it on visible objects. (On faint scenes, where nothing but the cue is visible, a
    clean model's prediction follows whatever it sees there, and that is reported.)"""
    data = scenes.make_scenes(AUDITED, "corner", share=0.4, seed=seed + 100)
    data["images"][data["faint"]] = scenes.make_scenes(
        AUDITED, "none", seed=seed + 100)["images"][data["faint"]]
    audit = explain_and_audit(clean[seed], data, workspace / f"clean-{seed}")
    assert not [c for c in audit["clusters"] if c["flagged"]], [
        (c["id"], c["view"], c["kind"], c["reasons"]) for c in audit["clusters"] if c["flagged"]]


def test_the_groups_are_the_same_whatever_the_batch_and_shard_size(models, workspace, runs):
    _, path = models["mark"]
    data = audited_scenes("mark")
    first = runs.get("mark") or explain_and_audit(path, data, workspace / "run-mark")
    second = explain_and_audit(path, data, workspace / "mark-b", batch_size=16, shard_size=128)
    one, two = read_clusters(first["clusters_file"]), read_clusters(second["clusters_file"])
    np.testing.assert_array_equal(one["concept"], two["concept"])

    def summary(audit):
        return [(c["id"], c["view"], c["kind"], c["size"], c["flagged"], c.get("channels"))
                for c in audit["clusters"]]
    assert summary(first) == summary(second)
