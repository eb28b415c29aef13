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
from typing import Optional

import numpy as np

from sightline.audit.clusters import (MAX_OVERLAP, MAX_SHARE, MIN_DISTANCE, MIN_SEPARATION,
                                      MIN_SHARE, MIN_SILHOUETTE, MIN_SIZE, SAMPLE_SIZE,
                                      ClassSample, ClusterStatistics, fit_clusters)
from sightline.audit.replay import run_resize
from sightline.audit.verify import (BATCH_SIZE, MIN_DROP, MIN_RATIO, apply_verification,
                                    verify_cluster)
from sightline.audit.virelay import CLUSTERS_FILE, ClustersWriter, VirelayExport

# describe_clusters' thresholds, by keyword: the documented defaults.
THRESHOLDS = {"min_silhouette": MIN_SILHOUETTE, "min_separation": MIN_SEPARATION,
              "min_share": MIN_SHARE, "min_size": MIN_SIZE, "max_share": MAX_SHARE,
              "min_distance": MIN_DISTANCE, "max_overlap": MAX_OVERLAP}
VERIFY_THRESHOLDS = {"min_drop": MIN_DROP, "min_ratio": MIN_RATIO}
_FRACTIONS = ("min_share", "max_share", "min_distance", "max_overlap")


@dataclasses.dataclass(frozen=True)
class ShortcutOptions:
    """How the audit looks for shortcuts without masks (the CLI's cluster flags).

    clusters: clusters per explained class (None: the eigengap chooses); thresholds /
    verify_thresholds: {name: value} overrides of THRESHOLDS / VERIFY_THRESHOLDS (None
    values keep the default); verify: check flagged clusters by ablation on the run's
    model (unsafe: load it without Keras safe mode); export_virelay: a folder for the
    ViRelAy project; sample_size: maps per class the clusters are fitted on;
    clusters_file: where clusters.h5 goes (default OUT/clusters.h5); batch_size: images
    per call of the model in --verify."""

    clusters: Optional[int] = None
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
        thresholds = _check_thresholds(self.thresholds, THRESHOLDS, "cluster threshold")
        verify_thresholds = _check_thresholds(self.verify_thresholds, VERIFY_THRESHOLDS,
                                              "verify threshold")
        if self.clusters is not None and not _whole(self.clusters, 1):
            raise ValueError(f"--clusters must be a whole number of clusters >= 1 per class; "
                             f"received {self.clusters!r} (leave it out to let the eigengap "
                             "choose)")
        if not _whole(self.sample_size, 2):
            raise ValueError(f"--cluster-sample-size must be a whole number of maps >= 2 per "
                             f"class; received {self.sample_size!r}")
        if not _whole(self.batch_size, 1):
            raise ValueError(f"the verify batch size must be a whole number >= 1; received "
                             f"{self.batch_size!r}")
        if self.unsafe and not self.verify:
            raise ValueError("--unsafe only matters for --verify (it loads the model); add "
                             "--verify or leave --unsafe out")
        folder = self.export_virelay
        if folder is not None and os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(f"--export-virelay {folder!r} is a file; pass a folder (it is "
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
            raise TypeError(f"shortcuts must be a ShortcutOptions; received "
                            f"{type(options).__name__}")
        self.thresholds, self.verify_thresholds = options.checked()
        self.options, self.out, self.method = options, out, method
        self.path = options.clusters_file or os.path.join(out, CLUSTERS_FILE)
        self.sample = ClassSample(options.sample_size, options.seed)
        self.source = self.adapter = None
        self.largest_class = -1

    def rule(self):
        """What audit.json records of the rule: every threshold in force."""
        options = self.options
        rule = {**self.thresholds, "clusters": options.clusters, "sample_size": options.sample_size,
                "verify": bool(options.verify)}
        if options.verify:
            rule.update({f"verify_{name}": value for name, value in self.verify_thresholds.items()})
        return rule

    def open_replay(self, manifest):
        """Before any work: open the run's source (and model, for --verify) when asked,
        so a moved model or dataset stops the audit with one line at once."""
        from sightline.audit.replay import load_run_model, open_run_source

        if self.options.verify or self.options.export_virelay:
            self.source = open_run_source(manifest)
        if self.options.verify:
            self.adapter = load_run_model(manifest, unsafe=self.options.unsafe)

    def add(self, columns, maps):
        """Pass 1: one chunk of the stream; maps [n,h,w] as stored."""
        targets = np.asarray(columns["pred/target"], np.int64)
        self.sample.add(columns["sample/index"], targets, maps)
        labels = [targets]
        if "sample/label" in columns:
            labels.append(np.asarray(columns["sample/label"], np.int64))
        if "pred/class" in columns:
            labels.append(np.asarray(columns["pred/class"], np.int64))
        self.largest_class = max([self.largest_class, *(int(v.max(initial=-1)) for v in labels)])

    def finish(self, results, manifest, names, chunk):
        """Fit, pass 2, verify, write clusters.h5 (and the export). Returns the cluster
        dicts (mean heatmaps moved to clusters.h5)."""
        options = self.options
        model = fit_clusters(self.sample, clusters=options.clusters, seed=options.seed,
                             min_distance=self.thresholds["min_distance"],
                             max_overlap=self.thresholds["max_overlap"])
        statistics = ClusterStatistics(model)
        run = manifest["run"]
        image_shape = tuple(int(v) for v in run["image_shape"])
        heatmaps = f"heatmaps/{self.method}"
        index_parts, cluster_parts = [], []
        export = self._export(manifest, names) if options.export_virelay else None
        feed = None
        if export is not None:
            from sightline.audit.replay import ImageFeed
            # The export shows the images as a person sees them: resized, not preprocessed.
            feed = ImageFeed(self.source, results.sample_indices, image_shape=image_shape,
                             preprocess="none", resize=run_resize(manifest), chunk=chunk)
        with contextlib.ExitStack() as stack:
            writer = stack.enter_context(ClustersWriter(self.path))
            if export is not None:  # an error leaves no half export behind
                stack.enter_context(export)
            for columns in results.chunks([heatmaps, "sample/index", "sample/key", "sample/label",
                                           "pred/class", "pred/target", "pred/score"], rows=chunk):
                maps = columns[heatmaps].astype(np.float32)
                indices, targets = columns["sample/index"], columns["pred/target"]
                keys = [k.decode("utf-8") for k in columns["sample/key"]]
                cluster, layout, features = model.assign(targets, maps)
                statistics.add(indices, targets, maps, cluster, features,
                               labels=columns["sample/label"], predictions=columns["pred/class"],
                               scores=columns["pred/score"], keys=keys)
                writer.append(indices, keys, targets, cluster, layout)
                if export is not None:
                    export.add(feed.take(len(indices)), maps, targets, cluster, layout,
                               labels=columns["sample/label"])
                index_parts.append(np.asarray(indices, np.int64))
                cluster_parts.append(cluster)
            found = statistics.finish(names, **self.thresholds)
            if options.verify:
                self._verify(found, np.concatenate(index_parts) if index_parts else [],
                             np.concatenate(cluster_parts) if cluster_parts else [],
                             image_shape, run["preprocess"], run_resize(manifest))
            shape = results.map_shape(self.method)
            writer.describe([c["id"] for c in found], [c["class"] for c in found],
                            [c["flagged"] for c in found],
                            np.array([c["mean_heatmap"] if c["mean_heatmap"] is not None
                                      else np.zeros(shape) for c in found]).reshape(-1, *shape))
            if export is not None:
                export.finish(model, found)
        for entry in found:
            entry.pop("mean_heatmap")
        return found

    def _export(self, manifest, names):
        classes = max(self.largest_class + 1, 1)
        if self.adapter is not None:
            classes = max(classes, self.adapter.num_classes)
        strategy = "true_label" if manifest["run"].get("target") == "label" else "predicted_label"
        return VirelayExport(self.options.export_virelay,
                             class_names=[names.get(c, str(c)) for c in range(classes)],
                             method=self.method, strategy=strategy,
                             model=os.path.basename(str(manifest.get("model") or "model")))

    def _verify(self, found, indices, cluster, image_shape, preprocess, resize):
        """Ablation on every flagged cluster, its members' images read by sample index."""
        from sightline.audit.replay import compiled_probabilities, read_images

        flagged = [entry for entry in found if entry["flagged"]]
        if not flagged:
            return
        batch_size = self.options.batch_size
        probabilities = compiled_probabilities(self.adapter, image_shape, batch_size)
        for entry in flagged:
            members = np.sort(indices[cluster == entry["id"]])
            images = read_images(self.source, members, image_shape=image_shape,
                                 preprocess=preprocess, resize=resize, chunk=batch_size)
            verification = verify_cluster(probabilities, images, entry, batch_size=batch_size,
                                          **self.verify_thresholds)
            apply_verification(entry, verification)


def _check_thresholds(given, known, what):
    """Known names only, numbers only, fractions within [0, 1]: one line otherwise."""
    checked = dict(known)
    for name, value in (given or {}).items():
        if name not in known:
            raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
        if value is None:
            continue
        # A silhouette lies in [-1, 1]; every other threshold is a size, share or ratio.
        lowest = -1.0 if name == "min_silhouette" else 0.0
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or not np.isfinite(value) or value < lowest:
            raise ValueError(f"{what} {name} must be a number >= {lowest:g}; received {value!r}")
        if name in _FRACTIONS and value > 1:
            raise ValueError(f"{what} {name} is a fraction (of the class or of the image side) "
                             f"in [0, 1]; received {value!r}")
        checked[name] = value
    return checked
