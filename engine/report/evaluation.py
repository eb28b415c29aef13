"""The evaluation's part of a report (`sightline evaluate OUT --report DIR`, and `audit
--report` when OUT/evaluation.json exists): the recommendation card in plain words, the
methods x metrics table with intervals and the control rows, the mean curves with their
bands, the per-class table, and the images where hiding the hot region changes nothing.

Bands: the mean curve over images +- 1.96 standard errors per step (a normal 95% band;
the table's intervals are the bootstrap's). "Hiding changes nothing": for the
recommended method, the images whose explained-class probability drops least when the
first fifth of the steps (the most relevant cells) is hidden, as a share of the
original probability.

The sanity panel: the mean Spearman correlation and SSIM of each method's and control's
maps with its original maps as the layers are randomised from the top down, its floor
(unrelated maps) dotted, and one image's maps after each step.
"""

import html
import os

import numpy as np

from sightline.evaluate.summary import CONTROLS, card_text
from sightline.report import figures
from sightline.report.markup import (STYLE, embed_png, fmt, not_read, section_anchor, table,
                                     write_page)

EVALUATION_REPORT = "evaluation.html"
UNCHANGED_IMAGES = 8
METRICS = (("srg", "SRG"), ("deletion_auc", "deletion AUC (MoRF)"), ("lerf_auc", "LeRF AUC"),
           ("insertion_auc", "insertion AUC"), ("average_drop", "Average Drop %"),
           ("increase_in_confidence", "Increase in Confidence %"),
           ("average_gain", "Average Gain %"), ("tie_fraction", "tied cells"))


def _interval(entry):
    low, high = entry["srg_ci95"]
    return f"{fmt(entry['srg'])} [{fmt(low)}, {fmt(high)}]"


def _metrics_table(evaluation):
    header = ["map", "kind"] + [label for _, label in METRICS] + ["beats random", "sanity check"]
    rows = []
    for kind, group in (("method", evaluation["methods"]), ("control", evaluation["controls"])):
        for name, entry in group.items():
            cells = [html.escape(name), kind, _interval(entry)]
            cells += [fmt(entry[key], 1 if "%" in label else 3) for key, label in METRICS[1:]]
            cells.append("yes" if entry.get("beats_random") else
                         '<span class="flagged">no</span>')
            sanity = entry.get("sanity")
            cells.append("not run" if sanity is None else "passes" if sanity["passes"] else
                         '<span class="flagged">fails</span>')
            rows.append(cells)
    return table(header, rows, text_columns=(0, 1))


def _class_table(evaluation):
    methods = list(evaluation["methods"]) + list(evaluation["controls"])
    entries = {**evaluation["methods"], **evaluation["controls"]}
    classes = sorted({c for e in entries.values() for c in e["per_class"]},
                     key=lambda c: (len(c), c))
    rows = []
    for label in classes:
        row = [html.escape(label)]
        for name in methods:
            entry = entries[name]["per_class"].get(label)
            row.append(_interval(entry) if entry else "n/a")
        rows.append(row)
    return table(["class (SRG)"] + methods, rows)


