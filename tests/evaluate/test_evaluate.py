"""`sightline evaluate` end to end on real runs of a tiny model: the same numbers across
batch size, shard size, workers and parts, after an interrupted evaluation is started
again, the same --sample whatever the layout, the output contract, the report, and bad
input refused with one line."""

import json
import os

import h5py
import numpy as np
import pytest

from sightline.audit.clusters import sample_priority
from sightline.cli.main import main
from sightline.evaluate.run import PARTS_FOLDER, SANITY_BATCH_SIZE, evaluate_run
from sightline.evaluate.sanity import sanity_checks
from sightline.evaluate.settings import EvaluationSettings
from sightline.evaluate.summary import CONTROLS, FORMAT, bootstrap_interval
from tests.jobs.jobs import read_index, split_and_whole_runs

STEPS = 4
SANITY_KEYS = {"passes", "spearman_by_layer", "ssim_by_layer", "random_logit"}
METHOD_KEYS = {"srg", "srg_ci95", "deletion_auc", "insertion_auc", "lerf_auc", "average_drop",
               "increase_in_confidence", "average_gain", "sanity", "per_class"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny model on 24 images, explained twice: 2 workers, shard 4, batch 4; and one
    worker, shard 7, batch 8."""
    root = tmp_path_factory.mktemp("evaluate")
    made = split_and_whole_runs(root, count=24, methods="gradcam,saliency", index_split=True)
    split, whole = made["split"], made["whole"]
    reference = evaluate_run(whole, EvaluationSettings(steps=STEPS, batch_size=8))
    return {"root": root, "split": split, "whole": whole, "reference": reference,
            "reference_h5": read_h5(whole)}


def read_h5(out):
    with h5py.File(os.path.join(out, "evaluation.h5"), "r") as handle:
        names = []
        handle.visititems(lambda name, item: names.append(name)
                          if isinstance(item, h5py.Dataset) else None)
        return {name: handle[name][:] for name in names}


def assert_same(first, second):
    assert sorted(first) == sorted(second)
    for name in first:
        np.testing.assert_allclose(first[name], second[name], atol=1e-5, err_msg=name)


def test_same_numbers_across_batch_size_shard_size_workers_and_parts(runs):
    evaluation = evaluate_run(runs["split"], EvaluationSettings(steps=STEPS, batch_size=3,
                                                                part_size=5))
    assert_same(read_h5(runs["split"]), runs["reference_h5"])
    reference = runs["reference"]
    for group in ("methods", "controls"):
        for name, entry in reference[group].items():
            assert evaluation[group][name]["srg"] == pytest.approx(entry["srg"], abs=1e-5)
    assert evaluation["recommended"]["method"] == reference["recommended"]["method"]
    assert not os.path.exists(os.path.join(runs["split"], PARTS_FOLDER))


def test_an_interrupted_evaluation_resumes_to_the_same_files(runs, tmp_path):
    out = runs["whole"]
    seen = []

    def stop_after_two(done, total):
        seen.append(done)
        if done == 2:
            raise KeyboardInterrupt

    settings = EvaluationSettings(steps=STEPS, batch_size=5, part_size=6)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(out, settings, progress=stop_after_two)
    parts = sorted(os.listdir(os.path.join(out, PARTS_FOLDER)))
    assert parts == ["part-00000.h5", "part-00001.h5", "settings.json"]
    again = []
    evaluate_run(out, settings, progress=lambda done, total: again.append(done))
    assert again == [3, 4]  # only the parts not finished before
    assert_same(read_h5(out), runs["reference_h5"])


def test_output_contract(runs):
    with open(os.path.join(runs["whole"], "evaluation.json")) as handle:
        evaluation = json.load(handle)
    assert evaluation["format"] == FORMAT
    assert {"steps", "fill", "sample", "seed"} <= set(evaluation["settings"])
    assert set(evaluation["methods"]) == {"gradcam", "saliency"}
    assert set(evaluation["controls"]) == set(CONTROLS)
    for entry in list(evaluation["methods"].values()) + list(evaluation["controls"].values()):
        assert METHOD_KEYS <= set(entry)
        assert SANITY_KEYS <= set(entry["sanity"])
        layers = [step["layer"] for step in entry["sanity"]["spearman_by_layer"]]
        # Saliency is among the methods: the cascade goes down to the first layer.
        assert layers == evaluation["settings"]["sanity_layers"] == [
            "logits", "conv_c", "conv_b", "conv_a"]
        low, high = entry["srg_ci95"]
        assert low <= entry["srg"] <= high
        assert entry["srg"] == pytest.approx(entry["lerf_auc"] - entry["deletion_auc"])
        counts = sum(c["count"] for c in entry["per_class"].values())
        assert counts == evaluation["count"] == 24
    # Maps that know nothing about the model fail the sanity check.
    assert not any(entry["sanity"]["passes"] for entry in evaluation["controls"].values())
    recommended = evaluation["recommended"]
    assert recommended["sanity_checked"] is True and recommended["note"] is None
    passing = [m for m, entry in evaluation["methods"].items() if entry["sanity"]["passes"]]
    assert passing, "the random model's Grad-CAM changes when its layers are re-initialised"
    best = max(passing, key=lambda m: evaluation["methods"][m]["srg"])
    assert recommended["method"] == best
    h5 = runs["reference_h5"]
    # The lead's interval is paired: the bootstrap of the per-image SRG difference.
    if recommended["next"]:
        srg = {m: h5[f"methods/{m}/auc"][:, 1].astype(np.float64)
               - h5[f"methods/{m}/auc"][:, 0] for m in (best, recommended["next"])}
        expected = bootstrap_interval(srg[best] - srg[recommended["next"]],
                                      evaluation["settings"]["seed"])
        assert recommended["margin_ci95"] == pytest.approx(expected)
        assert recommended["margin_ci95"][0] <= recommended["margin"] <= recommended["margin_ci95"][1]
        assert recommended["margin_clear"] == (expected[0] > 0)
    count = len(h5["sample/index"])
    # The stored sanity numbers are the checks' own, called directly on the run's model,
    # images and explained classes (every image: 24 < 256 per class).
    np.testing.assert_array_equal(h5["sanity/sample/index"], np.arange(24))
    direct = sanity_checks(str(runs["root"] / "model.keras"),
                           np.load(runs["root"] / "images.npy"), read_index(runs["whole"])["pred/target"],
                           ["gradcam", "saliency"], seed=0, batch_size=SANITY_BATCH_SIZE)
    for method in ("gradcam", "saliency"):
        for field in ("spearman", "ssim", "floor_spearman", "random_logit_ssim", "strip"):
            np.testing.assert_allclose(h5[f"sanity/methods/{method}/{field}"],
                                       getattr(direct.results[method], field), atol=1e-6)
    assert h5["methods/gradcam/probabilities"].shape == (count, 3, STEPS + 1)
    # The per-image areas average to the JSON's means.
    auc = h5["methods/saliency/auc"].astype(np.float64)
    assert evaluation["methods"]["saliency"]["srg"] == pytest.approx(
        (auc[:, 1] - auc[:, 0]).mean(), abs=1e-6)


def test_cli_prints_the_numbers_and_writes_the_report(runs, tmp_path, capsys):
    report = str(tmp_path / "report")
    assert main(["evaluate", runs["whole"], "--steps", str(STEPS), "--quiet",
                 "--methods", "saliency", "--report", report]) == 0
    printed = capsys.readouterr().out
    assert "method saliency: SRG" in printed and "control edge: SRG" in printed
    assert "sanity check FAILS (Spearman 1.00 with every layer down to conv_a" in printed
    assert "recommendation: For this model use saliency" in printed
    page = open(os.path.join(report, "evaluation.html")).read()
    assert "For this model use saliency" in page and "data:image/png;base64" in page
    assert {"evaluation-whole-curves.png", "evaluation-whole-unchanged.png",
            "evaluation-whole-sanity.png", "evaluation-whole-sanity-strip.png"} <= set(os.listdir(report))
    assert "Sanity checks: do the maps depend on the model?" in page
    # Saliency is a gradient of the input: its cascade, and the page, go to the first layer.
    assert "re-initialised one by one from the top down to conv_a (target layer" in page


@pytest.mark.parametrize("arguments, message", [
    (["{missing}"], "does not exist"),
    (["{root}"], "holds no manifest.json"),
    (["{whole}", "--methods", "gradcam,nonsense"], "unknown method(s) 'nonsense'"),
    (["{whole}", "--methods", "eigencam"], "the run did not store 'eigencam'"),
    (["{whole}", "--steps", "0"], "--steps must be a whole number of steps from 1"),
    (["{whole}", "--steps", "many"], "invalid int value: 'many'"),
    (["{whole}", "--fill", "zeros"], "--fill must be one of mean, blur, road"),
    (["{whole}", "--sample", "0"], "--sample must be a whole number of images per class"),
    (["{whole}", "--sanity-sample", "-1"], "--sanity-sample must be a whole number of images"),
])
def test_bad_input_is_one_line_and_exit_2(runs, capsys, arguments, message):
    names = {"missing": str(runs["root"] / "nowhere"), "root": str(runs["root"]),
             "whole": runs["whole"]}
    before = sorted(os.listdir(runs["whole"]))
    try:
        code = main(["evaluate"] + [a.format(**names) for a in arguments])
    except SystemExit as stop:  # argparse's own refusals (not a number)
        code = stop.code
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert message in error and len(error.splitlines()) == 1, error
    assert sorted(os.listdir(runs["whole"])) == before


def test_audit_names_the_recommended_method_and_reports_the_evaluation(runs, tmp_path, capsys):
    report = str(tmp_path / "audit-report")
    main(["audit", runs["whole"], "--report", report])
    printed = capsys.readouterr().out
    with open(os.path.join(runs["whole"], "evaluation.json")) as handle:
        method = json.load(handle)["recommended"]["method"]
    assert f"trust: For this model use {method}" in printed
    page = open(os.path.join(report, "report.html")).read()
    assert "Which method to trust" in page and f"For this model use {method}" in page


# Last: it replaces the runs' evaluations with sampled ones.
def test_sample_per_class_is_the_same_whatever_the_layout(runs):
    settings = EvaluationSettings(steps=2, sample=2, seed=3, sanity_sample=0)
    first = evaluate_run(runs["split"], settings)
    indices = read_h5(runs["split"])["sample/index"]
    second = evaluate_run(runs["whole"], settings)
    np.testing.assert_array_equal(read_h5(runs["whole"])["sample/index"], indices)
    assert first["count"] == second["count"] == len(indices)
    # Per explained class, the 2 of lowest hash priority.
    with h5py.File(os.path.join(runs["whole"], "index.h5"), "r") as handle:
        all_indices, targets = handle["sample/index"][:], handle["pred/target"][:]
    expected = []
    for label in np.unique(targets):
        members = all_indices[targets == label]
        expected += list(members[np.argsort(sample_priority(members, 3), kind="stable")[:2]])
    np.testing.assert_array_equal(indices, np.sort(expected))


def test_bootstrap_interval_is_the_normal_interval_of_a_large_sample():
    """Independent reference: for 2,000 normal values the mean's 95% interval is about
    mean +- 1.96 sigma / sqrt(n) (the bootstrap's own Monte Carlo error is a few % of
    its width at 1,000 resamples)."""
    values = np.random.default_rng(5).normal(3.0, 2.0, 2000)
    low, high = bootstrap_interval(values, seed=0)
    half = 1.96 * values.std() / np.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.1 * half)
    assert bootstrap_interval(values, seed=0) == [low, high]  # seeded


def test_the_card_in_plain_words():
    from sightline.evaluate.summary import card_text, recommend

    def entry(srg, insertion, drop, low=None):
        return {"srg": srg, "srg_ci95": [low if low is not None else srg - 0.02, srg + 0.02],
                "insertion_auc": insertion, "average_drop": drop, "sanity": None,
                "beats_random": True}

    methods = {"gradcam": entry(0.41, 0.6, 10.0), "saliency": entry(0.29, 0.5, 20.0),
               "eigencam": entry(0.10, 0.4, 30.0)}
    recommended = recommend(methods)
    assert recommended["method"] == "gradcam" and recommended["next"] == "saliency"
    assert recommended["margin"] == pytest.approx(0.12)
    assert recommended["metrics_agree"] is True  # the same order by all three metrics
    text = card_text({"methods": methods, "recommended": recommended})
    assert text.startswith("For this model use gradcam: its SRG is 0.41 [0.39, 0.43], 0.12 "
                           "above saliency's; the three metrics agree.")
    assert "sanity checks were not run" in text
    # A lead within the noise of the sample is said to be one.
    unclear = dict(recommended, margin_ci95=[-0.03, 0.07], margin_clear=False)
    assert ("0.12 above saliency's (not a clear lead on these images: the 95% interval of "
            "the difference, [-0.03, 0.07], holds 0)") in card_text(
                {"methods": methods, "recommended": unclear})
    clear = dict(recommended, margin_ci95=[0.05, 0.2], margin_clear=True)
    assert "not a clear lead" not in card_text({"methods": methods, "recommended": clear})
    methods["saliency"]["insertion_auc"] = 0.9  # insertion now prefers saliency
    methods["eigencam"]["average_drop"] = 1.0  # and Average Drop eigencam
    assert recommend(methods)["metrics_agree"] is False
    alone = {"gradcam": entry(0.41, 0.6, 10.0)}
    single = recommend(alone)
    assert single["metrics_agree"] is None and single["next"] is None
    assert "the only method evaluated" in card_text({"methods": alone, "recommended": single})
