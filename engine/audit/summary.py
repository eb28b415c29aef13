"""The audit as data others read: audit.json (arrays to lists, NaN to null), the
run's provenance, and the lines `sightline audit` prints."""

import math

import numpy as np

from sightline.store.files import write_json_atomic
from sightline.store.results import run_source

AUDIT_FILE = "audit.json"


def provenance(manifest):
    run = manifest["run"]
    reopen = run_source(manifest)
    return {
        "model": manifest.get("model"), "model_sha256": run.get("model_sha256"),
        "layer": run.get("layer"), "logits_layer": run.get("logits_layer"),
        "methods": run.get("methods"), "parameters": run.get("parameters"),
        "map_size": run.get("map_size"), "precision": run.get("precision"),
        "target": run.get("target"), "source": run.get("source"),
        # [kind, spec] that open_source takes, or None: what the report reads images by.
        "source_spec": list(reopen) if reopen else None,
        "num_samples": run.get("num_samples"), "image_shape": run.get("image_shape"),
        "preprocess": run.get("preprocess"), "resize": run.get("resize", "stretch"),
        "batch_size": manifest.get("batch_size"),
        "replicas": manifest.get("replicas"), "num_shards": manifest.get("num_shards"),
        "num_skipped": manifest.get("num_skipped"), "software": manifest.get("software"),
    }


def _round(value, digits=5):
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v, digits) for v in value]
    return value


def to_json(audit):
    """The audit as JSON-ready data (arrays to nested lists, NaN to null)."""
    def convert(value):
        if isinstance(value, np.ndarray):
            return _round(value.astype(np.float64).tolist())  # NaN is not JSON: null
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, (np.floating, float)):
            return _round(float(value))
        if isinstance(value, np.integer):
            return int(value)
        return value
    return convert(audit)


def write_audit(audit, path):
    write_json_atomic(path, to_json(audit))
    return path


# Maps this coarse (cells a side) cannot place evidence: one cell is a quarter of the image.
COARSE_SIDE = 4
# A cluster whose hot region covers this much of the image points at no place.
WHOLE_IMAGE = 0.5


def group_entries(predictions, names, top=3):
    """Per class folder (a group of images, not one of the model's classes): its size
    and its most predicted classes [{"class", "name", "count", "share", "mean_score"}]."""
    entries = []
    for group, name in enumerate(predictions.group_names):
        row, size = 1 + group, int(predictions.sizes[1 + group])
        order = np.argsort(-predictions.counts[row], kind="stable")[:top]
        entries.append({"name": name, "count": size, "predicted": [
            {"class": int(c), "name": names.get(int(c), f"class {c}"),
             "count": int(predictions.counts[row, c]),
             "share": float(predictions.counts[row, c] / max(size, 1)),
             "mean_score": float(predictions.scores[row, c] / predictions.counts[row, c])}
            for c in order if predictions.counts[row, c] > 0]})
    return entries


def checks(audit):
    """What the audit could and could not check: [(checked, "plain words")]."""
    found = []
    if audit["masks"] is None:
        found.append((False, "evidence on the object: no masks or boxes (pass --masks or --boxes)"))
    else:
        found.append((True, f"evidence on the object, against {audit['masks']}"))
    clusters = audit.get("clusters")
    if clusters is not None:
        side = min(audit["stored_size"])
        regions = [c["hot_region"] for c in clusters if c.get("hot_region")]
        areas = [(r[1] - r[0]) * (r[3] - r[2]) for r in regions]
        if side <= COARSE_SIDE or not areas or min(areas) >= WHOLE_IMAGE:
            found.append((False, f"groups whose evidence sits elsewhere: the maps are "
                                 f"{'x'.join(map(str, audit['stored_size']))}, every group's hot "
                                 "region covers half the image or more, so no place can be told "
                                 "apart (explain a layer with larger maps, --layer, or use "
                                 "--map-size input with a gradient method)"))
        else:
            found.append((True, f"groups whose evidence sits elsewhere ({len(clusters)} "
                                f"cluster(s) in {len({c['class'] for c in clusters})} explained "
                                "class(es))"))
    labels_are = audit.get("labels_are", "classes")
    if labels_are == "classes":
        found.append((True, "accuracy against the labels"))
    elif labels_are == "groups":
        found.append((False, f"accuracy: the class folders ({', '.join(audit['group_names'])}) "
                             "are groups of images, not the model's classes (--class-names "
                             "says how they map)"))
    else:
        found.append((False, "accuracy: the run has no labels"))
    if "collapsed" in audit:
        found.append((True, "collapsed predictions (most images of a set to one class at high "
                            "confidence)"))
    return found


def collapsed_text(entries):
    """The collapsed sets in one sentence: the whole run's (else the first folder's), and
    the other folders by name."""
    if not entries:
        return None
    first, others = entries[0], [e["set"] for e in entries[1:]]
    where = "the run's" if first["set"] == "all images" else f"folder '{first['set']}''s"
    return (f"{first['count']} of {where} {first['images']} images are predicted as "
            f"{first['class_name']} at a mean score of {first['mean_score']:.2f}"
            + (f" (also in folder(s) {', '.join(others)})" if others else "")
            + ": a preprocessing mistake (check --preprocess) or a shortcut")


