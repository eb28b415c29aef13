"""The benchmark's results for people: markdown tables (rows, targets) and a chart."""

import os

import numpy as np

from sightline.bench.suite import find_row
from sightline.bench.zoo import BENCH_METHODS, MODES


def format_table(result):
    lines = [f"Model `{result['model']}`, batch {result['batch_size']}, input "
             f"{'x'.join(map(str, result['input_shape']))}, {result['devices']} device(s), "
             f"ceiling {result['ceiling']:.2f} img/s (compiled inference, faster of graph/XLA); "
             "x ceiling: against that inference timed in alternation with the row",
             "",
             f"CPU: {result.get('cpu_model') or 'unknown'}, {result.get('cpu_count')} core(s), "
             f"bfloat16 units: {result.get('cpu_bf16_units', 'unknown')}",
             "",
             "| method | mode | precision | images/s | start-up s | x ceiling | x eager loop | guard |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    units = result.get("cpu_bf16_units")
    for r in result["rows"]:
        g = r["guard"]
        guard_text = "-" if g is None else f"{'ok' if g['passed'] else 'FAILED'} ({g['value']:g} vs {g['reference']})"
        precision = r["precision"]
        if units and precision == "mixed_bfloat16" and result.get("device_kind") != "GPU":
            precision += f" (CPU bf16 units: {units})"
        lines.append(f"| {r['method']} | {r['mode']} | {precision} | "
                     f"{r['images_per_second']:.2f} | {r['startup_seconds']:.2f} | "
                     f"{_num(r.get('x_ceiling'), 3)} | {_num(r.get('x_eager_loop'), 1)} | {guard_text} |")
    return "\n".join(lines)


def format_targets(result):
    lines = ["| target | measured | threshold | met |", "|---|---:|---|---|"]
    for t in result["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        if t["note"]:
            met += f" ({t['note']})"
        lines.append(f"| {t['target']} | {_num(t['ratio'], 3)} | {t['threshold']} | {met} |")
    return "\n".join(lines)


def _num(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def write_bench_report(results, folder):
    """Markdown tables and a PNG chart (images/s per method and mode) from bench results."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(folder, exist_ok=True)
    if isinstance(results, dict):
        results = [results]
    parts = []
    for result in results:
        parts += [f"## {result['model']}", "", format_table(result), ""]
        if result.get("curves"):
            from sightline.bench.faithfulness import format_curves
            parts += [format_curves(result["curves"]), ""]
        parts += [format_targets(result), ""]
        memory = result.get("memory")
        auto = result.get("precision_auto")
        if auto:
            parts += [f"`--precision auto` ({', '.join(auto['methods'])}): chooses "
                      f"{auto['choice']} ({auto['reason']}); seconds per batch "
                      f"{auto['seconds_per_batch']}, per-map correlation of bfloat16 with "
                      f"float32 {auto['map_correlation']}.", ""]
        for e2e in ([result.get("end_to_end"), result.get("end_to_end_array")]
                    + result.get("end_to_end_compression", [])):
            if e2e:
                parts += [f"End to end from {e2e.get('source', 'png')} "
                          f"(compression {e2e.get('compression', 'auto')}) "
                          f"({','.join(e2e['methods'])}): job "
                          f"{e2e['job_images_per_second']:.2f} img/s, kernel alone "
                          f"{e2e['kernel_images_per_second']:.2f} img/s, ratio "
                          f"{e2e['ratio']:.3f}.", ""]
        if memory:
            parts += [f"Peak memory (VmHWM, fresh process each): {memory['vmhwm_mb']} MB, "
                      f"ratio {memory['ratio']:.3f}.", ""]
    markdown = os.path.join(folder, "bench.md")
    with open(markdown, "w") as handle:
        handle.write("\n".join(parts))
    figure, axes = plt.subplots(len(results), 1, figsize=(10, 4 * len(results)), squeeze=False)
    for axis, result in zip(axes[:, 0], results):
        modes = [m for m in MODES if any(r["mode"] == m for r in result["rows"])]
        methods = ["inference"] + [m for m in BENCH_METHODS if any(r["method"] == m for r in result["rows"])]
        width = 0.8 / max(1, len(modes))
        for k, mode in enumerate(modes):
            values = [(find_row(result["rows"], m, mode) or {}).get("images_per_second", 0)
                      for m in methods]
            axis.bar(np.arange(len(methods)) + k * width, values, width, label=mode)
        axis.axhline(result["ceiling"], color="black", linestyle="--", linewidth=1,
                     label="inference ceiling")
        axis.set_xticks(np.arange(len(methods)) + width * (len(modes) - 1) / 2)
        axis.set_xticklabels(methods, rotation=15)
        axis.set_yscale("log")
        axis.set_ylabel("images/s (log)")
        axis.set_title(f"{result['model']}: batch {result['batch_size']}")
        axis.legend(fontsize=8, ncol=3)
    figure.tight_layout()
    chart = os.path.join(folder, "bench.png")
    figure.savefig(chart, dpi=100)
    plt.close(figure)
    return markdown, chart
