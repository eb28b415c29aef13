"""`sightline audit OUT`: where does the evidence sit? The shortcut audit of a complete run.

Streams the heatmaps of one method through the store's reader, in chunks (memory stays
flat in the maps: at most CHUNK maps at a time plus one running sum per class; what
grows with the dataset is a few float32 scalars per image, for the quantiles), computes
the per-image metrics of sightline.audit.metrics against the masks and regions of
sightline.audit.masks, and sums them up per class (by label when every image has one,
else by predicted class; named by the run's class names, recorded from --class-names,
never by folder names: a class folder is a group of images, sightline.data.labels): the
mean heatmap, the distribution of the on-object share s, mean s and area a, the lift
mean(s) / mean(a), the pointing-game hit rate against its chance level mean(a),
accuracy against the labels, mean entropy and the peak spread. A map that is zero
everywhere is left out of every per-class mean and spread (its area too, so share, hit
and area are averaged over the same images); empty_maps counts them.

Sizes: entropy, coverage and peaks are measured on the maps as stored, mean heatmaps are
summed as stored and resized once to the images' size ("compared_at") for the report,
region shares are exact at the images' size without resizing a map; only the masks' share,
area and pointing game resize each map to the images' size (sightline.audit.metrics).
Without masks no map is ever resized, and every chunk is a handful of array operations.

A class is FLAGGED when its lift L is below `threshold` (default 2.0): the object gets
less than twice the share of evidence a map blind to it would give it, so the evidence
sits mostly off the object. Comparing with the area fraction (rather than asking for
s > 0.5) keeps the rule fair to small objects and to coarse CAM-family maps, which a
7x7 or 8x8 layer cannot fit tightly around a small object.

Except when the class's evidence has no place at all: when its median coverage is at
least `diffuse` (default 0.85) the maps are flat, the class is reported as DIFFUSE and
not flagged (flag it too with flag_diffuse / --flag-diffuse). This is what a two-class
model shows for its "default" class, the one it predicts when it finds no evidence of
the other (a disc detector calls everything without a disc a cross): Grad-CAM of that
class is nearly constant, it points nowhere, and saying it points at the sky would be
wrong. A shortcut is evidence that sits somewhere else; a whole-image cue (a colour
cast) also gives flat maps, which is why --flag-diffuse exists.

Beside them, from the predictions alone: each class folder's predicted classes, and
collapsed predictions (sightline.jobs.predictions: most images of the run or of a folder
predicted as one class at high confidence), which the verdict reports as a finding.

Flags of classes need masks or boxes; without them the per-class part reports the
mask-free statistics and flags nothing. Beside it, with or without masks, the audit
clusters the maps of each explained class and flags groups whose evidence sits somewhere
else than the rest of their class (sightline.audit.shortcuts: "clusters" in audit.json,
OUT/clusters.h5).
"""

import heapq
import math
import os
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from sightline.audit.masks import check_mask_size, missing_masks, open_masks, parse_region, region_bounds
from sightline.audit.metrics import (concentration, lift, object_metrics, peak_mean, peak_spread,
                                     region_shares, region_weights, resize_maps, summarize)
from sightline.audit.shortcuts import ClusterAudit, ShortcutOptions
from sightline.audit.summary import group_entries, provenance
from sightline.errors import UsageError
from sightline.jobs.predictions import PredictionTally
from sightline.store.layout import (PRED_CLASS, PRED_SCORE, PRED_TARGET, RELEVANCE_COLUMNS,
                                    SAMPLE_GROUP, SAMPLE_INDEX, SAMPLE_KEY, SAMPLE_LABEL,
                                    heatmap)
from sightline.store.results import open_results

DEFAULT_THRESHOLD = 2.0
DEFAULT_DIFFUSE = 0.85
DEFAULT_WORST = 8  # per class
CHUNK = 4096  # maps per chunk at most; fewer when they are large (CHUNK_BYTES)
CHUNK_BYTES = 32 * 2**20  # one chunk's float64 maps at the size the metrics run at
HISTOGRAM_BINS = 25
EXIT_FLAGGED = 3


