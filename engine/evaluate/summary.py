"""evaluation.json from evaluation.h5: means with seeded bootstrap intervals, per class,
the controls beside the methods, and the recommendation. No TensorFlow here.

Numbers. Per image: deletion_auc = AUC(MoRF), lerf_auc = AUC(LeRF), insertion_auc =
AUC(insertion), srg = lerf_auc - deletion_auc (probabilities of the explained class over
the fraction hidden or shown). One-pass scores as in Chattopadhyay et al. 2018, in
percent: average_drop = 100 x mean(max(0, Y - O) / Y), increase_in_confidence = 100 x
share(O > Y), average_gain = 100 x mean(max(0, O - Y) / (1 - Y)), Y the probability of
the image, O of the image times its min-max scaled map.

Intervals: the 2.5 and 97.5 percentiles of BOOTSTRAP means of the per-image values
resampled with replacement, seeded by the evaluation's seed.

Sanity: each method's and control's `"sanity"` entry is the summary of its checks
(sightline.evaluate.sanity_scores: passes, the rule, the floor, the mean Spearman and SSIM
per randomised layer, the random-logit check), read from evaluation.h5's /sanity.

Recommendation: among the methods (never a control) that pass the sanity checks, the one
with the best mean SRG, its margin over the next (with a paired bootstrap interval of the
per-image difference: `margin_ci95`, and `margin_clear` when it lies above 0; the card
says when the lead is not clear), and whether the metrics agree: Kendall
tau between the methods' rankings by SRG, by insertion AUC and by Average Drop (lower is
better), all three pairs at least AGREEMENT_TAU. Until the sanity checks run
(`"sanity": null`) every method counts as passing and the recommendation says so. A
method whose SRG interval does not lie above the random control's mean SRG is called out
(`"beats_random": false`).
"""

import json

import numpy as np

from sightline.errors import UsageError
from sightline.evaluate.sanity_scores import read_sanity
from sightline.store.layout import SAMPLE_TARGET

FORMAT = "sightline-evaluation/1"
EVALUATION_FILE = "evaluation.json"
H5_FILE = "evaluation.h5"
CONTROLS = ("random", "centre", "edge")
BOOTSTRAP = 1000
AGREEMENT_TAU = 0.5
CURVE_AUC = {"deletion_auc": 0, "lerf_auc": 1, "insertion_auc": 2}


def bootstrap_interval(values, seed, resamples=BOOTSTRAP):
    """[low, high]: the 95% percentile interval of the mean of `values` (float64 [n])."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return [None, None]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 100):  # [100, n] draws at a time: memory flat in n
        stop = min(resamples, start + 100)
        means[start:stop] = values[rng.integers(0, len(values), (stop - start, len(values)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def per_image_scores(group):
    """{metric: float64 [n]} of one method or control's datasets in evaluation.h5."""
    auc = group["auc"][:].astype(np.float64)
    original = group["original"][:].astype(np.float64)
    masked = group["one_pass"][:].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(original > 0, np.maximum(0.0, original - masked) / original, 0.0)
        gain = np.where(original < 1, np.maximum(0.0, masked - original) / (1.0 - original), 0.0)
    scores = {name: auc[:, column] for name, column in CURVE_AUC.items()}
    scores["srg"] = scores["lerf_auc"] - scores["deletion_auc"]
    scores["average_drop"] = 100.0 * drop
    scores["increase_in_confidence"] = 100.0 * (masked > original)
    scores["average_gain"] = 100.0 * gain
    scores["tie_fraction"] = group["tie_fraction"][:].astype(np.float64)
    return scores


def _entry(scores, seed, rows=None):
    picked = {k: (v if rows is None else v[rows]) for k, v in scores.items()}
    entry = {name: float(values.mean()) if len(values) else None
             for name, values in picked.items()}
    entry["srg_ci95"] = bootstrap_interval(picked["srg"], seed)
    entry["count"] = int(len(picked["srg"]))
    return entry


def describe(scores, targets, seed, names=None):
    """The JSON entry of one method or control: means, srg_ci95, per_class."""
    entry = _entry(scores, seed)
    entry["per_class"] = {}
    for label in np.unique(targets):
        rows = targets == label
        name = (names or {}).get(int(label), str(int(label)))
        entry["per_class"][name] = _entry(scores, seed + 1 + int(label), rows)
    return entry


def kendall_tau(first, second):
    """Kendall's tau-b of two score lists (None when it is undefined)."""
    from scipy.stats import kendalltau
    if len(first) < 2:
        return None
    tau = kendalltau(first, second).statistic
    return None if not np.isfinite(tau) else float(tau)


