"""The report's pages for the mask-free audit: the clusters of each class's heatmaps.

Read, never recomputed: who belongs to which cluster and where it sits in the 2-D layout
come from the run's clusters.h5 (written by the audit), the cluster descriptions (flag,
reasons, hot region, ablation numbers) from the audit's "clusters" list, and the maps and
images from the run's store and source. Per class: the layout coloured by cluster; per
cluster, flagged ones first: its reasons, its numbers, its mean heatmap and its most
typical members with their heatmaps over them.
"""

import html
import os

import numpy as np

from sightline.audit.virelay import read_clusters
from sightline.report import figures
from sightline.report.markup import embed_png
from sightline.report.overlay import colorize, grid, overlay, upscale, write_png
from sightline.store.layout import CLUSTERS_FILE, SAMPLE_INDEX, heatmap
from sightline.store.results import open_results
from sightline.errors import UsageError

TILE_SIDE = 96  # least display pixels a side per tile of a member grid


def read_cluster_file(audit):
    """The audit's clusters.h5 (its "clusters_file", else OUT/clusters.h5) as read_clusters
    gives it; ValueError when it is missing."""
    path = audit.get("clusters_file") or os.path.join(audit["out"], CLUSTERS_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"the audit lists clusters but {path!r} does not exist; run "
                         "`sightline audit` again on this run to write it")
    return read_clusters(path)


def ordered(clusters):
    """Flagged clusters first, then by class and id: what needs a look comes first."""
    return sorted(clusters, key=lambda c: (not c["flagged"], c["class"], c["id"]))


def cluster_colours(ids):
    """{cluster id: '#rrggbb'}: the clusters of one class in id order take the palette in
    order, so the layout and the cards agree on each cluster's colour."""
    return {cluster: figures.PALETTE[number % len(figures.PALETTE)]
            for number, cluster in enumerate(sorted(ids))}


def mean_maps(out, method, table):
    """{cluster id: mean stored heatmap [h,w]} over every member in clusters.h5 `table`,
    in one pass over the run (each stored map is scaled to its own maximum)."""
    cluster_of = dict(zip(table["index"].tolist(), table["cluster"].tolist()))
    sums, counts = {}, {}
    with open_results(out) as results:
        for chunk in results.chunks([heatmap(method), SAMPLE_INDEX], rows=1024):
            maps = chunk[heatmap(method)].astype(np.float64)  # [n,h,w]
            for row, index in enumerate(chunk[SAMPLE_INDEX].tolist()):
                cluster = cluster_of.get(index, -1)
                if cluster < 0:
                    continue
                sums[cluster] = sums.get(cluster, 0.0) + maps[row]
                counts[cluster] = counts.get(cluster, 0) + 1
    return {cluster: sums[cluster] / counts[cluster] for cluster in sums}


def _example_items(example):
    """An example as the audit lists it ({"index", "key"}, a key or an index) -> dict."""
    if isinstance(example, dict):
        return {"index": example.get("index"), "key": example.get("key")}
    if isinstance(example, str):
        return {"index": None, "key": example}
    return {"index": int(example), "key": None}