def run_audit(out: Union[str, os.PathLike[str]], *, method: Optional[str] = None,
              masks: Optional[str] = None, boxes: Optional[str] = None,
              regions: Sequence[str] = (), threshold: float = DEFAULT_THRESHOLD,
              diffuse: float = DEFAULT_DIFFUSE, flag_diffuse: bool = False,
              worst: int = DEFAULT_WORST, chunk: int = CHUNK,
              shortcuts: Optional[ShortcutOptions] = None) -> Dict[str, Any]:
    """Audit the complete run in `out` (indexed or not); returns the audit as a dict (what
    audit.json holds) and writes OUT/clusters.h5. shortcuts: a ShortcutOptions (how to
    look for shortcuts without masks; default: the documented rule, no --verify)."""
    with open_results(out) as results:
        method = _choose_method(results, method, out)
        if not (isinstance(threshold, (int, float)) and threshold > 0):
            raise UsageError(f"--threshold must be a number > 0 (a lift); got {threshold!r}")
        if not (isinstance(diffuse, (int, float)) and 0 < diffuse <= 1):
            raise UsageError(f"--diffuse must be a fraction in (0, 1]; got {diffuse!r}")
        cluster_audit = ClusterAudit(out, method, shortcuts)
        size = tuple(int(v) for v in results.attrs["input_size"])
        stored = results.map_shape(method)
        region_masks = _parse_regions(regions, size)
        mask_source = open_masks(masks, boxes, size)
        rows = _chunk_rows(chunk, stored, size if mask_source is not None else stored)
        try:
            names, by_label, predictions = _check_samples(results, mask_source, size, rows)
            cluster_audit.open_replay(results.manifest)
            tally = _Tally(size, {name: region_weights(region, stored)
                                  for name, region in region_masks.items()}, worst)
            relevance = list(RELEVANCE_COLUMNS) if results.relevance else []
            for columns in results.chunks([heatmap(method), SAMPLE_KEY, SAMPLE_LABEL,
                                           PRED_CLASS, PRED_TARGET, SAMPLE_INDEX,
                                           *relevance], rows=rows):
                # float16 -> float64 once: both consumers compute in float64, and numpy
                # widens float16 to float64 faster than to float32.
                maps = columns[heatmap(method)].astype(np.float64)
                tally.add(columns, maps, mask_source, by_label)
                cluster_audit.add(columns, maps,
                                  results.relevance_of(columns) if relevance else None)
        finally:
            if mask_source is not None:
                mask_source.close()
        manifest = results.manifest
        found = cluster_audit.finish(results, manifest, names, rows)
        labels_are, group_names = results.labels_are, results.group_names
    stats = tally.classes(stored)
    policy = {"threshold": threshold, "diffuse": diffuse, "flag_diffuse": flag_diffuse}
    classes = [_class_entry(group, stats[group], names, by_label, region_masks, size,
                            mask_source is not None, policy) for group in sorted(stats)]
    return {
        "format": "sightline-audit/1",
        "out": os.path.abspath(out),
        "method": method,
        "stored_size": list(stored),
        "compared_at": list(size),
        "num_images": tally.total_images,
        "empty_maps": tally.empty_maps,
        "masks": mask_source.description if mask_source is not None else None,
        "mask_args": {"masks": os.path.abspath(masks) if masks else None,
                      "boxes": os.path.abspath(boxes) if boxes else None},
        "regions": {name: [int(v) for v in region_bounds(m)] for name, m in region_masks.items()},
        **policy,
        "rule": "a class is flagged when mean on-object share / mean object area fraction "
                "(the lift) is below the threshold and its maps are not flat (median "
                "coverage below the diffuse limit" + (", or even when they are)" if flag_diffuse
                                                      else ")"),
        "classes": classes,
        "flagged": [c["name"] for c in classes if c["flagged"]],
        "worst": tally.ranked(names),
        "clusters": found,
        "flagged_clusters": [c["id"] for c in found if c["flagged"]],
        "clusters_file": os.path.abspath(cluster_audit.path),
        "cluster_rule": cluster_audit.rule(),
        "provenance": provenance(manifest),
        "labels_are": labels_are,
        "groups": group_entries(predictions, names),
        "collapsed": [{**entry, "class_name": names.get(entry["class"], f"class {entry['class']}")}
                      for entry in predictions.collapsed()],
        "num_classes": predictions.num_classes,
        "group_names": list(group_names or ()),
    }


