"""The report's pictures, drawn with matplotlib's Agg canvas (no display, no pyplot, no
global backend switch), each written as a PNG. Imported only when a report is drawn."""

import os

import numpy as np

CMAP = "inferno"  # perceptually uniform, lightness rises with the value
OUTLINE = "#00e5ff"  # mask outlines: cyan stands out on inferno and on the scenes
DPI = 100


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    temporary = path + ".tmp.png"
    figure.savefig(temporary, format="png", dpi=DPI, bbox_inches="tight")
    os.replace(temporary, path)
    return path


def _outline(axis, mask, level=0.5, **style):
    mask = np.asarray(mask, np.float64)
    if mask.max() > mask.min():
        axis.contour(mask, levels=[level * mask.max()], colors=style.pop("colors", OUTLINE),
                     linewidths=style.pop("linewidths", 1.0), **style)


def _blank(axis):
    axis.set_xticks([])
    axis.set_yticks([])


def mean_heatmaps(classes, path, title=""):
    """One panel per class: the mean heatmap, the region where objects lie outlined."""
    count = max(1, len(classes))
    figure = _figure(3.0 * count + 0.6, 3.3)
    axes = figure.subplots(1, count, squeeze=False)[0]
    image = None
    top = max([float(np.max(entry["mean_heatmap"])) for entry in classes] + [1e-9])
    for axis, entry in zip(axes, classes):
        mean = np.asarray(entry["mean_heatmap"], np.float64)
        image = axis.imshow(mean, cmap=CMAP, vmin=0.0, vmax=top)  # one scale for all classes
        if entry.get("mean_mask") is not None:
            _outline(axis, entry["mean_mask"], level=0.25)
        text = f"{entry['name']} ({entry['count']} images)"
        if entry.get("lift") is not None:
            text += f"\nlift {entry['lift']:.2f}" + ("  FLAGGED" if entry["flagged"] else
                                                     "  diffuse" if entry.get("status") == "diffuse"
                                                     else "")
        axis.set_title(text, fontsize=9, color="#b00020" if entry["flagged"] else "black")
        _blank(axis)
    if image is not None:
        figure.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02)
    if title:
        figure.suptitle(title, fontsize=10, y=1.06)
    return _save(figure, path)


def share_histograms(classes, threshold, path, title=""):
    """Per class: the distribution of the on-object share, with the share a map blind to
    the object would give it (its area) and the flag line (threshold x area)."""
    count = max(1, len(classes))
    figure = _figure(3.4 * count, 2.8)
    axes = figure.subplots(1, count, squeeze=False)[0]
    for axis, entry in zip(axes, classes):
        counts = np.asarray(entry.get("share_histogram") or [], np.float64)
        low, high = entry.get("share_histogram_range") or (0.0, 1.0)
        if counts.size:
            edges = np.linspace(low, high, counts.size + 1)
            colour = ("#b00020" if entry["flagged"] else "#888888"
                      if entry.get("status") == "diffuse" else "#2e7d32")
            axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colour,
                     alpha=0.8)
            area = entry["area_fraction"]
            axis.axvline(area, color="black", linestyle="--", linewidth=1,
                         label=f"object area {area:.3f}")
            axis.axvline(min(1.0, threshold * area), color="#555555", linestyle=":",
                         linewidth=1.2, label=f"flag line {threshold:g}x area")
            mean = entry["on_object_share"]["mean"] if entry.get("on_object_share") else None
            if mean is not None:
                axis.axvline(mean, color="#1565c0", linewidth=1.5, label=f"mean share {mean:.3f}")
            axis.legend(fontsize=7)
        axis.set_xlim(low, high)
        axis.set_xlabel("share of the heatmap's energy on the object", fontsize=8)
        axis.set_ylabel("images", fontsize=8)
        axis.set_title(f"{entry['name']} ({entry.get('status', '')})", fontsize=9)
        axis.tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def _show_image(axis, image):
    if image is None:
        axis.set_facecolor("#dddddd")
        return
    image = np.asarray(image, np.float64)
    low, high = image.min(), image.max()
    axis.imshow((image - low) / (high - low) if high > low else np.zeros_like(image))


