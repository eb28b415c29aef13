"""`sightline audit` finds shortcuts without masks: planted groups through hand-written
runs (the store's own writer), determinism across shard size, chunking, batch size and
workers, the clusters.h5 and audit.json contract, and --verify / --export-virelay on a
real `sightline explain` run of a tiny model, against an eager per-image reference."""

import json
import os
import shutil

import h5py
import keras
import numpy as np
import pytest

from sightline.audit.audit import EXIT_FLAGGED, run_audit
from sightline.audit.shortcuts import ShortcutOptions
from sightline.audit.summary import summary_lines, to_json
from sightline.audit.verify import MIN_DROP, MIN_RATIO
from sightline.audit.virelay import read_clusters
from sightline.cli.main import main
from tests.audit.audit_runs import shortcut_run, stored_maps, write_run
from tests.audit.planted_maps import blob_maps, planted_corner
from tests.references import eager_drops
from tests.jobs.jobs import split_and_whole_runs

CONTRACT = {"id", "class", "size", "share", "flagged", "reasons", "hot_region", "accuracy",
            "mean_score", "verification", "examples"}
# Everything flagged that can be: for checking --verify's numbers on a model with no
# real shortcut.
PERMISSIVE = {"min_silhouette": -1.0, "min_separation": 0.0, "min_share": 0.0, "min_size": 0,
              "max_share": 1.0, "min_distance": 0.0, "max_overlap": 1.0}


def planted_run(root, *, seed=0, corner=True, shard_size=25, count=240):
    """Class 0 ("horse"): maps on an object near the centre, except ~12% on the
    bottom-right corner (when `corner`); class 1 ("zebra"): maps on objects anywhere in
    the middle half. Interleaved. Returns the written run and its truth."""
    horses, truth = planted_corner(seed, count=count, share=0.12 if corner else 0.0)
    rng = np.random.default_rng(seed + 100)
    zebras = blob_maps(rng.uniform(0.25, 0.75, (count, 2)), rng, jitter=0.3)
    maps = np.empty((2 * count, *horses.shape[1:]))
    maps[0::2], maps[1::2] = horses, zebras
    labels = np.arange(2 * count) % 2
    planted = np.zeros(2 * count, bool)
    planted[0::2] = truth
    keys = np.array([f"{('horse', 'zebra')[label]}/{i:04d}.png" for i, label in enumerate(labels)])
    out = write_run(os.path.join(root, f"run-{seed}-{corner}-{shard_size}"), maps, labels,
                    labels.copy(), keys, shard_size=shard_size, class_names=("horse", "zebra"))
    return {"out": out, "maps": maps, "labels": labels, "planted": planted, "keys": keys}


def json_clusters(audit):
    """audit.json's clusters as another process reads them (NaN would fail to parse)."""
    def refuse(constant):
        raise AssertionError(f"{constant} in audit.json")
    return json.loads(json.dumps(to_json(audit)), parse_constant=refuse)["clusters"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("planted"))
    run = planted_run(root)
    run["audit"] = run_audit(run["out"])
    return run


# ----------------------------------------------------------------------------- planted groups


def test_planted_corner_group_is_found_with_precision_and_recall_and_flagged(planted):
    audit = planted["audit"]
    flagged = [c for c in audit["clusters"] if c["flagged"]]
    assert len(flagged) == 1, [(c["class"], c["reasons"]) for c in audit["clusters"]]
    (group,) = flagged
    assert group["class"] == 0 and audit["flagged_clusters"] == [group["id"]]
    found = read_clusters(audit["clusters_file"])["cluster"] == group["id"]
    truth = planted["planted"]
    precision = (found & truth).sum() / found.sum()
    recall = (found & truth).sum() / truth.sum()
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    y0, y1, x0, x1 = group["hot_region"]
    assert y0 >= 0.6 and x0 >= 0.6 and y1 == 1.0 and x1 == 1.0
    # The plain-words verdict names the cluster, its class and where it looks; the mask
    # verdict is the one it always was.
    lines = summary_lines(audit)
    assert "  NOT checked: evidence on the object: no masks or boxes (pass --masks or --boxes)" \
        in lines
    assert [line for line in lines if line.startswith("verdict: FLAGGED: 1 group(s) found "
                                                      "without masks")]
    (verdict,) = [line for line in lines if line.startswith("cluster verdict")]
    assert verdict.startswith(f"cluster verdict: FLAGGED cluster {group['id']} of class 'horse'")
    assert "bottom-right corner" in verdict