def _chunk_rows(chunk, stored, measured):
    """Maps per chunk: `chunk` at most, and no more than CHUNK_BYTES of float64 maps at
    the size they are measured at (the stored size, or the images' with masks)."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise UsageError(f"chunk must be a whole number of maps >= 1; received {chunk!r}")
    pixels = max(int(np.prod(stored)), int(np.prod(measured)))
    return max(1, min(chunk, CHUNK_BYTES // (8 * pixels)))


def _choose_method(results, method, out):
    methods = list(results.methods)
    if method is None:
        method = "gradcam" if "gradcam" in methods else methods[0]
    if method not in methods:
        raise UsageError(f"method {method!r} was not run in {out!r}; it has {', '.join(methods)} "
                         "(pass --method)")
    return method


def _parse_regions(regions, size):
    region_masks = {}
    for text in regions:
        name, region = parse_region(text, size)
        if name in region_masks:
            raise UsageError(f"region name {name!r} is given twice ({text!r}); give each "
                             "--regions its own name")
        region_masks[name] = region
    return region_masks


def _check_samples(results, mask_source, size, chunk):
    """A first pass over the samples' keys, labels and predictions: masks that do not line
    up stop the audit before any work, with one line that names them.

    Returns (the model's class names by index, whether to group by label, the
    PredictionTally of every image and of each class folder)."""
    missing, num_samples, num_missing, by_label, largest = [], 0, 0, True, -1
    has_group = results.has(SAMPLE_GROUP)
    # The keys only matter to find each image's mask: without masks they are not read.
    columns_read = ([SAMPLE_KEY] if mask_source is not None else []) + [
        SAMPLE_LABEL, PRED_CLASS, PRED_SCORE, PRED_TARGET]
    parts = []
    for columns in results.chunks(columns_read + ([SAMPLE_GROUP] if has_group else []),
                                  rows=max(chunk, 1024)):
        labels = columns[SAMPLE_LABEL]
        if mask_source is not None:
            keys = [k.decode("utf-8") for k in columns[SAMPLE_KEY]]
            if keys and num_samples == 0:
                check_mask_size(mask_source, keys[0], size)
        num_samples += len(labels)
        by_label = by_label and bool((labels >= 0).all())
        largest = max(largest, *(int(columns[n].max(initial=-1)) for n in
                                 (SAMPLE_LABEL, PRED_CLASS, PRED_TARGET)))
        # Predictions are small vectors: kept for the tally, made once the classes are known.
        parts.append({n: columns[n] for n in (PRED_CLASS, PRED_SCORE, SAMPLE_LABEL)}
                     | {SAMPLE_GROUP: columns[SAMPLE_GROUP] if has_group else None})
        if mask_source is not None:
            absent = missing_masks(mask_source, keys)
            missing.extend(absent[:5 - len(missing)] if len(missing) < 5 else [])
            num_missing += len(absent)
    if mask_source is not None and missing:
        raise UsageError(f"{mask_source.description} has no mask for {num_missing} of "
                         f"{num_samples} sample(s): {', '.join(missing)}"
                         f"{' ...' if num_missing > len(missing) else ''}")
    num_classes = results.num_classes or largest + 1
    names = {c: results.class_name(c) for c in range(max(num_classes, largest + 1))}
    predictions = PredictionTally(num_classes, results.group_names if has_group else None)
    for part in parts:
        predictions.add(part[PRED_CLASS], part[PRED_SCORE], labels=part[SAMPLE_LABEL],
                        groups=part[SAMPLE_GROUP])
    return names, by_label and num_samples > 0, predictions


class _ClassStats:
    """One class's numbers once the stream is over: counts, sums and per-image columns."""

    def __init__(self, count, map_sum, mask_sum, labelled, correct, columns):
        self.count, self.map_sum, self.mask_sum = count, map_sum, mask_sum
        self.labelled, self.correct = labelled, correct
        self._columns = columns  # metric -> float32 [count] in source order

    def column(self, name):
        return self._columns.get(name, np.zeros(0, np.float32))