def recommend(methods, random_srg=None):
    """The recommendation from {name: entry}; None when there is no method."""
    passing = {name: entry for name, entry in methods.items()
               if entry.get("sanity") is None or entry["sanity"].get("passes")}
    sanity_run = any(entry.get("sanity") is not None for entry in methods.values())
    if not passing:
        return {"method": None, "sanity_checked": sanity_run,
                "reason": "no method passes the sanity checks"}
    ranked = sorted(passing, key=lambda name: -passing[name]["srg"])
    best = passing[ranked[0]]
    names = list(methods)
    taus = {
        "srg_vs_insertion": kendall_tau([methods[n]["srg"] for n in names],
                                        [methods[n]["insertion_auc"] for n in names]),
        "srg_vs_average_drop": kendall_tau([methods[n]["srg"] for n in names],
                                           [-methods[n]["average_drop"] for n in names]),
        "insertion_vs_average_drop": kendall_tau([methods[n]["insertion_auc"] for n in names],
                                                 [-methods[n]["average_drop"] for n in names]),
    }
    defined = [t for t in taus.values() if t is not None]
    return {
        "method": ranked[0], "srg": best["srg"], "srg_ci95": best["srg_ci95"],
        "next": ranked[1] if len(ranked) > 1 else None,
        "margin": best["srg"] - passing[ranked[1]]["srg"] if len(ranked) > 1 else None,
        "kendall_tau": taus,
        # None with a single method: there is no ranking to agree on.
        "metrics_agree": (all(t >= AGREEMENT_TAU for t in defined) if defined else None),
        "beats_random": best.get("beats_random"),
        "sanity_checked": sanity_run,
        "note": None if sanity_run else "the sanity checks were not run: the recommendation "
                                        "rests on the faithfulness metrics alone",
    }


def summarise(h5_path, methods, settings, grid, names=None):
    """The evaluation dict (evaluation.json's contents) from evaluation.h5."""
    import h5py
    with h5py.File(h5_path, "r") as handle:
        targets = handle[SAMPLE_TARGET][:]
        controls = {name: describe(per_image_scores(handle[f"controls/{name}"]), targets,
                                   settings.seed, names) for name in CONTROLS}
        entries, image_srg = {}, {}
        sanity = read_sanity(handle)
        for method in methods:
            scores = per_image_scores(handle[f"methods/{method}"])
            image_srg[method] = scores["srg"]
            entry = describe(scores, targets, settings.seed, names)
            entry["sanity"] = _sanity_entry(sanity, "methods", method)
            entries[method] = entry
        count = int(len(targets))
    random_srg = controls["random"]["srg"]
    for entry in list(entries.values()) + list(controls.values()):
        low = entry["srg_ci95"][0]
        entry["beats_random"] = bool(low is not None and low > random_srg)
    for name in CONTROLS:
        controls[name]["sanity"] = _sanity_entry(sanity, "controls", name)
    checked = {} if sanity is None else {"sanity_layers": sanity["layers"],
                                         "sanity_target_layer": sanity["target_layer"],
                                         "sanity_count": sanity["count"]}
    recommended = recommend(entries, random_srg)
    if recommended.get("next"):
        # Paired: both methods were scored on the same images, so the interval of the mean
        # per-image difference is much narrower than the two SRG intervals side by side.
        low, high = bootstrap_interval(image_srg[recommended["method"]]
                                       - image_srg[recommended["next"]], settings.seed)
        recommended["margin_ci95"] = [low, high]
        recommended["margin_clear"] = bool(low is not None and low > 0)
    return {"format": FORMAT,
            "settings": {**settings.recorded(), "grid": list(grid), "bootstrap": BOOTSTRAP,
                         **checked},
            "count": count, "methods": entries, "controls": controls,
            "recommended": recommended}


def _sanity_entry(sanity, kind, name):
    """The JSON summary of one method's or control's sanity checks; None when they did
    not run."""
    if sanity is None or name not in sanity[kind]:
        return None
    return sanity[kind][name].summary(sanity["layers"])


def read_evaluation(path):
    with open(path) as handle:
        evaluation = json.load(handle)
    if evaluation.get("format") != FORMAT:
        raise UsageError(f"{path!r} is not a sightline evaluation (format "
                         f"{evaluation.get('format')!r}, expected {FORMAT!r})")
    return evaluation


def card_text(evaluation):
    """The recommendation in plain words, one paragraph."""
    recommended = evaluation.get("recommended") or {}
    method = recommended.get("method")
    if method is None:
        return f"No method to recommend: {recommended.get('reason', 'nothing was evaluated')}."
    low, high = recommended["srg_ci95"]
    words = [f"For this model use {method}: its SRG is {recommended['srg']:.2f} "
             f"[{low:.2f}, {high:.2f}]"]
    if recommended.get("next"):
        words.append(f", {recommended['margin']:.2f} above {recommended['next']}'s")
        if recommended.get("margin_clear") is False:
            low, high = recommended["margin_ci95"]
            words.append(f" (not a clear lead on these images: the 95% interval of the "
                         f"difference, [{low:.2f}, {high:.2f}], holds 0)")
    if recommended.get("sanity_checked"):
        words.insert(1, " (it passes the sanity checks)")
    agree = recommended.get("metrics_agree")
    if agree is None:
        words.append(" (the only method evaluated: the controls are its comparison)")
    else:
        words.append("; the three metrics agree" if agree else
                     "; the metrics do not agree on the ranking (see the table)")
    text = "".join(words) + "."
    if recommended.get("beats_random") is False:
        text += " Careful: it is no better than a random map."
    weak = [name for name, entry in evaluation["methods"].items()
            if not entry.get("beats_random")]
    if weak:
        text += f" No better than the random control: {', '.join(weak)}."
    if recommended.get("note"):
        text += f" Note: {recommended['note']}."
    return text
