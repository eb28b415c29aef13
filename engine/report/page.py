"""report.html: one self-contained page (every picture embedded as a base64 data URI, no
script, no network) that opens offline, with the same pictures also written as PNGs
beside it.

For every audit: the verdict, a summary table per class, the per-class mean heatmaps,
the histograms of the on-object share, the worst images as overlays (image with the
object outlined, heatmap over it), the groups the mask-free audit found (when the audit
has "clusters": report/clusters.py) and the run's provenance from its manifest. For every
activations result (`sightline activations`): the per-layer table, the statistics plot
and the feature-map grids.
"""

import html
import os

import numpy as np

from sightline.audit.summary import checks, verdict
from sightline.report import figures
from sightline.report.evaluation import evaluation_section
from sightline.report.markup import (STYLE, embed_png, fmt, not_read, section_anchor, table,
                                     write_page)

REPORT_FILE = "report.html"

# ----------------------------------------------------------------------------- worst images


def _worst_items(audit, inputs):
    """The worst images as figures.worst_overlays draws them: each map scaled to its own
    maximum and captioned."""
    out = []
    for rank, read in enumerate(inputs.worst_items(audit), 1):
        item, heatmap = read["item"], read["heatmap"]
        top = heatmap.max()
        out.append({
            "image": read["image"], "mask": read["mask"],
            "heatmap": heatmap / top if top > 0 else heatmap,
            "caption": f"#{rank} {item['key']}\nlabel {item['class_name']}, pred "
                       f"{item.get('predicted_name', item['predicted'])}\non object {item['share']:.1%} (area "
                       f"{item['area']:.1%}){'' if item['hit'] else ', peak off'}",
        })
    return out


# ----------------------------------------------------------------------------- sections


def _verdict(audit):
    """(the verdict line of one audit, its CSS class): sightline.audit.summary's words."""
    return verdict(audit)


def _groups_table(audit):
    """The class folders, which are groups of images unless --class-names mapped them."""
    rows = [[html.escape(g["name"]), str(g["count"]),
             html.escape(", ".join(f"{p['name']} {p['count']} ({p['share']:.0%}, mean score "
                                   f"{p['mean_score']:.2f})" for p in g["predicted"]))]
            for g in audit.get("groups") or []]
    if not rows:
        return ""
    note = ("the folders are groups of images, not the model's classes (--class-names says how "
            "they map)" if audit.get("labels_are") == "groups" else "the folders' labels")
    return (f"<h3>Class folders</h3><p class=\"note\">{html.escape(note)}.</p>"
            + table(["group", "images", "predicted as (most often)"], rows, text_columns=(0, 2)))


def _checked_list(audit):
    items = "".join(f'<li>{"checked" if passed else "<b>not checked</b>"}: {html.escape(text)}</li>'
                    for passed, text in checks(audit))
    return f'<ul class="reasons">{items}</ul>'


def _audit_section(folder, title, audit, inputs):
    slug = section_anchor(title)
    parts = [f'<h2 id="{slug}">{html.escape(title)}</h2>']
    verdict_text, css = _verdict(audit)
    parts.append(f'<p class="verdict {css}">{html.escape(verdict_text)}</p>' + _checked_list(audit))
    parts.append(f'<p class="note">method <code>{html.escape(audit["method"])}</code>, '
                 f'{audit["num_images"]} images, maps stored at '
                 f'{"x".join(map(str, audit["stored_size"]))} (entropy, coverage and '
                 f'peaks measured there) and compared at '
                 f'{"x".join(map(str, audit["compared_at"]))} (bilinear); '
                 f'masks: {html.escape(str(audit["masks"]))}. Rule: '
                 f'{html.escape(audit["rule"])} (threshold {audit["threshold"]:g}, diffuse limit {audit["diffuse"]:g}). A map blind to the '
                 'object puts its area fraction on it: lift 1.</p>')
    classes = audit["classes"]
    regions = list(audit.get("regions") or {})
    by_prediction = any(c.get("grouped_by") == "predicted" for c in classes)
    header = ["predicted class" if by_prediction else "class", "images", "accuracy"]
    with_masks = audit["masks"] is not None
    if with_masks:
        header += ["on-object share (mean)", "median", "object area", "lift",
                   "pointing game", "chance"]
    header += ["entropy", "coverage", "peak spread"] + [f"{r} share" for r in regions] + ["verdict"]
    rows = []
    for c in classes:
        row = [html.escape(str(c["name"])), str(c["count"]), fmt(c["accuracy"])]
        if with_masks:
            share = c.get("on_object_share") or {}
            row += [fmt(share.get("mean")), fmt(share.get("median")), fmt(c["area_fraction"]),
                    fmt(c["lift"], 2), fmt(c["pointing_game"]), fmt(c["pointing_chance"])]
        row += [fmt((c.get("entropy") or {}).get("mean")),
                fmt((c.get("coverage") or {}).get("median")), fmt(c["peak_spread"])]
        row += [fmt((c["regions"].get(r) or {}).get("mean")) for r in regions]
        row.append('<span class="flagged">FLAGGED</span>' if c["flagged"]
                   else '<span class="note">diffuse</span>' if c.get("status") == "diffuse"
                   else '<span class="note">empty maps</span>' if c.get("status") == "empty"
                   else '<span class="ok">ok</span>' if with_masks else "n/a")
        rows.append(row)
    parts.append(table(header, rows))
    parts.append(_groups_table(audit))
    parts.append('<p class="note">Entropy: 1 = evidence spread evenly, 0 = on one pixel. '
                 'Coverage (median): the fraction of the image the evidence effectively spreads '
                 'over; a class at or above the diffuse limit has flat maps that point nowhere '
                 '(the class a model predicts when it finds no evidence of the others) and is '
                 'reported as diffuse, not flagged. Peak '
                 'spread: RMS distance of the maps\' peaks from their mean place, in image sides '
                 '(0.41 when peaks fall anywhere; a low value is a cue that stays put).</p>')

    path = os.path.join(folder, f"{slug}-mean-heatmaps.png")
    figures.mean_heatmaps(classes, path, title="mean heatmap per class (outline: where the "
                                               "objects lie)" if with_masks else "mean heatmap per class")
    parts.append("<h3>Mean heatmaps</h3>" + embed_png(path, f"{title}: per-class mean heatmaps"))
    if with_masks:
        path = os.path.join(folder, f"{slug}-share-histograms.png")
        figures.share_histograms(classes, audit["threshold"], path)
        parts.append("<h3>On-object share</h3>"
                     + embed_png(path, f"{title}: histograms of the on-object share per class"))
        items = _worst_items(audit, inputs) if inputs is not None else []
        if inputs is None and audit.get("worst"):
            parts.append(not_read("the images with the least evidence on the object"))
        if items:
            path = os.path.join(folder, f"{slug}-worst.png")
            figures.worst_overlays(items, path)
            parts.append(f"<h3>Per class, the {len(items) // max(1, len(classes))} images with the least evidence on the object"
                         "</h3>" + embed_png(path, f"{title}: worst images (left: image, object "
                                                "outlined; right: heatmap over it)"))
    if audit.get("clusters"):
        # report.clusters draws with TensorFlow (report.overlay): imported only when drawn,
        # so that the command line starts without it.
        from sightline.report.clusters import clusters_section
        parts.append(clusters_section(folder, slug, audit, inputs))
    provenance = audit.get("provenance") or {}
    rows = [[html.escape(k), f"<code>{html.escape(str(v))}</code>"]
            for k, v in provenance.items() if v is not None]
    parts.append("<h3>Provenance (from the run's manifest)</h3>" + table(
        ["field", "value"], rows, text_columns=(0, 1)))
    parts.append(f'<p class="note">run folder <code>{html.escape(audit["out"])}</code></p>')
    return "\n".join(parts)