class _Tally:
    """What the stream keeps: per-class running sums (the maps' at their stored size,
    the masks' at the images'), per image a few float32 metrics and its class, per-class
    heaps of the worst images (at most `worst` each), and counts. Every chunk is one
    batch of array operations, whatever the number of classes in it."""

    def __init__(self, size, region_weights, worst):
        self.size, self.region_weights, self.worst = size, region_weights, worst
        self.heaps, self.sums = {}, {}  # class -> [count, map_sum, mask_sum, labelled, correct]
        self.groups, self.values = [], {}  # per chunk: int64 [n]; metric -> float32 [n]
        self.counter = self.total_images = self.empty_maps = 0

    def add(self, columns, maps, mask_source, by_label):
        """One chunk: maps float64 [n,h,w] as stored."""
        labels, predictions = columns[SAMPLE_LABEL], columns[PRED_CLASS]
        metrics = concentration(maps)
        keys = object_masks = None
        if mask_source is not None:
            keys = [k.decode("utf-8") for k in columns[SAMPLE_KEY]]
            object_masks = mask_source.read(keys)
            metrics.update(object_metrics(resize_maps(np.maximum(maps, 0.0), self.size),
                                          object_masks))
        for name, weights in self.region_weights.items():
            metrics[f"region/{name}"] = region_shares(np.maximum(maps, 0.0), weights)
        groups = np.asarray(labels if by_label else predictions, np.int64)
        self.total_images += len(groups)
        self.empty_maps += int((metrics["total"] <= 0).sum())
        self.groups.append(groups)
        for name, values in metrics.items():
            if name != "total":
                self.values.setdefault(name, []).append(values.astype(np.float32))
        self._sum(groups, maps, object_masks, labels, predictions)
        if object_masks is not None:
            self._rank(metrics, groups, keys, columns[SAMPLE_INDEX], labels, predictions)

    def _sum(self, groups, maps, object_masks, labels, predictions):
        # The chunk sorted by class: each class's rows are one slice, summed by reduceat.
        order = np.argsort(groups, kind="stable")
        present, starts = np.unique(groups[order], return_index=True)
        count = len(groups)
        ends = np.append(starts[1:], count)
        map_sums = np.add.reduceat(maps.reshape(count, -1)[order], starts, axis=0)
        mask_sums = (np.add.reduceat(object_masks.reshape(count, -1)[order].astype(np.float64),
                                     starts, axis=0) if object_masks is not None else None)
        known = (labels >= 0)[order]
        correct = (known & (labels == predictions)[order])
        labelled = np.add.reduceat(known.astype(np.int64), starts)
        right = np.add.reduceat(correct.astype(np.int64), starts)
        for i, group in enumerate(present.tolist()):
            entry = self.sums.setdefault(group, [0, 0.0, 0.0, 0, 0])
            entry[0] += int(ends[i] - starts[i])
            entry[1] = entry[1] + map_sums[i]
            if mask_sums is not None:
                entry[2] = entry[2] + mask_sums[i]
            entry[3] += int(labelled[i])
            entry[4] += int(right[i])

    def classes(self, stored):
        """{class: _ClassStats}, mean maps and masks as [h,w] / [H,W] float64 sums."""
        groups = np.concatenate(self.groups) if self.groups else np.zeros(0, np.int64)
        order = np.argsort(groups, kind="stable")  # source order within each class
        present, starts = np.unique(groups[order], return_index=True)
        ends = np.append(starts[1:], len(groups))
        values = {name: np.concatenate(parts)[order] for name, parts in self.values.items()}
        stats = {}
        for group, start, end in zip(present.tolist(), starts, ends):
            count, map_sum, mask_sum, labelled, correct = self.sums[group]
            stats[group] = _ClassStats(
                count, _as_shape(map_sum, stored), _as_shape(mask_sum, self.size), labelled,
                correct, {name: part[start:end] for name, part in values.items()})
        return stats

    def _rank(self, metrics, groups, keys, indices, labels, predictions):
        # Worst first, per class: the smallest lift (share / area), then pointing-game
        # misses before hits, then source order.
        for i in range(len(keys)):
            share = metrics["share"][i]
            if not np.isfinite(share):
                continue
            badness = (-(share / max(metrics["area"][i], 1e-12)),
                       int(not metrics["hit"][i]), -self.counter)
            heap = self.heaps.setdefault(int(groups[i]), [])
            item = (badness, {
                "key": keys[i], "index": int(indices[i]),
                "label": int(labels[i]), "predicted": int(predictions[i]),
                "share": float(share), "area": float(metrics["area"][i]),
                "hit": bool(metrics["hit"][i])})
            self.counter += 1
            if len(heap) < self.worst:
                heapq.heappush(heap, item)
            elif badness > heap[0][0]:
                heapq.heapreplace(heap, item)

    def ranked(self, names):
        ranked = []
        for group in sorted(self.heaps):
            for badness, item in sorted(self.heaps[group], key=lambda t: t[0], reverse=True):
                item["class_name"] = names.get(item["label"], f"class {item['label']}")
                item["predicted_name"] = names.get(item["predicted"], f"class {item['predicted']}")
                item["group"] = group
                ranked.append(item)
        return ranked


