"""The audit as data others read: audit.json (arrays to lists, NaN to null), the
run's provenance, and the lines `sightline audit` prints."""

import math

import numpy as np

from sightline.store.files import write_json_atomic

AUDIT_FILE = "audit.json"


def provenance(manifest):
    run = manifest["run"]
    return {
        "model": manifest.get("model"), "model_sha256": run.get("model_sha256"),
        "layer": run.get("layer"), "logits_layer": run.get("logits_layer"),
        "methods": run.get("methods"), "parameters": run.get("parameters"),
        "map_size": run.get("map_size"), "precision": run.get("precision"),
        "target": run.get("target"), "source": run.get("source"),
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


def summary_lines(audit):
    lines = [f"audit of {audit['out']} ({audit['method']}, {audit['num_images']} images, "
             f"compared at {audit['compared_at'][0]}x{audit['compared_at'][1]})"]
    for c in audit["classes"]:
        accuracy = "n/a" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
        line = f"  class {c['name']}: {c['count']} images, accuracy {accuracy}"
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
    if audit["masks"] is None:
        lines.append("  no masks or boxes given: nothing flagged (pass --masks or --boxes)")
    lines.append("verdict: " + (f"FLAGGED {', '.join(audit['flagged'])}: the evidence sits mostly "
                                "off the object" if audit["flagged"] else "nothing flagged"))
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