def member_grid(audit, cluster, mean_map, path, load_images):
    """One PNG: the cluster's mean heatmap, then each listed member's heatmap over its
    image (the heatmap alone when the image cannot be read back)."""
    size = tuple(audit["compared_at"])
    zoom = max(1, -(-TILE_SIDE // max(size)))  # at least TILE_SIDE pixels a side
    members = [_example_items(e) for e in cluster.get("examples") or []]
    with open_results(audit["out"]) as results:
        for member in members:
            found = results.sample(index=member["index"]) if member["key"] is None else \
                results.sample(key=member["key"])
            member.update(found)
            member["heatmap"] = results.heatmap(audit["method"], key=member["key"])
    images = load_images(audit, members) if members else []
    top = float(np.max(mean_map)) if mean_map is not None else 0.0
    mean_tile = colorize(_resized(mean_map / top if top > 0 else np.zeros(size), size))
    tiles = [upscale(mean_tile, zoom)]
    for member, image in zip(members, images):
        if image is None:
            tile = colorize(_resized(member["heatmap"], size))
        else:
            tile = overlay(image, member["heatmap"])
        tiles.append(upscale(tile, zoom))
    return write_png(path, grid([tiles])), members


def _resized(heatmap, size):
    import tensorflow as tf
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.shape != tuple(size):
        heatmap = tf.image.resize(heatmap[..., None], size, method="bilinear").numpy()[..., 0]
    return heatmap


def _number(value, digits=3):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _verification_rows(verification):
    """Table rows of the ablation numbers: the hot region and its same-size control."""
    rows = []
    for name in ("hot", "control"):
        numbers = verification.get(name)
        if not numbers:
            rows.append([f"{name} region", "n/a (no same-size box avoids the hot region)",
                         "", "", ""])
            continue
        rows.append([f"{name} region", html.escape(_region_text(numbers["region"])),
                     _number(numbers["mean_drop"]), f"{numbers['changed_share']:.1%}",
                     str(numbers["count"])])
    return rows


def _region_text(region):
    if not region:
        return "n/a"
    y0, y1, x0, x1 = region
    return f"rows {y0:.2f}-{y1:.2f}, columns {x0:.2f}-{x1:.2f} of the image"


def clusters_section(folder, slug, audit, table_of, load_images):
    """The HTML of an audit's clusters; writes its PNGs into `folder`. `table_of(...)`
    is the page's table helper, `load_images(audit, items)` its image reader."""
    clusters = ordered(audit["clusters"])
    table = read_cluster_file(audit)
    if "clusters/mean_heatmap" in table:  # the audit stored them: no pass over the run
        means = dict(zip(table["clusters/id"].tolist(), table["clusters/mean_heatmap"]))
    else:
        means = mean_maps(audit["out"], audit["method"], table)
    flagged = [c for c in clusters if c["flagged"]]
    parts = ["<h3>Groups found without masks</h3>",
             f'<p class="note">Each class\'s heatmaps are clustered by where their evidence '
             f'sits; a cluster is flagged when it is a separate group of a fair share of its '
             f'class whose evidence sits elsewhere than the rest\'s, and (when verified) hiding '
             f'its hot region lowers the score more than hiding a same-size control region. '
             f'{len(flagged)} of {len(clusters)} clusters flagged.</p>']
    rows = []
    for c in clusters:
        verification = c.get("verification") or {}
        hot = verification.get("hot") or {}
        control = verification.get("control") or {}
        rows.append([
            f'<a href="#{slug}-cluster-{c["id"]}">{c["id"]}</a>',
            html.escape(str(c.get("class_name", c["class"]))), str(c["size"]),
            f'{c["share"]:.1%}', _number(c.get("accuracy")), _number(c.get("mean_score")),
            _number(hot.get("mean_drop")), _number(control.get("mean_drop")),
            '<span class="flagged">FLAGGED</span>' if c["flagged"] else
            '<span class="note">downgraded</span>' if c.get("downgraded") else
            '<span class="ok">ok</span>'])
    parts.append(table_of(["cluster", "class", "size", "share", "accuracy", "mean score",
                           "ablation drop (hot)", "ablation drop (control)", "verdict"], rows,
                          text_columns=(1,)))
    for label in sorted({c["class"] for c in clusters}):
        mine = [c for c in clusters if c["class"] == label]
        name = str(mine[0].get("class_name", label))
        colours = cluster_colours([c["id"] for c in mine])
        rows = table["class"] == label
        path = os.path.join(folder, f"{slug}-embedding-{label}.png")
        figures.cluster_embedding(table["embedding"][rows], table["cluster"][rows], colours,
                                  path, title=f"class {name}: each map placed by its spectral "
                                              "coordinates, coloured by cluster",
                                  flagged={c["id"] for c in mine if c["flagged"]})
        parts.append(f"<h4>Class {html.escape(name)}: layout of its maps</h4>"
                     + embed_png(path, f"{name}: the 2-D layout of the maps, one colour per cluster"))
    for c in clusters:
        parts.append(_cluster_card(folder, slug, audit, c, means.get(c["id"]), table_of,
                                   load_images))
    return "\n".join(parts)


def _cluster_card(folder, slug, audit, cluster, mean_map, table_of, load_images):
    name = html.escape(str(cluster.get("class_name", cluster["class"])))
    state = ('<span class="flagged">FLAGGED</span>' if cluster["flagged"] else
             '<span class="note">downgraded by the ablation</span>' if cluster.get("downgraded")
             else '<span class="ok">not flagged</span>')
    parts = [f'<h4 id="{slug}-cluster-{cluster["id"]}" class="cluster">cluster {cluster["id"]} '
             f'of class {name}: {state}</h4>',
             f'<p class="note">{cluster["size"]} maps ({cluster["share"]:.1%} of the class); '
             f'hot region {html.escape(_region_text(cluster.get("hot_region")))}; accuracy '
             f'{_number(cluster.get("accuracy"))}, mean score '
             f'{_number(cluster.get("mean_score"))}.</p>']
    reasons = cluster.get("reasons") or []
    if reasons:
        parts.append('<ul class="reasons">' + "".join(
            f"<li>{html.escape(reason)}</li>" for reason in reasons) + "</ul>")
    verification = cluster.get("verification")
    if verification:
        parts.append(table_of(["ablated", "region", "mean drop of the score",
                               "predictions changed", "images"],
                              _verification_rows(verification), text_columns=(0, 1)))
        parts.append(f'<p class="note">depends on the region: '
                     f'{"yes" if verification.get("depends") else "no"} '
                     f'({html.escape(verification.get("rule", ""))})</p>')
    if mean_map is not None and cluster.get("examples"):
        path = os.path.join(folder, f"{slug}-cluster-{cluster['id']}.png")
        path, members = member_grid(audit, cluster, mean_map, path, load_images)
        keys = ", ".join(str(m["key"]) for m in members)
        parts.append(embed_png(path, f"cluster {cluster['id']}: its mean heatmap, then its "
                                  f"most typical members ({keys})"))
    return "\n".join(parts)
