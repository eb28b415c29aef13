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
import os

import numpy as np

from sightline.audit.clusters import (MAX_OVERLAP, MAX_SHARE, MIN_DISTANCE, MIN_SEPARATION,
                                      MIN_SHARE, MIN_SILHOUETTE, MIN_SIZE, SAMPLE_SIZE,
                                      ClassSample, ClusterStatistics, fit_clusters)
from sightline.audit.verify import BATCH_SIZE, MIN_DROP, MIN_RATIO, apply_verification, verify_cluster
from sightline.audit.virelay import CLUSTERS_FILE, ClustersWriter, VirelayExport

# describe_clusters' thresholds, by keyword: the documented defaults.
THRESHOLDS = {"min_silhouette": MIN_SILHOUETTE, "min_separation": MIN_SEPARATION,
              "min_share": MIN_SHARE, "min_size": MIN_SIZE, "max_share": MAX_SHARE,
              "min_distance": MIN_DISTANCE, "max_overlap": MAX_OVERLAP}
VERIFY_THRESHOLDS = {"min_drop": MIN_DROP, "min_ratio": MIN_RATIO}
_FRACTIONS = ("min_share", "max_share", "min_distance", "max_overlap")


class ClusterAudit:
    """Pass 1: add(columns) per chunk of the audit's stream. Pass 2 and the rest:
    finish(results, ...) -> the cluster dicts for audit.json."""

    COLUMNS = ("sample/index", "pred/target")

    def __init__(self, out, method, *, clusters=None, thresholds=None, verify=False,
                 verify_thresholds=None, export_virelay=None, unsafe=False,
                 sample_size=SAMPLE_SIZE, seed=0, clusters_file=None, batch_size=BATCH_SIZE):
        self.thresholds = _check_thresholds(thresholds or {}, THRESHOLDS, "cluster threshold")
        self.verify_thresholds = _check_thresholds(verify_thresholds or {}, VERIFY_THRESHOLDS,
                                                   "verify threshold")
        if clusters is not None and (isinstance(clusters, bool) or not isinstance(clusters, int)
                                     or clusters < 1):
            raise ValueError(f"--clusters must be a whole number of clusters >= 1 per class; "
                             f"received {clusters!r} (leave it out to let the eigengap choose)")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 2:
            raise ValueError(f"--cluster-sample-size must be a whole number of maps >= 2 per "
                             f"class; received {sample_size!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"the verify batch size must be a whole number >= 1; received "
                             f"{batch_size!r}")
        if unsafe and not verify:
            raise ValueError("--unsafe only matters for --verify (it loads the model); add "
                             "--verify or leave --unsafe out")
        if export_virelay is not None and os.path.exists(export_virelay) \
                and not os.path.isdir(export_virelay):
            raise ValueError(f"--export-virelay {export_virelay!r} is a file; pass a folder "
                             "(it is created when missing)")
        self.out, self.method, self.clusters = out, method, clusters
        self.verify, self.export_virelay, self.unsafe = verify, export_virelay, unsafe
        self.seed, self.batch_size = seed, batch_size
        self.path = clusters_file or os.path.join(out, CLUSTERS_FILE)
        self.sample = ClassSample(sample_size, seed)
        self.source = self.adapter = None
        self.largest_class = -1

    def open_replay(self, manifest):
        """Before any work: open the run's source (and model, for --verify) when asked,
        so a moved model or dataset stops the audit with one line at once."""
        from sightline.audit.replay import load_run_model, open_run_source

        if self.verify or self.export_virelay:
            self.source = open_run_source(manifest)
        if self.verify:
            self.adapter = load_run_model(manifest, unsafe=self.unsafe)

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
        model = fit_clusters(self.sample, clusters=self.clusters, seed=self.seed)
        statistics = ClusterStatistics(model)
        run = manifest["run"]
        image_shape = tuple(int(v) for v in run["image_shape"])
        heatmaps = f"heatmaps/{self.method}"
        index_parts, cluster_parts = [], []
        export = self._export(manifest, names) if self.export_virelay else None
        feed = None
        if export is not None:
            from sightline.audit.replay import ImageFeed
            # The export shows the images as a person sees them: resized, not preprocessed.
            feed = ImageFeed(self.source, results.sample_indices, image_shape=image_shape,
                             preprocess="none", chunk=chunk)
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
            if self.verify:
                self._verify(found, np.concatenate(index_parts) if index_parts else [],
                             np.concatenate(cluster_parts) if cluster_parts else [],
                             image_shape, run["preprocess"])
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
        return VirelayExport(self.export_virelay,
                             class_names=[names.get(c, str(c)) for c in range(classes)],
                             method=self.method, strategy=strategy,
                             model=os.path.basename(str(manifest.get("model") or "model")))

    def _verify(self, found, indices, cluster, image_shape, preprocess):
        """Ablation on every flagged cluster, its members' images read by sample index."""
        from sightline.audit.replay import compiled_probabilities, read_images

        flagged = [entry for entry in found if entry["flagged"]]
        if not flagged:
            return
        probabilities = compiled_probabilities(self.adapter, image_shape, self.batch_size)
        for entry in flagged:
            members = np.sort(indices[cluster == entry["id"]])
            images = read_images(self.source, members, image_shape=image_shape,
                                 preprocess=preprocess, chunk=self.batch_size)
            verification = verify_cluster(probabilities, images, entry,
                                          batch_size=self.batch_size, **self.verify_thresholds)
            apply_verification(entry, verification)


def _check_thresholds(given, known, what):
    """Known names only, numbers only, fractions within [0, 1]: one line otherwise."""
    checked = dict(known)
    for name, value in given.items():
        if name not in known:
            raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
        if value is None:
            continue
        # A silhouette lies in [-1, 1]; every other threshold is a size, share or ratio.
        lowest = -1.0 if name == "min_silhouette" else 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                or value < lowest:
            raise ValueError(f"{what} {name} must be a number >= {lowest:g}; received {value!r}")
        if name in _FRACTIONS and value > 1:
            raise ValueError(f"{what} {name} is a fraction (of the class or of the image side) "
                             f"in [0, 1]; received {value!r}")
        checked[name] = value
    return checked
