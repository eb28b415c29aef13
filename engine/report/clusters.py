"""The report's pages for the mask-free audit: the clusters of each class's heatmaps.

Read, never recomputed, and never read here: who belongs to which cluster and where it
sits in the 2-D layout come from the run's clusters.h5 (written by the audit), the maps
and images from the run's store and source, all through the reader the page is handed
(sightline.audit.report_inputs); the cluster descriptions (flag, reasons, hot region,
ablation numbers) from the audit's "clusters" list. Per class: the layout coloured by cluster; per
cluster, flagged ones first: its reasons, its numbers, its mean heatmap and its most
typical members with their heatmaps over them.
"""

import html
import os

import numpy as np

from sightline.report import figures
from sightline.report.markup import embed_png, not_read, table
from sightline.report.overlay import colorize, grid, overlay, upscale, write_png

TILE_SIDE = 96  # least display pixels a side per tile of a member grid


def ordered(clusters):
    """Flagged clusters first, then by class and id: what needs a look comes first."""
    return sorted(clusters, key=lambda c: (not c["flagged"], c["class"], c["id"]))


def cluster_colours(ids):
    """{cluster id: '#rrggbb'}: the clusters of one class in id order take the palette in
    order, so the layout and the cards agree on each cluster's colour."""
    return {cluster: figures.PALETTE[number % len(figures.PALETTE)]
            for number, cluster in enumerate(sorted(ids))}


def member_grid(audit, members, mean_map, path):
    """One PNG: the cluster's mean heatmap, then each member's heatmap over its image
    (the heatmap alone when the image could not be read back); `members`:
    ReportInputs.cluster_members, maps at the compared size like `mean_map`."""
    size = tuple(audit["compared_at"])
    zoom = max(1, -(-TILE_SIDE // max(size)))  # at least TILE_SIDE pixels a side
    top = float(np.max(mean_map)) if mean_map is not None else 0.0
    mean_tile = colorize(np.asarray(mean_map / top if top > 0 else np.zeros(size), np.float32))
    tiles = [upscale(mean_tile, zoom)]
    for member in members:
        if member["image"] is None:
            tile = colorize(member["heatmap"])
        else:
            tile = overlay(member["image"], member["heatmap"])
        tiles.append(upscale(tile, zoom))
    return write_png(path, grid([tiles]))


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


def clusters_section(folder, slug, audit, inputs):
    """The HTML of an audit's clusters; writes its PNGs into `folder`. `inputs` (a
    ReportInputs, or None: the tables and cards without pictures) reads clusters.h5,
    the mean maps and the members."""
    clusters = ordered(audit["clusters"])
    layout = inputs.cluster_table(audit) if inputs is not None else None
    means = inputs.cluster_means(audit, layout) if inputs is not None else {}
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
    parts.append(table(["cluster", "class", "size", "share", "accuracy", "mean score",
                           "ablation drop (hot)", "ablation drop (control)", "verdict"], rows,
                          text_columns=(1,)))
    for label in sorted({c["class"] for c in clusters}):
        mine = [c for c in clusters if c["class"] == label]
        name = str(mine[0].get("class_name", label))
        colours = cluster_colours([c["id"] for c in mine])
        if layout is None:
            parts.append(f"<h4>Class {html.escape(name)}: layout of its maps</h4>"
                         + not_read("the 2-D layout of the maps"))
            continue
        rows = layout["class"] == label
        path = os.path.join(folder, f"{slug}-embedding-{label}.png")
        figures.cluster_embedding(layout["embedding"][rows], layout["cluster"][rows], colours,
                                  path, title=f"class {name}: each map placed by its spectral "
                                              "coordinates, coloured by cluster",
                                  flagged={c["id"] for c in mine if c["flagged"]})
        parts.append(f"<h4>Class {html.escape(name)}: layout of its maps</h4>"
                     + embed_png(path, f"{name}: the 2-D layout of the maps, one colour per cluster"))
    for c in clusters:
        parts.append(_cluster_card(folder, slug, audit, c, means.get(c["id"]), inputs))
    return "\n".join(parts)


def _cluster_card(folder, slug, audit, cluster, mean_map, inputs):
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
        parts.append(table(["ablated", "region", "mean drop of the score",
                               "predictions changed", "images"],
                              _verification_rows(verification), text_columns=(0, 1)))
        parts.append(f'<p class="note">depends on the region: '
                     f'{"yes" if verification.get("depends") else "no"} '
                     f'({html.escape(verification.get("rule", ""))})</p>')
    if mean_map is not None and cluster.get("examples"):
        path = os.path.join(folder, f"{slug}-cluster-{cluster['id']}.png")
        members = inputs.cluster_members(audit, cluster)
        path = member_grid(audit, members, mean_map, path)
        keys = ", ".join(str(m["key"]) for m in members)
        parts.append(embed_png(path, f"cluster {cluster['id']}: its mean heatmap, then its "
                                  f"most typical members ({keys})"))
    return "\n".join(parts)