def _as_shape(total, shape):
    """A running sum (0.0 until something was added) as float64 [shape]."""
    return np.zeros(shape) if np.ndim(total) == 0 else np.reshape(total, shape)


def _class_entry(group, s, names, by_label, region_masks, size, with_masks, policy):
    entry = {
        "class": group,
        "name": names.get(group, f"class {group}"),
        "grouped_by": "label" if by_label else "predicted",
        "count": s.count,
        "accuracy": (s.correct / s.labelled) if s.labelled else None,
        # Summed as stored, resized once: resizing is linear, so this is the mean of the
        # resized maps, at the images' size for the report's pictures.
        "mean_heatmap": resize_maps((s.map_sum / max(s.count, 1))[None], size)[0].astype(
            np.float32),
        "entropy": summarize(s.column("entropy")),
        "coverage": summarize(s.column("coverage")),
        "peak_spread": peak_spread(s.column("peak_y"), s.column("peak_x")),
        "peak_mean": peak_mean(s.column("peak_y"), s.column("peak_x")),
        "empty_maps": int(np.isnan(s.column("peak_y")).sum()),
        "regions": {name: summarize(s.column(f"region/{name}")) for name in region_masks},
    }
    if not with_masks:
        entry.update(status="no masks", flagged=False,
                     reason="no masks or boxes: nothing to compare the evidence with")
        return entry
    shares, areas, hits = s.column("share"), s.column("area"), s.column("hit")
    # An empty map has no share and no peak; leaving its area in would compare the
    # mean share with the mean area of other images. Share, hit and area are all
    # averaged over the maps that hold some evidence.
    scored = np.isfinite(shares)
    if scored.any():
        mean_share = float(shares[scored].mean())
        mean_area = float(areas[scored].mean())
        pointing = float(hits[scored].mean())
    else:
        mean_share = mean_area = pointing = float("nan")
    entry.update({
        "mean_mask": (s.mask_sum / max(s.count, 1)).astype(np.float32),
        "on_object_share": summarize(shares),
        "area_fraction": mean_area,
        "lift": lift(mean_share, mean_area),
        "pointing_game": pointing,
        "pointing_chance": mean_area,
    })
    if not scored.any():
        entry.update(share_histogram=[], share_histogram_range=[0.0, 1.0], status="empty",
                     flagged=False, reason="every map of this class is zero: there is no "
                                           "evidence to compare with the object")
        return entry
    _share_histogram(entry, shares[scored], mean_area, policy["threshold"])
    _flag(entry, mean_share, mean_area, policy)
    return entry


def _share_histogram(entry, shares, mean_area, threshold):
    # Shares of small objects crowd near 0: bin over [0, top] (every share, the flag line
    # and a little room), in steps of 0.05.
    shares = shares.astype(np.float64)
    top = max(0.05, 1.5 * threshold * mean_area, float(shares.max()))
    top = min(1.0, math.ceil(top * 20 - 1e-9) / 20)
    entry["share_histogram"] = np.histogram(shares, bins=HISTOGRAM_BINS,
                                            range=(0.0, top))[0].tolist()
    entry["share_histogram_range"] = [0.0, top]


def _flag(entry, mean_share, mean_area, policy):
    """The flag policy of the module docstring: off-object unless the maps are flat."""
    threshold, diffuse = policy["threshold"], policy["diffuse"]
    coverage = (entry["coverage"] or {}).get("median", 1.0)
    off = not (entry["lift"] >= threshold)
    if not off:
        entry["status"] = "on-object"
    elif coverage >= diffuse:
        entry["status"] = "diffuse"
    else:
        entry["status"] = "off-object"
    entry["flagged"] = entry["status"] == "off-object" or (
        policy["flag_diffuse"] and entry["status"] == "diffuse")
    entry["reason"] = (
        f"the object ({mean_area:.1%} of the image) gets {mean_share:.1%} of the "
        f"evidence: {entry['lift']:.2f}x its area share, "
        + ("below" if off else "at or above") + f" the threshold {threshold:g}x")
    if entry["status"] == "diffuse":
        entry["reason"] += (f"; but the maps are flat (median coverage {coverage:.2f} "
                            f">= {diffuse:g}): no localised evidence, typically the class "
                            "a model predicts when it sees no evidence of the others")
