"""What the report draws of an audit, read from the run's files: the source images shown
to a person, the worst items with their masks and maps, the clusters.h5 table, the mean
map of each cluster and its members' maps. The report (sightline.report) receives one
reader and only draws; every file it needs is opened here, below it.

Maps come back at the size the audit compared them at (`audit["compared_at"]`), the
images resized to it by the run's rule (stretch, pad or crop), or None where the source
cannot be read back (TFRecord, moved or changed files: the report then shows the
heatmap alone)."""

import os

import h5py
import numpy as np

from sightline.audit.masks import open_masks
from sightline.audit.metrics import resize_maps
from sightline.audit.virelay import read_clusters
from sightline.errors import UsageError
from sightline.store.layout import CLUSTERS_FILE, SAMPLE_INDEX, heatmap
from sightline.store.results import open_results


def _compared_size(audit):
    return tuple(audit["compared_at"])


def _bilinear(heatmap, size):
    """One map [h,w] -> float32 [H,W] by TensorFlow's bilinear resize (the cluster cards'
    rule since they were drawn)."""
    import tensorflow as tf  # only when a cluster card is drawn
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.shape != tuple(size):
        heatmap = tf.image.resize(heatmap[..., None], size, method="bilinear").numpy()[..., 0]
    return heatmap


def _example_member(example):
    """An example as the audit lists it ({"index", "key"}, a key or an index) -> dict."""
    if isinstance(example, dict):
        return {"index": example.get("index"), "key": example.get("key")}
    if isinstance(example, str):
        return {"index": None, "key": example}
    return {"index": int(example), "key": None}


class AuditInputs:
    """The reads of an audit's report part; each method takes the audit dict
    (sightline.audit.audit.run_audit or audit.json) whose paths it follows."""

    def display_images(self, audit, items):
        """[image uint8/float [H,W,3] or None] of `items` ({"key", "index"}), as a person
        sees them: resized to the compared size, not preprocessed."""
        import tensorflow as tf

        from sightline.data.decode import resize_images  # loads TensorFlow: only when drawing
        provenance = audit.get("provenance") or {}
        kind, location = provenance.get("source_spec") or ("", "")
        resize = provenance.get("resize") or "stretch"
        size = _compared_size(audit)
        images = []
        for item in items:
            image = None
            try:
                if kind == "folder":
                    data = tf.io.read_file(os.path.join(location, item["key"]))
                    image = tf.io.decode_image(data, channels=3, expand_animations=False)
                elif kind == "npy":
                    image = np.load(location, mmap_mode="r")[item["index"]]
                elif kind == "h5":
                    path, _, dataset = location.rpartition(":")
                    with h5py.File(path, "r") as handle:
                        image = handle[dataset][item["index"]]
                if image is not None:
                    image = resize_images(image, *size, resize).numpy()
            # A file gone or unreadable (OSError, TensorFlow's NotFound), not an image any
            # more (InvalidArgument), a dataset or row no longer there (KeyError, IndexError).
            except (OSError, KeyError, IndexError, ValueError, tf.errors.OpError):
                image = None
            images.append(image)
        return images

    def worst_items(self, audit):
        """[{"item": the audit's worst entry, "mask", "heatmap" (at the compared size, as
        stored: not scaled), "image" (or None)}] of the audit's worst images."""
        items = audit.get("worst") or []
        if not items:
            return []
        size = _compared_size(audit)
        mask_source = open_masks(audit["mask_args"]["masks"], audit["mask_args"]["boxes"], size)
        try:
            masks = mask_source.read([item["key"] for item in items])
        finally:
            mask_source.close()
        with open_results(audit["out"]) as results:
            maps = np.stack([results.heatmap(audit["method"], key=item["key"]) for item in items])
        maps = resize_maps(maps, size)
        images = self.display_images(audit, items)
        return [{"item": item, "mask": mask, "heatmap": heatmap, "image": image}
                for item, heatmap, mask, image in zip(items, maps, masks, images)]

    def cluster_table(self, audit):
        """The audit's clusters.h5 (its "clusters_file", else OUT/clusters.h5) as
        read_clusters gives it; UsageError when it is missing."""
        path = audit.get("clusters_file") or os.path.join(audit["out"], CLUSTERS_FILE)
        if not os.path.isfile(path):
            raise UsageError(f"the audit lists clusters but {path!r} does not exist; run "
                             "`sightline audit` again on this run to write it")
        return read_clusters(path)

    def cluster_means(self, audit, table):
        """{cluster id: mean heatmap [H,W] at the compared size} over every member in
        clusters.h5 `table`: the audit's stored means when it kept them, else one pass
        over the run (each stored map scaled to its own maximum)."""
        size = _compared_size(audit)
        if "clusters/mean_heatmap" in table:
            means = dict(zip(table["clusters/id"].tolist(), table["clusters/mean_heatmap"]))
        else:
            means = self._mean_maps(audit["out"], audit["method"], table)
        return {cluster: _bilinear(mean, size) for cluster, mean in means.items()}

    @staticmethod
    def _mean_maps(out, method, table):
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

    def cluster_members(self, audit, cluster):
        """[{"index", "key", "heatmap" (at the compared size), "image" (or None)}] of the
        members the audit lists as the cluster's examples."""
        size = _compared_size(audit)
        members = [_example_member(e) for e in cluster.get("examples") or []]
        if not members:
            return []
        with open_results(audit["out"]) as results:
            for member in members:
                found = results.sample(index=member["index"]) if member["key"] is None else \
                    results.sample(key=member["key"])
                member.update(found)
                member["heatmap"] = _bilinear(
                    results.heatmap(audit["method"], key=member["key"]), size)
        for member, image in zip(members, self.display_images(audit, members)):
            member["image"] = image
        return members
