"""The audit's mask-free part: shortcut discovery by clustering the heatmaps of each
explained class (sightline.audit.clusters), streamed through the store's reader twice.

Pass 1 rides along the audit's own stream (ClusterAudit.add per chunk: the per-class
sample). Pass 2 (ClusterAudit.finish) reads the run again: every map gets its cluster
and layout position, the per-cluster statistics add up, clusters.h5 and the optional
ViRelAy export are written a chunk at a time. Then, with --verify, every flagged cluster
is checked by ablation on the run's own model and images (sightline.audit.verify).

Maps are grouped by explained class (`pred/target`) and clustered as stored (their
native size, scaled to [0, 1] per map): hot regions are fractions of the side, so the
size does not matter. Memory: the per-class samples, one chunk of maps, and per sample
its index and cluster (12 bytes) to find a flagged cluster's members for --verify.
"""

import contextlib
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from sightline.audit.clusters import (DEFAULT_RULE, SAMPLE_SIZE, ClassSample, ClusterRule,
                                      ClusterStatistics, add_rows, fit_clusters, hot_coverage,
                                      hot_region, one_thread, sample_priority)
from sightline.audit.concepts import (ABLATION_COVER, describe_concepts, distinguishing_channels,
                                      embed_relevance, evidence_of, fit_concept_model)
from sightline.audit.replay import run_resize
from sightline.audit.verify import (BATCH_SIZE, MIN_DROP, MIN_RATIO, VERIFY_MEMBERS,
                                    apply_verification, depends, feature_drops,
                                    features_depend, log_odds, own_regions, own_spot_drops,
                                    verify_cluster)
from sightline.audit.virelay import ClustersWriter, VirelayExport, resize_cells
from sightline.store.layout import (CLUSTERS_FILE, PRED_CLASS, PRED_SCORE, PRED_TARGET,
                                    RELEVANCE_COLUMNS, SAMPLE_INDEX, SAMPLE_KEY, SAMPLE_LABEL,
                                    heatmap)
from sightline.errors import UsageError

VERIFY_THRESHOLDS = {"min_drop": MIN_DROP, "min_ratio": MIN_RATIO}
# A what-view group that shares at least this much of its members with a flagged
# where-view cluster is that cluster, found in both views: reported once.
SAME_GROUP = 0.5


@dataclasses.dataclass(frozen=True)
class ShortcutOptions:
    """How the audit looks for shortcuts without masks (the CLI's cluster flags).

    cluster_count: clusters per explained class (None: the eigengap chooses); thresholds /
    verify_thresholds: {name: value} overrides of ClusterRule / VERIFY_THRESHOLDS (None
    values keep the default); verify: check flagged clusters by ablation on the run's
    model (unsafe: load it without Keras safe mode, for --verify and for the export, whose
    class probabilities come from the model); export_virelay: a folder for the
    ViRelAy project; sample_size: maps per class the clusters are fitted on;
    clusters_file: where clusters.h5 goes (default OUT/clusters.h5); batch_size: images
    per call of the model in --verify."""

    cluster_count: Optional[int] = None
    thresholds: dict = dataclasses.field(default_factory=dict)
    verify: bool = False
    verify_thresholds: dict = dataclasses.field(default_factory=dict)
    export_virelay: Optional[str] = None
    unsafe: bool = False
    sample_size: int = SAMPLE_SIZE
    clusters_file: Optional[str] = None
    batch_size: int = BATCH_SIZE
    seed: int = 0

    def checked(self):
        """(thresholds, verify thresholds) with the defaults filled in; a ValueError with
        one line for anything out of range."""
        thresholds = _check_thresholds(self.thresholds, DEFAULT_RULE.as_dict(),
                                       "cluster threshold")
        verify_thresholds = _check_thresholds(self.verify_thresholds, VERIFY_THRESHOLDS,
                                              "verify threshold")
        if self.cluster_count is not None and not _whole(self.cluster_count, 1):
            raise UsageError(f"--clusters must be a whole number of clusters >= 1 per class; "
                             f"received {self.cluster_count!r} (leave it out to let the eigengap "
                             "choose)")
        if not _whole(self.sample_size, 2):
            raise UsageError(f"--cluster-sample-size must be a whole number of maps >= 2 per "
                             f"class; received {self.sample_size!r}")
        if not _whole(self.batch_size, 1):
            raise UsageError(f"the verify batch size must be a whole number >= 1; received "
                             f"{self.batch_size!r}")
        if self.unsafe and not (self.verify or self.export_virelay):
            raise UsageError("--unsafe only matters for --verify and --export-virelay (they "
                             "load the model); add one of them or leave --unsafe out")
        folder = self.export_virelay
        if folder is not None and os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"--export-virelay {folder!r} is a file; pass a folder (it is "
                             "created when missing)")
        return thresholds, verify_thresholds