@pytest.mark.parametrize("seed", [1, 2])
def test_other_seeds_recover_the_planted_group_too(tmp_path, seed):
    run = planted_run(str(tmp_path), seed=seed)
    audit = run_audit(run["out"])
    (group,) = [c for c in audit["clusters"] if c["flagged"]]
    found = read_clusters(audit["clusters_file"])["cluster"] == group["id"]
    assert (found & run["planted"]).sum() / found.sum() >= 0.9
    assert (found & run["planted"]).sum() / run["planted"].sum() >= 0.9


def test_nothing_is_flagged_when_every_map_looks_at_the_object(tmp_path):
    run = planted_run(str(tmp_path), seed=3, corner=False)
    audit = run_audit(run["out"])
    assert audit["clusters"] and not audit["flagged_clusters"]
    assert not any(c["flagged"] for c in audit["clusters"]), \
        [c["reasons"] for c in audit["clusters"]]
    assert summary_lines(audit)[-1].startswith("cluster verdict: nothing flagged")


def test_clusters_sit_beside_the_masked_verdict(tmp_path):
    made = shortcut_run(str(tmp_path))
    audit = run_audit(made["out"], masks=made["masks"])
    assert audit["flagged"] == ["disc"]  # the mask verdict, as before
    assert audit["clusters"] and {c["class"] for c in audit["clusters"]} == {0, 1}
    assert os.path.exists(os.path.join(made["out"], "clusters.h5"))


# ----------------------------------------------------------------------------- contract


def test_audit_json_clusters_carry_the_contract_keys_and_no_arrays_or_nan(planted):
    clusters = json_clusters(planted["audit"])
    sizes = {}
    for entry in clusters:
        assert CONTRACT <= set(entry), CONTRACT - set(entry)
        assert entry["verification"] is None  # no --verify
        assert "mean_heatmap" not in entry
        assert isinstance(entry["reasons"], list) and entry["reasons"]
        assert all(isinstance(e["index"], int) and isinstance(e["key"], str)
                   for e in entry["examples"])
        sizes[entry["class"]] = sizes.get(entry["class"], 0) + entry["size"]
        # write_run scores every sample 0.9 and predicts its label.
        assert entry["mean_score"] == pytest.approx(0.9) and entry["accuracy"] == 1.0
    assert sizes == {0: 240, 1: 240}


