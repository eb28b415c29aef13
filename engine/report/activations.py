"""The pictures and page of `sightline activations`, drawn from the statistics in memory
(sightline.activations.statistics.activation_statistics), never read back from the JSON."""

import os
import re

from sightline.activations.statistics import write_activations
from sightline.report import figures
from sightline.report.page import write_report

STATS_FILE = "activations-stats.png"


def _file_slug(layer):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", layer).strip("-") or "x"


def draw_activations(out, result):
    """activations-stats.png and featuremaps-<layer>.png into `out`; returns {figure key:
    absolute path}, what result["files"] holds."""
    os.makedirs(out, exist_ok=True)
    files = {"stats": os.path.join(os.path.abspath(out), STATS_FILE)}
    figures.activation_stats(result["layers"], files["stats"])
    samples = result["samples"]
    for summary in result["layers"]:
        name = summary["layer"]
        maps = samples["maps"].get(name) or []
        if not maps:
            continue
        path = os.path.join(os.path.abspath(out), f"featuremaps-{_file_slug(name)}.png")
        figures.feature_maps(samples["inputs"], samples["keys"], maps, summary, path)
        files[f"featuremaps/{name}"] = path
    return files


def write_activations_output(out, result):
    """The figures, activations.json and report.html of one activations result; returns
    the result with its figure paths (as read_activations would give it)."""
    result = {**result, "files": draw_activations(out, result)}
    write_activations(out, result)
    write_report(out, [], activations=[("model", result)], title="sightline activations")
    return result