def _whole(value, lowest):
    return not isinstance(value, bool) and isinstance(value, int) and value >= lowest


class ClusterAudit:
    """Pass 1: add(columns, maps) per chunk of the audit's stream. Pass 2 and the rest:
    finish(results, ...) -> the cluster dicts for audit.json."""

    def __init__(self, out, method, options=None):
        options = options or ShortcutOptions()
        if not isinstance(options, ShortcutOptions):
            raise UsageError(f"shortcuts must be a ShortcutOptions; received "
                             f"{type(options).__name__}")
        self.thresholds, self.verify_thresholds = options.checked()
        self.options, self.out, self.method = options, out, method
        self.path = options.clusters_file or os.path.join(out, CLUSTERS_FILE)
        self.sample = ClassSample(options.sample_size, options.seed)
        # The "what" view's sample: unit relevance, with each map's evidence beside it.
        self.concept_sample = ClassSample(options.sample_size, options.seed,
                                          embed=embed_relevance)
        self.has_relevance = False
        self.source = self.adapter = None
        self.largest_class = -1

    def rule(self):
        """What audit.json records of the rule: every threshold in force."""
        options = self.options
        rule = {**self.thresholds, "clusters": options.cluster_count,
                "sample_size": options.sample_size, "verify": bool(options.verify)}
        if options.verify:
            rule.update({f"verify_{name}": value for name, value in self.verify_thresholds.items()})
        return rule

    def open_replay(self, manifest):
        """Before any work: open the run's source (and model, for --verify) when asked,
        so a moved model or dataset stops the audit with one line at once."""
        from sightline.audit.replay import load_run_model, open_run_source

        if self.options.verify or self.options.export_virelay:
            self.source = open_run_source(manifest)
            # The export's /prediction holds every class's probability, which the run's
            # shards do not keep (only the predicted class's): the model gives them again.
            self.adapter = load_run_model(manifest, unsafe=self.options.unsafe)

    def add(self, columns, maps, relevance=None):
        """Pass 1: one chunk of the stream; maps [n,h,w] as stored; relevance [n,K] (the
        store's relevance_of the chunk), None for a run that stored none."""
        targets = np.asarray(columns[PRED_TARGET], np.int64)
        self.sample.add(columns[SAMPLE_INDEX], targets, maps)
        if relevance is not None:
            self.has_relevance = True
            self.concept_sample.add(columns[SAMPLE_INDEX], targets, relevance,
                                    scalars=evidence_of(relevance))
        labels = [targets]
        if SAMPLE_LABEL in columns:
            labels.append(np.asarray(columns[SAMPLE_LABEL], np.int64))
        if PRED_CLASS in columns:
            labels.append(np.asarray(columns[PRED_CLASS], np.int64))
        self.largest_class = max([self.largest_class, *(int(v.max(initial=-1)) for v in labels)])

    def finish(self, results, manifest, names, chunk):
        """Fit both views, pass 2, verify, write clusters.h5 (and the export). Returns the
        cluster dicts of both views (mean heatmaps moved to clusters.h5)."""
        with one_thread():
            return self._finish(results, manifest, names, chunk)

    def _finish(self, results, manifest, names, chunk):
        options, thresholds = self.options, self.thresholds
        model = fit_clusters(self.sample, cluster_count=options.cluster_count, seed=options.seed,
                             min_distance=thresholds["min_distance"],
                             max_overlap=thresholds["max_overlap"])
        concepts = None
        if self.has_relevance:
            concepts = fit_concept_model(
                self.concept_sample, min_size=int(thresholds["min_size"]),
                max_share=thresholds["max_share"],
                min_silhouette=thresholds["concept_min_silhouette"],
                min_separation=thresholds["concept_min_separation"], seed=options.seed,
                set_apart=manifest["run"].get("target") != "label")
        views = {"where": _ViewTally(model, concepts, coverage=True)}
        if concepts is not None:
            views["what"] = _ViewTally(concepts, concepts, coverage=False)
        crossed = np.zeros((model.count, concepts.count if concepts else 0), np.int64)
        run = manifest["run"]
        image_shape = tuple(int(v) for v in run["image_shape"])
        heatmaps = heatmap(self.method)
        index_parts, cluster_parts, concept_parts = [], [], []
        export = self._export(manifest, names) if options.export_virelay else None
        feed = None
        if export is not None:
            from sightline.audit.replay import ImageFeed
            # The export shows the images as a person sees them: resized, not preprocessed.
            feed = ImageFeed(self.source, results.sample_indices, image_shape=image_shape,
                             preprocess="none", resize=run_resize(manifest), chunk=chunk)
            predict = self._class_probabilities(image_shape, run["preprocess"])
        names_read = [heatmaps, SAMPLE_INDEX, SAMPLE_KEY, SAMPLE_LABEL, PRED_CLASS,
                      PRED_TARGET, PRED_SCORE]
        if concepts is not None:
            names_read += list(RELEVANCE_COLUMNS)
        with contextlib.ExitStack() as stack:
            writer = stack.enter_context(ClustersWriter(self.path))
            if export is not None:  # an error leaves no half export behind
                stack.enter_context(export)
            # The views' assignments do not depend on each other: the what view's runs on
            # a second thread while this one does the where view's (NumPy lets go of the
            # GIL in their products, selections and sums), so that a second core, when
            # there is one, takes the larger part of pass 2. Each map's clusters are the
            # same either way.
            helper = (stack.enter_context(ThreadPoolExecutor(1, "what-view"))
                      if concepts is not None else None)
            for columns in results.chunks(names_read, rows=chunk):
                maps = columns[heatmaps].astype(np.float32)
                indices, targets = columns[SAMPLE_INDEX], columns[PRED_TARGET]
                keys = columns[SAMPLE_KEY]  # UTF-8 bytes, decoded only where shown
                relevance = results.relevance_of(columns) if concepts is not None else None
                pending = (helper.submit(concepts.assign, targets, relevance)
                           if concepts is not None else None)
                cluster, layout, features = model.assign(targets, maps)
                views["where"].add(indices, targets, maps, cluster, features, columns, keys,
                                   relevance)
                concept = None
                if concepts is not None:
                    local, _, concept_features = pending.result()
                    views["what"].add(indices, targets, maps, local, concept_features,
                                      columns, keys, relevance)
                    both = (cluster >= 0) & (local >= 0)
                    crossed += np.bincount(cluster[both] * crossed.shape[1] + local[both],
                                           minlength=crossed.size).reshape(crossed.shape)
                    # The what view's ids follow the where view's in audit.json.
                    concept = np.where(local >= 0, local + model.count, -1).astype(np.int32)
                    concept_parts.append(concept)
                writer.append(indices, keys, targets, cluster, layout, concept=concept)
                if export is not None:
                    images = feed.take(len(indices))
                    export.add(images, maps, targets, cluster, layout,
                               labels=columns[SAMPLE_LABEL], predictions=predict(images))
                index_parts.append(np.asarray(indices, np.int64))
                cluster_parts.append(cluster)
            found = views["where"].describe_where(names, thresholds)
            if concepts is not None:
                found += views["what"].describe_what(names, thresholds, id_offset=model.count)
                _merge_views(found, crossed, model.count)
            if options.verify:
                members = {"where": np.concatenate(cluster_parts) if cluster_parts else [],
                           "what": np.concatenate(concept_parts) if concept_parts else []}
                self._verify(found, np.concatenate(index_parts) if index_parts else [],
                             members, results, image_shape, run["preprocess"],
                             run_resize(manifest))
            shape = results.map_shape(self.method)
            writer.describe([c["id"] for c in found], [c["class"] for c in found],
                            [c["flagged"] for c in found],
                            np.array([c["mean_heatmap"] if c["mean_heatmap"] is not None
                                      else np.zeros(shape) for c in found]).reshape(-1, *shape))
            if export is not None:
                export.finish(model, [c for c in found if c["view"] == "where"])
        for entry in found:
            entry.pop("mean_heatmap")
            entry.pop("ablation_channels", None)  # the verification records those it used
        return found

    def _class_probabilities(self, image_shape, preprocess):
        """predict(images [n,H,W,C] as read) -> float32 [n, classes], the images
        preprocessed as the job did, batch_size at a time through one compiled call."""
        from sightline.audit.replay import compiled_probabilities, preprocess_images

        batch_size = self.options.batch_size
        probabilities = compiled_probabilities(self.adapter, image_shape, batch_size)

        def predict(images):
            prepared = preprocess_images(images, preprocess)
            return np.concatenate([probabilities(prepared[start:start + batch_size])
                                   for start in range(0, len(prepared), batch_size)]
                                  ).astype(np.float32)
        return predict

    def _export(self, manifest, names):
        # Every class of the model (names covers them), not only those predicted.
        classes = max(self.largest_class + 1, len(names), 1)
        if self.adapter is not None:
            classes = max(classes, self.adapter.num_classes)
        strategy = "true_label" if manifest["run"].get("target") == "label" else "predicted_label"
        return VirelayExport(self.options.export_virelay,
                             class_names=[names.get(c, f"class {c}") for c in range(classes)],
                             method=self.method, strategy=strategy,
                             title=f"sightline {os.path.abspath(self.out)}",
                             model=os.path.basename(str(manifest.get("model") or "model")))

    def _verify(self, found, indices, members, results, image_shape, preprocess, resize):
        """Every flagged group asked by the model (verify.py): a place by hiding its hot
        region against a control region; a concept, a rare group or a diffuse one by
        hiding each member's own hot spot (widened to cells of the target layer) against
        a control spot in the same image, and
        for every kind by replacing its distinguishing channels with the rest of its
        class's mean activation against as many random channels. At most VERIFY_MEMBERS
        members (the lowest sample priorities) per group."""
        from sightline.audit.replay import (compiled_feature_functions, compiled_probabilities,
                                            read_images)

        flagged = [entry for entry in found if entry["flagged"]]
        if not flagged:
            return
        batch_size = self.options.batch_size
        probabilities = compiled_probabilities(self.adapter, image_shape, batch_size)
        feature_functions = (compiled_feature_functions(self.adapter, image_shape, batch_size)
                             if self.has_relevance else None)
        classes = {"where": None, "what": None}
        for entry in flagged:
            view = entry["view"]
            cluster = np.asarray(members[view])
            chosen = _lowest_priority(indices[cluster == entry["id"]], self.options.seed,
                                      VERIFY_MEMBERS)
            images = np.concatenate(list(read_images(self.source, chosen,
                                                     image_shape=image_shape,
                                                     preprocess=preprocess, resize=resize,
                                                     chunk=batch_size)))
            numbers = {}
            if entry["kind"] == "place":
                numbers["region"] = verify_cluster(probabilities, images,
                                                   self._at_layer_grid(entry),
                                                   batch_size=batch_size,
                                                   **self.verify_thresholds)
            else:
                maps = np.stack([results.heatmap(self.method, index=i) for i in chosen])
                # The layer's grid when the model shows a feature map of known size.
                shape = self.adapter.activation_shape
                grid = (tuple(int(v) for v in shape[:2])
                        if shape and all(isinstance(v, int) for v in shape[:2]) else None)
                hot, control = own_regions(maps, grid=grid)
                spot = own_spot_drops(probabilities, images, entry["class"], hot, control,
                                      batch_size=batch_size)
                if spot is not None:
                    numbers["own_spot"] = {**spot, "depends": depends(spot, **self.verify_thresholds)}
            if feature_functions is not None and entry.get("ablation_channels"):
                if classes[view] is None:
                    classes[view] = _class_members(found, indices, members[view])
                rest = _lowest_priority(np.setdiff1d(classes[view][entry["class"]], chosen),
                                        self.options.seed + 1, VERIFY_MEMBERS)
                if len(rest):
                    activations, head, output_kind = feature_functions
                    rest_images = np.concatenate(list(read_images(
                        self.source, rest, image_shape=image_shape, preprocess=preprocess,
                        resize=resize, chunk=batch_size)))
                    total, odds = 0.0, []
                    for start in range(0, len(rest), batch_size):
                        values = activations(rest_images[start:start + batch_size])
                        total = total + values.astype(np.float64).sum(axis=0)
                        outputs = head(values)
                        odds.append(log_odds(outputs[:, outputs.shape[1] // 2:], entry["class"],
                                             output_kind))
                    rest_mean = total / len(rest)  # [h,w,K]
                    features = feature_drops(
                        activations, head, images, entry["class"], entry["ablation_channels"],
                        rest_mean, output_kind=output_kind,
                        rest_log_odds=float(np.concatenate(odds).mean()),
                        seed=self.options.seed, batch_size=batch_size)
                    numbers["features"] = {
                        **features, "depends": features_depend(features, **self.verify_thresholds)}
            apply_verification(entry, numbers, **self.verify_thresholds)

    def _at_layer_grid(self, entry):
        """The place to hide, drawn on the group's mean map at the target layer's grid
        when the maps are finer (saliency's, at the input size). A pixel map's hot cells
        are the few pixels of largest gradient, one side of a 6-pixel ring: hiding them
        left the rest of the ring, which the model still saw (a corner tag explained with
        saliency lost 0.03 of its class's probability, with Grad-CAM's 8x8 box 0.98). A
        cell of the layer's grid is what one of its features sees."""
        shape = getattr(self.adapter, "activation_shape", None)
        mean_map = np.asarray(entry["mean_heatmap"], np.float64)
        if not shape or mean_map.shape[0] <= shape[0] or mean_map.shape[1] <= shape[1]:
            return entry
        coarse = resize_cells(mean_map[None], tuple(shape[:2]))[0].astype(np.float64)
        region, _ = hot_region(coarse)
        return entry if region is None else {**entry, "hot_region": region,
                                             "mean_heatmap": coarse}


class _ViewTally:
    """Pass 2 of one view: the per-cluster statistics (clusters.ClusterStatistics) and,
    per cluster, the sums the flag rules and the verification read: each map's hot
    coverage, its evidence and its relevance (when the run stored relevance)."""

    def __init__(self, model, concepts, *, coverage):
        self.model = model
        self.statistics = ClusterStatistics(model)
        # Only the where view's rules read the maps' hot coverage.
        self.coverage = np.zeros(model.count) if coverage else None
        self.evidence = np.zeros(model.count)
        channels = concepts.channels if concepts is not None else 0
        self.relevance = np.zeros((model.count, channels)) if channels else None

    def add(self, indices, targets, maps, cluster, features, columns, keys, relevance):
        self.statistics.add(indices, targets, maps, cluster, features,
                            labels=columns[SAMPLE_LABEL], predictions=columns[PRED_CLASS],
                            scores=columns[PRED_SCORE], keys=keys)
        rows = cluster >= 0
        ids = cluster[rows]
        if self.coverage is not None:
            self.coverage += np.bincount(ids, weights=np.nan_to_num(hot_coverage(maps[rows])),
                                         minlength=self.model.count)
        if relevance is not None:
            self.evidence += np.bincount(ids, weights=evidence_of(relevance[rows]),
                                         minlength=self.model.count)
            add_rows(self.relevance, ids, relevance[rows])

    def _means(self):
        size = np.maximum(self.statistics.size, 1)
        evidence = self.evidence / size if self.relevance is not None else None
        return None if self.coverage is None else self.coverage / size, evidence

    def describe_where(self, names, thresholds):
        coverage, evidence = self._means()
        found = self.statistics.finish(names, **thresholds, coverage=coverage,
                                       evidence=evidence)
        if self.relevance is not None:
            for entry in found:
                (entry["channels"], entry["channel_lift"],
                 entry["ablation_channels"]) = self._channels(entry, found)
        return found

    def describe_what(self, names, thresholds, id_offset):
        _, evidence = self._means()
        return describe_concepts(self.statistics, names, relevance_sums=self.relevance,
                                 evidence=evidence, id_offset=id_offset, **thresholds)

    def _channels(self, entry, found):
        """A where-view cluster's distinguishing channels against the rest of its class:
        (channels, their lifts, the channels the feature test replaces)."""
        mine = entry["id"]
        rest = [c["id"] for c in found if c["class"] == entry["class"] and c["id"] != mine]
        size = self.statistics.size
        rest_size = sum(int(size[c]) for c in rest)
        if not size[mine] or not rest_size:
            return [], [], []
        group, others = self.relevance[mine] / size[mine], sum(self.relevance[c] for c in rest) / rest_size
        channels, lifts = distinguishing_channels(group, others)
        ablation, _ = distinguishing_channels(group, others, cover=ABLATION_COVER,
                                              limit=max(1, len(group) // 4))
        return channels, lifts, ablation


def _merge_views(found, crossed, offset):
    """A flagged what-view group that is mostly a flagged where-view cluster (at least
    SAME_GROUP of the smaller of the two) is reported once, by the where-view entry,
    which gains "views": ["where", "what"] and the group's channels."""
    where = {c["id"]: c for c in found if c["view"] == "where"}
    for entry in found:
        entry.setdefault("views", [entry["view"]])
    for entry in found:
        if entry["view"] != "what" or not entry["flagged"]:
            continue
        column = crossed[:, entry["id"] - offset]
        if not column.size or not column.max():
            continue
        match = where[int(column.argmax())]
        if match["flagged"] and column.max() >= SAME_GROUP * min(match["size"], entry["size"]):
            match["views"] = ["where", "what"]
            for key in ("channels", "channel_lift", "ablation_channels"):
                match[key] = entry[key]
            match["reasons"] = match["reasons"] + [
                f"also apart in channel space (cluster {entry['id']}: channels "
                f"{', '.join(map(str, entry['channels'][:5]))})"]
            entry["flagged"] = False
            entry["same_as"] = match["id"]
            entry["reasons"] = [f"the same group as cluster {match['id']}, found where it looks"]


def _lowest_priority(indices, seed, count):
    """Up to `count` of `indices`, those of lowest sample_priority, in index order."""
    indices = np.asarray(indices, np.int64)
    if len(indices) <= count:
        return np.sort(indices)
    order = np.lexsort((indices, sample_priority(indices, seed)))[:count]
    return np.sort(indices[order])


def _class_members(found, indices, members):
    """{class: sample indices of its clustered maps} of one view, from the per-sample
    cluster ids and the clusters' classes."""
    class_of = {c["id"]: c["class"] for c in found}
    cluster = np.asarray(members)
    result = {}
    for cluster_id, label in class_of.items():
        rows = indices[cluster == cluster_id]
        if len(rows):
            result.setdefault(label, []).append(rows)
    return {label: np.concatenate(parts) for label, parts in result.items()}




def _check_thresholds(given, known, what):
    """Known names only, numbers only, fractions within [0, 1]: one line otherwise."""
    checked = dict(known)
    for name, value in (given or {}).items():
        if name not in known:
            raise UsageError(f"unknown {what} {name!r}; known: {', '.join(known)}")
        if value is None:
            continue
        lowest = -1.0 if name in ClusterRule.SIGNED else 0.0
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or not np.isfinite(value) or value < lowest:
            raise UsageError(f"{what} {name} must be a number >= {lowest:g}; received {value!r}")
        if name in ClusterRule.FRACTIONS and value > 1:
            raise UsageError(f"{what} {name} is a fraction (of the class or of the image side) "
                             f"in [0, 1]; received {value!r}")
        checked[name] = value
    return checked