def test_clusters_h5_contract_read_back(tmp_path):
    run = planted_run(str(tmp_path), seed=4, count=100)
    maps = run["maps"].copy()
    empty = np.zeros(len(maps), bool)
    empty[[5, 8, 77]] = True
    maps[empty] = 0.0
    out = write_run(str(tmp_path / "with-empty"), maps, run["labels"], run["labels"].copy(),
                    run["keys"], shard_size=30)
    audit = run_audit(out)
    with h5py.File(os.path.join(out, "clusters.h5"), "r") as handle:
        assert handle["sample/index"].dtype == np.int64 and handle["sample/index"].shape == (200,)
        assert h5py.check_string_dtype(handle["sample/key"].dtype).encoding == "utf-8"
        assert handle["class"].dtype == np.int32 and handle["cluster"].dtype == np.int32
        assert handle["embedding"].dtype == np.float32 and handle["embedding"].shape == (200, 2)
        assert handle["clusters/id"].dtype == np.int32
        assert handle["clusters/mean_heatmap"].dtype == np.float32
    stored = read_clusters(os.path.join(out, "clusters.h5"))
    np.testing.assert_array_equal(stored["index"], np.arange(200))
    assert stored["key"] == list(run["keys"])
    np.testing.assert_array_equal(stored["class"], run["labels"])
    assert (stored["cluster"][empty] == -1).all() and (stored["cluster"][~empty] >= 0).all()
    assert np.isnan(stored["embedding"][empty]).all()
    assert np.isfinite(stored["embedding"][~empty]).all()
    ids = [c["id"] for c in audit["clusters"]]
    np.testing.assert_array_equal(stored["clusters/id"], ids)
    np.testing.assert_array_equal(stored["clusters/flagged"],
                                  [c["flagged"] for c in audit["clusters"]])
    reference = stored_maps(np.maximum(maps, 0))
    for slot, entry in enumerate(audit["clusters"]):
        members = stored["cluster"] == entry["id"]
        assert entry["size"] == members.sum()
        class_size = (run["labels"] == entry["class"]).sum()
        assert entry["share"] == pytest.approx(members.sum() / class_size)
        np.testing.assert_allclose(stored["clusters/mean_heatmap"][slot],
                                   reference[members].mean(axis=0), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- determinism


def test_same_clusters_whatever_the_shard_size_chunking_and_index(tmp_path, planted):
    reference = read_clusters(planted["audit"]["clusters_file"])
    other = planted_run(str(tmp_path), shard_size=37)
    unindexed = str(tmp_path / "unindexed")
    shutil.copytree(other["out"], unindexed)
    os.remove(os.path.join(unindexed, "index.h5"))  # read straight from the shards
    for out, chunk in ((other["out"], 7), (unindexed, 256)):
        audit = run_audit(out, chunk=chunk)
        stored = read_clusters(audit["clusters_file"])
        np.testing.assert_array_equal(stored["cluster"], reference["cluster"])
        np.testing.assert_array_equal(stored["embedding"], reference["embedding"])
        assert json_clusters(audit) == json_clusters(planted["audit"])
    # Fitted on a sample of 100 maps per class: the same sample, so the same clusters.
    sampled = [read_clusters(run_audit(out, chunk=chunk, shortcuts=ShortcutOptions(
        sample_size=100, clusters_file=str(tmp_path / f"{chunk}.h5")))["clusters_file"])["cluster"]
               for out, chunk in ((planted["out"], 256), (other["out"], 7), (unindexed, 50))]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    np.testing.assert_array_equal(sampled[0], sampled[2])


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Two real runs of one tiny model on 60 images: 2 workers, shard 4, batch 4; and
    one worker, shard 7, batch 8."""
    return split_and_whole_runs(tmp_path_factory.mktemp("real"), count=60, methods="gradcam")


def test_same_clusters_across_batch_size_shard_size_and_workers(real):
    first = run_audit(real["split"], shortcuts=ShortcutOptions(cluster_count=2))
    second = run_audit(real["whole"], shortcuts=ShortcutOptions(cluster_count=2))
    one, two = read_clusters(first["clusters_file"]), read_clusters(second["clusters_file"])
    np.testing.assert_array_equal(one["cluster"], two["cluster"])
    np.testing.assert_allclose(one["embedding"], two["embedding"], rtol=1e-5, atol=1e-6)
    def summary(audit):
        return [(c["id"], c["class"], c["size"], c["flagged"], c["examples"])
                for c in audit["clusters"]]
    assert summary(first) == summary(second)
    # Each class with enough maps was cut in two, as asked.
    assert any(c["share"] < 1.0 for c in first["clusters"])


def test_verify_numbers_match_an_eager_per_image_reference(real):
    audit = run_audit(real["whole"], shortcuts=ShortcutOptions(
        cluster_count=2, thresholds=PERMISSIVE, verify=True))
    stored = read_clusters(audit["clusters_file"])
    verified = [c for c in audit["clusters"] if c["verification"] is not None]
    assert verified, [c["reasons"] for c in audit["clusters"]]
    model = keras.models.load_model(real["model"], compile=False)
    for entry in verified:
        members = stored["index"][stored["cluster"] == entry["id"]]
        images = real["images"][members]
        verification = entry["verification"]
        for part, region in (("hot", entry["hot_region"]),
                             ("control", (verification["control"] or {}).get("region"))):
            if region is None:
                continue
            drop, changed = eager_drops(model, images, region, entry["class"])
            assert verification[part]["region"] == pytest.approx(region)
            assert verification[part]["count"] == len(members)
            assert verification[part]["mean_drop"] == pytest.approx(drop, abs=1e-5)
            assert verification[part]["changed_share"] == pytest.approx(changed)
        hot = verification["hot"]["mean_drop"]
        control = max(verification["control"]["mean_drop"], 0.0) if verification["control"] else 0.0
        depends = hot >= MIN_DROP and hot >= MIN_RATIO * control
        assert verification["depends"] == depends
        assert entry["flagged"] == depends and entry["downgraded"] == (not depends)
    # Unflagged clusters are not verified.
    assert all(c["verification"] is None for c in audit["clusters"] if c not in verified)
    # The verdict says which flags the ablation withdrew, and why.
    lines = summary_lines(audit)
    for entry in verified:
        withdrawn = [line for line in lines if f"cluster {entry['id']} of class" in line
                     and "not flagged after all: downgraded" in line]
        assert len(withdrawn) == int(entry["downgraded"]), lines


# ----------------------------------------------------------------------------- the CLI


def test_cli_flags_end_to_end(real, tmp_path, capsys):
    export = str(tmp_path / "virelay")
    code = main(["audit", real["whole"], "--clusters", "2", "--cluster-min-share", "0.3",
                 "--cluster-min-size", "3", "--cluster-min-distance", "0.1", "--verify",
                 "--verify-min-drop", "0.05", "--export-virelay", export, "--fail-on-flag",
                 "--json", str(tmp_path / "audit.json")])
    printed = capsys.readouterr().out
    with open(tmp_path / "audit.json") as handle:
        audit = json.load(handle)
    assert code == (EXIT_FLAGGED if audit["flagged_clusters"] else 0)
    rule = audit["cluster_rule"]
    assert (rule["min_share"], rule["min_size"], rule["min_distance"], rule["clusters"]) == \
        (0.3, 3, 0.1, 2)
    assert rule["verify"] and rule["verify_min_drop"] == 0.05
    assert all(CONTRACT <= set(c) for c in audit["clusters"])
    assert "cluster verdict:" in printed and os.path.join(export, "project.yaml") in printed
    stored = read_clusters(os.path.join(real["whole"], "clusters.h5"))
    with h5py.File(os.path.join(export, "sightline.input.h5"), "r") as handle:
        # The images as the run read them (preprocessing none), channels first, as the
        # 8-bit RGB ViRelAy's image server takes (this array is in [0, 1]).
        expected = np.rint(real["images"][stored["index"]] * 255.0).clip(0, 255)
        expected = np.repeat(expected, 3, axis=-1) if expected.shape[-1] == 1 else expected
        assert handle["data"].dtype == np.uint8
        np.testing.assert_array_equal(handle["data"][()], expected.transpose(0, 3, 1, 2))
    with h5py.File(os.path.join(export, "sightline.analysis.h5"), "r") as handle:
        for entry in audit["clusters"]:
            group = handle[f"{entry['class']:08d}"]
            assert len(group["index"]) == (stored["class"] == entry["class"]).sum()


def test_cli_flagged_cluster_gates_the_exit_code(planted, capsys):
    assert main(["audit", planted["out"], "--json", os.path.join(planted["out"], "a.json")]) == 0
    assert main(["audit", planted["out"], "--fail-on-flag",
                 "--json", os.path.join(planted["out"], "a.json")]) == EXIT_FLAGGED
    # Asking for a share no group holds unflags it.
    assert main(["audit", planted["out"], "--fail-on-flag", "--cluster-min-share", "0.5",
                 "--json", os.path.join(planted["out"], "a.json")]) == 0
    assert "cluster verdict: nothing flagged" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["--clusters", "0"], "--clusters must be a whole number of clusters >= 1"),
    (["--cluster-min-share", "1.5"], "min_share is a fraction"),
    (["--cluster-min-distance", "-0.1"], "min_distance must be a number >= 0"),
    (["--unsafe"], "--unsafe only matters for --verify"),
    (["--verify"], "the run's source cannot be opened again"),
])
def test_cli_refuses_bad_input_before_work_with_one_line(planted, capsys, arguments, message):
    before = os.path.getmtime(planted["audit"]["clusters_file"])
    assert main(["audit", planted["out"], *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error
    assert os.path.getmtime(planted["audit"]["clusters_file"]) == before


@pytest.mark.parametrize("change, message", [
    ({"model": "/nowhere/model.keras"},
     "the run's model '/nowhere/model.keras' is not there any more"),
    ({"run": {"keys_sha256": "0" * 64}}, "no longer lists the samples the run explained"),
])
def test_verify_stops_with_one_line_when_the_run_cannot_be_replayed(real, tmp_path, capsys,
                                                                     change, message):
    out = str(tmp_path / "moved")
    shutil.copytree(real["whole"], out)
    path = os.path.join(out, "manifest.json")
    with open(path) as handle:
        manifest = json.load(handle)
    manifest.update({k: v for k, v in change.items() if k != "run"})
    manifest["run"].update(change.get("run", {}))
    with open(path, "w") as handle:
        json.dump(manifest, handle)
    assert main(["audit", out, "--verify"]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error


def test_images_are_read_back_by_sample_index_in_chunks(real):
    from sightline.audit.replay import ImageFeed, read_images, sample_runs
    from sightline.data.sources import open_source

    assert sample_runs([2, 3, 5, 40, 41, 90], gap=16) == [(2, 6), (40, 42), (90, 91)]
    source = open_source(str(real["root"] / "images.npy"))
    wanted = np.array([0, 3, 4, 5, 21, 22, 40, 59])
    chunks = list(read_images(source, wanted, image_shape=(16, 16, 3), preprocess="none",
                              chunk=3))
    assert [len(c) for c in chunks] == [3, 3, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), real["images"][wanted])
    feed = ImageFeed(source, np.arange(60), image_shape=(16, 16, 3), preprocess="none", chunk=7)
    np.testing.assert_array_equal(feed.take(5), real["images"][:5])
    np.testing.assert_array_equal(feed.take(20), real["images"][5:25])
    with pytest.raises(ValueError, match="ascending without repeats"):
        next(read_images(source, [4, 4], image_shape=(16, 16, 3), preprocess="none"))