def worst_overlays(items, path, title="", per_row=4):
    """items: dicts with image ([H,W,3] or None), heatmap [H,W] in [0,1], mask [H,W] bool,
    caption. Each item is two panels: the image with the mask outline, and the heatmap
    over it."""
    rows = max(1, -(-len(items) // per_row))
    figure = _figure(per_row * 2 * 1.6, rows * 1.95 + 0.3)
    axes = figure.subplots(rows, per_row * 2, squeeze=False)
    for axis in axes.flat:
        _blank(axis)
        axis.axis("off")
    for i, item in enumerate(items):
        left, right = axes[i // per_row, (i % per_row) * 2], axes[i // per_row, (i % per_row) * 2 + 1]
        for axis in (left, right):
            axis.axis("on")
            _blank(axis)
        _show_image(left, item.get("image"))
        if item.get("image") is not None:
            _show_image(right, item["image"])
            right.imshow(item["heatmap"], cmap=CMAP, alpha=0.6, vmin=0, vmax=1)
        else:
            right.imshow(item["heatmap"], cmap=CMAP, vmin=0, vmax=1)
        if item.get("mask") is not None:
            _outline(left, item["mask"])
            _outline(right, item["mask"])
        left.set_title(item["caption"], fontsize=6.5, loc="left")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def activation_stats(layers, path):
    """Per layer: % dead and % saturated channels (bars), mean activation (line)."""
    names = [layer["layer"] for layer in layers]
    x = np.arange(len(names))
    figure = _figure(max(4.0, 1.1 * len(names) + 2), 3.0)
    axis = figure.subplots()
    dead = [100 * layer["dead_fraction"] for layer in layers]
    saturated = [100 * layer["saturated_fraction"] for layer in layers]
    axis.bar(x - 0.2, dead, width=0.4, color="#455a64", label="dead channels %")
    axis.bar(x + 0.2, saturated, width=0.4, color="#ef6c00", label="saturated channels %")
    axis.set_xticks(x)
    axis.set_xticklabels(names, fontsize=8, rotation=20)
    axis.set_ylabel("% of the layer's channels", fontsize=8)
    axis.set_ylim(0, max(10, max(dead + saturated, default=0) * 1.2))
    other = axis.twinx()
    other.plot(x, [layer["mean_activation"] for layer in layers], "o-", color="#1565c0",
               label="mean activation")
    other.set_ylabel("mean activation", fontsize=8)
    lines = axis.get_legend_handles_labels()
    more = other.get_legend_handles_labels()
    axis.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
    figure.tight_layout()
    return _save(figure, path)


def feature_maps(inputs, keys, maps, summary, path):
    """Rows: images; columns: the input, then the layer's first channels (each scaled to
    its own range; dead channels are marked)."""
    dead, saturated = set(summary["dead"]), set(summary["saturated"])
    rows = len(maps)
    channels = np.asarray(maps[0]).shape[-1]
    figure = _figure(1.0 * (channels + 1), 1.1 * rows + 0.5)
    axes = figure.subplots(rows, channels + 1, squeeze=False)
    for r in range(rows):
        _show_image(axes[r, 0], inputs[r] if r < len(inputs) else None)
        axes[r, 0].set_title(os.path.basename(keys[r]) if r < len(keys) else "", fontsize=6)
        for c in range(channels):
            axis = axes[r, c + 1]
            axis.imshow(np.asarray(maps[r])[..., c], cmap="viridis")
            if r == 0:
                mark = " dead" if c in dead else (" sat." if c in saturated else "")
                axis.set_title(f"ch {c}{mark}", fontsize=6,
                               color="#b00020" if mark else "black")
        for axis in axes[r]:
            _blank(axis)
    figure.suptitle(f"{summary['layer']}: first {channels} of {summary['channels']} channels",
                    fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


# Matplotlib's 'tab10' colours, its grey swapped for a dark blue: distinct hues, and no
# grey, which would read as "not clustered" and which anti-aliased black text also makes.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#393b79", "#bcbd22", "#17becf")


def cluster_embedding(points, cluster, colours, path, title="", flagged=()):
    """Scatter of one class's maps: points float [n,2] (NaN rows, the maps that were not
    clustered, are left out), cluster int [n], colours {cluster id: colour}. Markers are
    drawn without anti-aliasing, so each cluster's pixels carry exactly its colour."""
    points = np.asarray(points, np.float64)
    cluster = np.asarray(cluster)
    shown = np.isfinite(points).all(axis=1) & (cluster >= 0)
    figure = _figure(4.6, 3.6)
    axis = figure.subplots()
    for cluster_id, colour in sorted(colours.items()):
        rows = shown & (cluster == cluster_id)
        if not rows.any():
            continue
        mark = " FLAGGED" if cluster_id in flagged else ""
        axis.scatter(points[rows, 0], points[rows, 1], s=14, color=colour, linewidths=0,
                     antialiased=False, label=f"cluster {cluster_id} ({rows.sum()}){mark}")
    axis.set_xlabel("spectral coordinate 1", fontsize=8)
    axis.set_ylabel("spectral coordinate 2", fontsize=8)
    axis.tick_params(labelsize=7)
    if shown.any():
        axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        axis.set_title(title, fontsize=8)
    return _save(figure, path)