def mean_curves(curves, path):
    """One panel per curve (MoRF, LeRF, insertion): the mean probability per step of each
    method and control over the fraction hidden (shown), with its band. `curves`:
    ReportInputs.evaluation_curves."""
    figure = figures._figure(12, 3.4)
    axes = figure.subplots(1, 3, squeeze=False)[0]
    for (group, name), data in curves.items():
        probabilities = data["probabilities"]  # [n,3,S+1]
        fractions = data["fractions"].mean(axis=0)  # [3,S+1]
        mean = probabilities.mean(axis=0)
        band = 1.96 * probabilities.std(axis=0) / np.sqrt(max(1, len(probabilities)))
        style = "--" if group == "controls" else "-"
        for curve, axis in enumerate(axes):
            axis.plot(fractions[curve], mean[curve], style, label=name, linewidth=1.2)
            axis.fill_between(fractions[curve], mean[curve] - band[curve],
                              mean[curve] + band[curve], alpha=0.2)
    for axis, title, xlabel in zip(axes, ("deletion, most relevant first (MoRF)",
                                          "deletion, least relevant first (LeRF)",
                                          "insertion, most relevant first"),
                                   ("fraction hidden", "fraction hidden", "fraction shown")):
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(xlabel, fontsize=8)
        axis.set_ylabel("probability of the explained class", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figures._save(figure, path)


def unchanged_samples(indices, probabilities, count=UNCHANGED_IMAGES):
    """[(sample index, relative drop)] of the `count` images whose probability drops
    least (relative to the original) after the first fifth of the MoRF steps; `indices`
    [n] and `probabilities` [n,3,S+1] are evaluation.h5's rows of one method."""
    step = max(1, (probabilities.shape[2] - 1) // 5)
    original = probabilities[:, 0, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(original > 0, (original - probabilities[:, 0, step]) / original, 0.0)
    order = np.lexsort((indices, drop))[:count]
    return [(int(indices[i]), float(drop[i])) for i in order]


def _unchanged_figure(pictures, method, samples, path):
    """The images with their maps over them; `pictures`: ReportInputs.sample_pictures."""
    items = [{"image": pictures[index][0], "heatmap": pictures[index][1], "mask": None,
              "caption": f"#{index}: -{100 * drop:.0f}% after the top fifth"}
             for index, drop in samples]
    return figures.worst_overlays(items, path, title=f"{method}: hiding its hot region "
                                                     "changes (almost) nothing")


def _sanity_entries(evaluation):
    """[(name, is a control, sanity entry)] of every map the sanity checks ran on."""
    return [(name, group == "controls", entry["sanity"])
            for group in ("methods", "controls") for name, entry in evaluation[group].items()
            if entry.get("sanity") is not None]


def sanity_curves(evaluation, path):
    """Two panels, Spearman and SSIM against randomised depth: one line per method
    (controls dashed) from the original maps (1) through each randomised layer, the floor
    of unrelated maps dotted in the same colour."""
    entries = _sanity_entries(evaluation)
    layers = [step["layer"] for step in entries[0][2]["spearman_by_layer"]]
    positions = np.arange(len(layers) + 1)
    figure = figures._figure(11, 3.6)
    axes = figure.subplots(1, 2, squeeze=False)[0]
    for axis, key, floor_key, label in zip(axes, ("spearman_by_layer", "ssim_by_layer"),
                                           ("spearman", "ssim"),
                                           ("Spearman rank correlation of |map|", "SSIM")):
        for name, control, sanity in entries:
            values = [1.0] + [step["mean"] for step in sanity[key]]
            line, = axis.plot(positions, values, "--" if control else "-", marker="o",
                              markersize=3, linewidth=1.2, label=name)
            axis.axhline(sanity["floor"][floor_key], color=line.get_color(), linestyle=":",
                         linewidth=0.8)
        axis.set_xticks(positions)
        axis.set_xticklabels(["original"] + [f"+ {layer}" for layer in layers], rotation=30,
                             ha="right", fontsize=7)
        axis.set_xlabel("layers randomised, from the top down", fontsize=8)
        axis.set_ylabel(label, fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figures._save(figure, path)


def sanity_strips(sanity, path):
    """One row per method and control: one image's map (|map| scaled to [0, 1]) as
    the original, then after each randomisation step; `sanity`:
    ReportInputs.sanity_arrays."""
    rows = [(name, result.strip) for kind in ("methods", "controls")
            for name, result in sanity[kind].items()]
    columns = len(sanity["layers"]) + 1
    figure = figures._figure(1.3 * columns + 1, 1.3 * len(rows))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    titles = ["original"] + [f"+ {layer}" for layer in sanity["layers"]]
    for row, (name, strip) in enumerate(rows):
        for column in range(columns):
            axis = axes[row][column]
            axis.imshow(strip[column], cmap=figures.CMAP, vmin=0, vmax=1)
            figures._blank(axis)
            if row == 0:
                axis.set_title(titles[column], fontsize=7)
        axes[row][0].set_ylabel(name, fontsize=7)
    figure.tight_layout()
    return figures._save(figure, path)


def _sanity_section(folder, slug, out, evaluation, inputs):
    entries = _sanity_entries(evaluation)
    if not entries:
        return ""
    settings = evaluation["settings"]
    failing = [name for name, control, sanity in entries if not control and not sanity["passes"]]
    verdict = (f"Fail the sanity check: {', '.join(failing)}." if failing else
               "Every method passes the sanity check.")
    # Each map is judged once every layer it depends on is random: a map of the target
    # layer there, a gradient of the input at the first layer (sanity.py's cascade).
    depths = sorted({str(sanity.get("verdict_layer")) for _, _, sanity in entries
                     if sanity.get("verdict_layer") is not None})
    deepest = entries[0][2]["spearman_by_layer"][-1]["layer"] if entries[0][2][
        "spearman_by_layer"] else settings.get("sanity_target_layer")
    judged = (f" Each map is judged after the layer it depends on last is random ("
              + "; ".join(f"{name}: {sanity['verdict_layer']}" for name, _, sanity in entries
                          if sanity.get("verdict_layer") is not None) + ")."
              if len(depths) > 1 else "")
    parts = ["<h3>Sanity checks: do the maps depend on the model?</h3>",
             f'<p class="note">{settings.get("sanity_count")} images; the layers of a copy of '
             f"the model re-initialised one by one from the top down to "
             f"{html.escape(str(deepest))} (target layer "
             f"{html.escape(str(settings.get('sanity_target_layer')))}), each image explained "
             f"again after each step.{html.escape(judged)} A map "
             f"{html.escape(entries[0][2]['rule'])}. {html.escape(verdict)}</p>"]
    curves = sanity_curves(evaluation, os.path.join(folder, f"{slug}-sanity.png"))
    parts.append(embed_png(curves, "correlation with the original maps against randomised "
                                   "depth; dotted: unrelated maps"))
    sanity = inputs.sanity_arrays(out) if inputs is not None else None
    if sanity is not None:
        strips = sanity_strips(sanity, os.path.join(folder, f"{slug}-sanity-strip.png"))
        parts.append(embed_png(strips, "one image's maps as the layers are randomised"))
    elif inputs is None:
        parts.append(not_read("one image's maps as the layers are randomised"))
    return "\n".join(parts)


def evaluation_section(folder, title, out, evaluation, inputs=None):
    """The HTML of one evaluation, its PNGs written into `folder`; the curves and
    pictures of run folder `out` come from `inputs` (a ReportInputs; without it the
    page holds the tables only)."""
    slug = section_anchor("evaluation " + title)
    parts = [f'<h2 id="{slug}">Which method to trust: {html.escape(title)}</h2>',
             f'<p class="verdict ok">{html.escape(card_text(evaluation))}</p>']
    settings = evaluation["settings"]
    parts.append(f'<p class="note">{evaluation["count"]} images; {settings["steps"]} steps, '
                 f'fill {html.escape(str(settings["fill"]))}, grid '
                 f'{"x".join(map(str, settings["grid"]))}, seed {settings["seed"]}. SRG = '
                 "AUC(LeRF) - AUC(MoRF), higher is better; intervals are 95% bootstrap "
                 "intervals. Controls (dashed) know nothing about the model.</p>")
    parts.append(_metrics_table(evaluation))
    names = [("methods", m) for m in evaluation["methods"]] + [("controls", c) for c in CONTROLS]
    curves = inputs.evaluation_curves(out, names) if inputs is not None else None
    if curves is not None:
        picture = mean_curves(curves, os.path.join(folder, f"{slug}-curves.png"))
        parts.append(embed_png(picture, "mean curves per method and control, 95% bands"))
    elif inputs is None:
        parts.append(not_read("the mean curves"))
    parts.append(_sanity_section(folder, slug, out, evaluation, inputs))
    parts.append("<h3>Per class</h3>" + _class_table(evaluation))
    method = (evaluation.get("recommended") or {}).get("method")
    if method and curves is not None:
        samples = unchanged_samples(inputs.evaluation_indices(out),
                                    curves[("methods", method)]["probabilities"])
        pictures = inputs.sample_pictures(out, method, [index for index, _ in samples])
        picture = _unchanged_figure(pictures, method, samples,
                                    os.path.join(folder, f"{slug}-unchanged.png"))
        parts.append("<h3>Where hiding the hot region changes nothing</h3>"
                     + embed_png(picture, f"{method}: the images least moved by hiding their "
                                          "most relevant cells"))
    return "\n".join(parts)


def write_evaluation_report(folder, out, evaluation, title="sightline evaluation", *,
                            inputs=None):
    """evaluation.html (and its PNGs) in `folder`; returns its path."""
    os.makedirs(folder, exist_ok=True)
    body = evaluation_section(folder, os.path.basename(os.path.abspath(out)), out, evaluation,
                              inputs)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>'
            f'<h1>{html.escape(title)}</h1>{body}</body></html>\n')
    return write_page(os.path.join(folder, EVALUATION_REPORT), page)