def _activations_section(folder, title, result):
    import shutil
    slug = section_anchor("activations " + title)
    parts = [f'<h2 id="{slug}">Activations: {html.escape(title)}</h2>',
             f'<p class="note">{result["images"]} images of {html.escape(result["data"])}, model '
             f'<code>{html.escape(str(result["model"]))}</code>. Dead: never active anywhere. '
             f'Saturated: {html.escape(result["saturated_rule"])}.</p>']
    rows = [[html.escape(layer["layer"]), html.escape(str(layer["activation"])),
             str(layer["channels"]), f'{len(layer["dead"])} {layer["dead"][:12]}',
             f'{len(layer["saturated"])} {layer["saturated"][:12]}',
             fmt(layer["mean_activation"], 4)] for layer in result["layers"]]
    parts.append(table(["layer", "activation", "channels", "dead", "saturated",
                         "mean activation"], rows, text_columns=(0, 1, 3, 4)))

    def local(path, name):
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(folder):
            return path  # the activations' own report: the PNGs are already beside it
        target = os.path.join(folder, f"{slug}-{name}")
        shutil.copyfile(path, target)
        return target

    files = result.get("files") or {}
    if "stats" in files:
        parts.append(embed_png(local(files["stats"], "stats.png"),
                            f"{title}: dead and saturated channels, mean activation per layer"))
    for key, path in files.items():
        if key.startswith("featuremaps/"):
            layer = key.split("/", 1)[1]
            parts.append(embed_png(local(path, f"featuremaps-{section_anchor(layer)}.png"),
                                f"{title}: feature maps of {layer} for the first images"))
    return "\n".join(parts)


def write_report(folder, audits, *, activations=None, title="sightline audit", intro=None,
                 evaluations=None, inputs=None):
    """Write report.html (and its PNGs) into `folder`.

    audits: [(section title, audit dict from sightline.audit.audit.run_audit)]
    activations: [(section title, dict from sightline.activations.statistics.read_activations)] or None
    intro: optional HTML put under the title (the demo's summary).
    evaluations: [(section title, run folder, dict from sightline.evaluate.run.evaluate_run)]
    inputs: the reader of what the dicts do not hold (sightline.evaluate.report_inputs.
        ReportInputs: images, masks, stored maps, clusters.h5, evaluation.h5); the
        report opens no file of the run itself. Without it, the pictures read from the
        run are left out and a note says so (an activations report needs none).
    Returns the report's path.
    """
    os.makedirs(folder, exist_ok=True)
    sections = [_audit_section(folder, t, a, inputs) for t, a in audits]
    if evaluations:
        sections += [evaluation_section(folder, t, out, e, inputs) for t, out, e in evaluations]
    sections += [_activations_section(folder, t, r) for t, r in (activations or [])]
    toc = "".join(f'<li><a href="#{section_anchor(t)}">{html.escape(t)}</a></li>' for t, _ in audits)
    toc += "".join(f'<li><a href="#{section_anchor("activations " + t)}">Activations: '
                   f'{html.escape(t)}</a></li>' for t, _ in (activations or []))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>'
            f'<h1>{html.escape(title)}</h1>{intro or ""}<ul>{toc}</ul>'
            + "\n".join(sections) + "</body></html>\n")
    return write_page(os.path.join(folder, REPORT_FILE), page)