def _row_name(name, heading):
    """'class cross', 'predicted as class 3': a name that already says class is not
    repeated."""
    if heading == "class":
        return str(name) if str(name).startswith("class ") else f"class {name}"
    return f"predicted as {name}"


def verdict(audit):
    """(the verdict in plain words, "flagged" | "ok" | "unchecked"): what was found, and,
    when nothing was, what was checked; "ok" only when the evidence's place could be
    checked at all (masks, or maps fine enough to tell groups apart)."""
    findings = []
    if audit["flagged"]:
        findings.append(f"class(es) {', '.join(map(str, audit['flagged']))}: the evidence sits "
                        "mostly off the object")
    groups = [c for c in audit.get("clusters") or [] if c["flagged"]]
    if groups:
        findings.append(f"{len(groups)} group(s) found without masks whose evidence sits "
                        "elsewhere than the rest of their class: " + ", ".join(
                            f"cluster {c['id']} of class {c.get('class_name', c['class'])}"
                            for c in groups))
    if audit.get("collapsed"):
        findings.append(collapsed_text(audit["collapsed"]))
    done = checks(audit)
    unchecked = [text for passed, text in done if not passed]
    if findings:
        return "FLAGGED: " + "; ".join(findings), "flagged"
    place_checked = any(passed for passed, text in done
                        if text.startswith(("evidence on the object", "groups whose")))
    checked = [text.split(" (")[0].split(",")[0] for passed, text in done if passed]
    text = "nothing flagged; checked: " + ", ".join(checked)
    diffuse = [str(c["name"]) for c in audit["classes"] if c.get("status") == "diffuse"]
    empty = [str(c["name"]) for c in audit["classes"] if c.get("status") == "empty"]
    if diffuse:
        text += (f"; except {', '.join(diffuse)}, whose maps are flat (diffuse: no localised "
                 "evidence, the class predicted when the other's evidence is absent)")
    if empty:
        text += f"; except {', '.join(empty)}, whose maps are all zero (no evidence to place)"
    if unchecked:
        text += "; NOT checked: " + "; ".join(unchecked)
    return text, "ok" if place_checked else "unchecked"


def summary_lines(audit):
    lines = [f"audit of {audit['out']} ({audit['method']}, {audit['num_images']} images, "
             f"compared at {audit['compared_at'][0]}x{audit['compared_at'][1]})"]
    if audit.get("labels_are") == "groups":
        lines.append(f"  the class folders ({', '.join(audit['group_names'])}) are groups of "
                     "images, not the model's classes: rows below are by predicted class and no "
                     "accuracy is computed (--class-names says how folders map to classes)")
    for c in audit["classes"]:
        accuracy = "n/a" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
        heading = "predicted" if c.get("grouped_by") == "predicted" else "class"
        line = f"  {_row_name(c['name'], heading)}: {c['count']} images, accuracy {accuracy}"
        if c.get("empty_maps"):
            line += f", {c['empty_maps']} empty map(s) left out"
        if c.get("status") == "empty":
            line += ", every map is zero: no evidence to compare with the object"
        elif "lift" in c:
            line += (f", on-object share {c['on_object_share']['mean']:.3f} vs area "
                     f"{c['area_fraction']:.3f} (lift {c['lift']:.2f}), pointing game "
                     f"{c['pointing_game']:.2f}")
        if c["peak_spread"] is not None and math.isfinite(c["peak_spread"]):
            line += f", peak spread {c['peak_spread']:.2f}"
        for name, summary in c["regions"].items():
            if summary:
                line += f", {name} share {summary['mean']:.3f}"
        if c.get("status") == "diffuse":
            line += f", coverage {c['coverage']['median']:.2f}: DIFFUSE (flat maps, no place)"
        lines.append(line + ("  FLAGGED" if c["flagged"] else ""))
    for group in audit.get("groups") or []:
        predicted = ", ".join(f"{p['name']} {p['count']} (mean score {p['mean_score']:.2f})"
                              for p in group["predicted"])
        lines.append(f"  group {group['name']}: {group['count']} images, predicted as {predicted}")
    for passed, text in checks(audit):
        lines.append(f"  {'checked' if passed else 'NOT checked'}: {text}")
    lines.append("verdict: " + verdict(audit)[0])
    return lines + cluster_lines(audit.get("clusters"))


def cluster_lines(clusters):
    """The mask-free verdict: every flagged cluster with its reasons, in plain words."""
    if clusters is None:
        return []
    flagged = [c for c in clusters if c["flagged"]]
    lines = [f"cluster verdict: FLAGGED cluster {c['id']} of class "
             f"'{c.get('class_name', c['class'])}' ({c['size']} maps): {'; '.join(c['reasons'])}"
             for c in flagged]
    lines += [f"cluster verdict: cluster {c['id']} of class '{c.get('class_name', c['class'])}' "
              f"not flagged after all: {c['reasons'][-1]}" for c in clusters if c.get("downgraded")]
    if not flagged:
        classes = len({c["class"] for c in clusters})
        lines.append(f"cluster verdict: nothing flagged ({len(clusters)} cluster(s) in {classes} "
                     "explained class(es); no group's evidence sits apart from the rest of its "
                     "class)")
    return lines
