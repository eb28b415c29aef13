"""The mask-free audit's files: clusters.h5 (the cluster of every sample, for the report)
and the ViRelAy export (`--export-virelay DIR`), both written a chunk at a time.

Every file is written under a temporary name and renamed into place when complete, so a
file with its final name is always whole (the project file last: its presence means the
export is complete).

clusters.h5 (exact contract):

    /sample/index   int64   [N]    position in the source
    /sample/key     str     [N]    variable-length UTF-8
    /class          int32   [N]    explained class
    /cluster        int32   [N]    cluster id (unique across classes), -1 not clustered
    /embedding      float32 [N,2]  2-D layout (spectral coordinates), NaN where -1

and, per cluster (written by ClustersWriter.describe, once the clusters are known):

    /clusters/id            int32   [C]      the cluster ids of audit.json's "clusters"
    /clusters/class         int32   [C]      its explained class
    /clusters/flagged       bool    [C]      flagged (after --verify, if it ran)
    /clusters/mean_heatmap  float32 [C,h,w]  mean of its members' maps as stored (scaled
                                             to [0, 1] per map); zero for no members

ViRelAy export (ViRelAy's database specification and project file format, as its loader
and its example meta-analysis read and write them), in DIR:

    <name>.input.h5          /data uint8 [N,3,H,W] (the images as a person sees them,
                             channels first; grayscale repeated into three channels:
                             ViRelAy's image server hands [H,W,1] to Pillow, which
                             refuses it), /label bool [N,classes] (n-hot: the sample's
                             label, no class at all where it is unknown; ViRelAy reads a
                             bool label as a multi-label one), /label_known bool [N]
    <name>.attribution.h5    /index uint32 [N] (rows of the input file), /attribution
                             float32 [N,1,H,W] (the heatmaps at the input size, cells
                             repeated, not smoothed, so the picture shows the layer's
                             real cells), /label uint32 [N] (the explained class),
                             /prediction float32 [N,classes] (the model's class
                             probabilities, from the run's model and images)
    <name>.analysis.h5       one group per explained class, named by the label map's
                             word_net_id (f"{class:08d}"), holding /index uint32 [m]
                             (attribution rows of its clustered samples),
                             /embedding/spectral float32 [m,2] with attribute eigenvalue
                             float32 [2], and /cluster/sightline int [m] (local cluster
                             0..K-1, attributes embedding="spectral", k=K, index=[0,1]),
                             /cluster/flagged int [m] (1 in a flagged cluster)
    label-map.json           [{"index", "word_net_id", "name"}] per class of the model
    project.yaml             the project file, written as JSON (YAML's flow style, which
                             ViRelAy's YAML loader reads): project.name, model, label_map,
                             dataset {name, type "hdf5", path, input_width, input_height,
                             up_sampling_method "none", down_sampling_method "none"},
                             attributions {attribution_method, attribution_strategy,
                             sources}, analyses [{analysis_method "spectral", sources}]
"""

import json
import os

import h5py
import numpy as np

from sightline.audit.clusters import area_matrix
from sightline.store.layout import SAMPLE_INDEX, SAMPLE_KEY
from sightline.errors import UsageError

PROJECT_FILE = "project.yaml"
LABEL_MAP_FILE = "label-map.json"
STRATEGIES = ("predicted_label", "true_label")
_STRING = h5py.string_dtype("utf-8")


def _temporary(path):
    return f"{path}.partial-{os.getpid()}"


def _appendable(group, name, shape, dtype):
    """A chunked dataset [0, *shape] that grows along its first axis."""
    return group.create_dataset(name, (0, *shape), dtype=dtype, maxshape=(None, *shape),
                                chunks=(max(1, 4096 // max(1, int(np.prod(shape)))), *shape)
                                if shape else (4096,))


def _append(dataset, values):
    start = dataset.shape[0]
    dataset.resize(start + len(values), axis=0)
    dataset[start:] = values


class _Staged:
    """Files written under temporary names, renamed into place by publish() in the order
    they were staged, removed by discard()."""

    def __init__(self):
        self.files = []  # (h5py.File or None, temporary, final)

    def stage(self, path, open_h5=True):
        temporary = _temporary(path)
        handle = h5py.File(temporary, "w") if open_h5 else None
        self.files.append((handle, temporary, path))
        return handle if open_h5 else temporary

    def publish(self):
        for handle, temporary, path in self.files:
            if handle is not None:
                handle.close()
            os.replace(temporary, path)
        self.files = []

    def discard(self):
        for handle, temporary, _ in self.files:
            if handle is not None:
                handle.close()
            if os.path.exists(temporary):
                os.remove(temporary)
        self.files = []


# ----------------------------------------------------------------------------- clusters.h5


class ClustersWriter:
    """clusters.h5 a chunk at a time: append(...) per chunk, then close() (or use as a
    context manager: an exception leaves no file behind)."""

    def __init__(self, path):
        self._staged = _Staged()
        self._file = self._staged.stage(path)
        sample = self._file.create_group("sample")
        self._index = _appendable(sample, "index", (), np.int64)
        self._key = _appendable(sample, "key", (), _STRING)
        self._class = _appendable(self._file, "class", (), np.int32)
        self._cluster = _appendable(self._file, "cluster", (), np.int32)
        self._embedding = _appendable(self._file, "embedding", (2,), np.float32)
        self._concept = None

    def append(self, indices, keys, classes, cluster, embedding, concept=None):
        """indices int [n], keys str or UTF-8 bytes [n], classes int [n], cluster int [n] (-1 not
        clustered), embedding float [n,2]; concept int [n]: the "what" view's cluster
        (-1 none), in /concept when the run stored relevance."""
        count = len(indices)
        embedding = np.asarray(embedding, np.float32)
        if not (len(keys) == len(classes) == len(cluster) == count
                and embedding.shape == (count, 2)):
            raise UsageError(f"clusters.h5 rows must match: received {count} indices, "
                             f"{len(keys)} keys, {len(classes)} classes, {len(cluster)} "
                             f"clusters and an embedding of shape {embedding.shape} (want "
                             f"[{count}, 2])")
        _append(self._index, np.asarray(indices, np.int64))
        # The shards' keys as they are read (UTF-8 bytes) go in as they are: no Python
        # string per map.
        keys = np.asarray(keys)
        _append(self._key, keys if keys.dtype.kind == "S"
                else np.array([str(k) for k in keys], dtype=object))
        _append(self._class, np.asarray(classes, np.int32))
        _append(self._cluster, np.asarray(cluster, np.int32))
        _append(self._embedding, embedding)
        if concept is not None:
            if self._concept is None:
                self._concept = _appendable(self._file, "concept", (), np.int32)
            _append(self._concept, np.asarray(concept, np.int32))

    def describe(self, ids, classes, flagged, mean_heatmaps):
        """The per-cluster table (module docstring): ids int [C], classes int [C],
        flagged bool [C], mean_heatmaps [C,h,w]."""
        mean_heatmaps = np.asarray(mean_heatmaps, np.float32)
        if not (len(ids) == len(classes) == len(flagged) == len(mean_heatmaps)
                and mean_heatmaps.ndim == 3):
            raise UsageError(f"one id, class, flag and 2-D mean heatmap per cluster: received "
                             f"{len(ids)}, {len(classes)}, {len(flagged)} and an array of "
                             f"shape {mean_heatmaps.shape}")
        table = self._file.create_group("clusters")
        table["id"] = np.asarray(ids, np.int32)
        table["class"] = np.asarray(classes, np.int32)
        table["flagged"] = np.asarray(flagged, bool)
        table["mean_heatmap"] = mean_heatmaps

    def close(self):
        self._staged.publish()

    def __enter__(self):
        return self

    def __exit__(self, kind, *rest):
        if kind is None:
            self.close()
        else:
            self._staged.discard()


def write_clusters(path, indices, keys, classes, cluster, embedding):
    """clusters.h5 from whole arrays (ClustersWriter for streaming). Returns path."""
    with ClustersWriter(path) as writer:
        writer.append(indices, keys, classes, cluster, embedding)
    return path


def read_clusters(path):
    """clusters.h5 -> {"index", "key" (list of str), "class", "cluster", "embedding"},
    "concept" when the run stored relevance, and
    "clusters/id", "clusters/class", "clusters/flagged", "clusters/mean_heatmap" when
    the file has the per-cluster table."""
    with h5py.File(path, "r") as handle:
        return {
            "index": handle[SAMPLE_INDEX][()],
            "key": [k.decode("utf-8") if isinstance(k, bytes) else k
                    for k in handle[SAMPLE_KEY][()]],
            "class": handle["class"][()],
            "cluster": handle["cluster"][()],
            "embedding": handle["embedding"][()],
            **({"concept": handle["concept"][()]} if "concept" in handle else {}),
            **({f"clusters/{name}": handle[f"clusters/{name}"][()]
                for name in ("id", "class", "flagged", "mean_heatmap")}
               if "clusters" in handle else {}),
        }


# ----------------------------------------------------------------------------- ViRelAy


def resize_cells(maps, size):
    """maps [n,h,w] -> float32 [n,H,W] by area weights (repeats cells when enlarging)."""
    maps = np.asarray(maps, np.float32)
    if maps.shape[1:] == tuple(size):
        return maps
    rows = area_matrix(size[0], maps.shape[1])
    cols = area_matrix(size[1], maps.shape[2])
    return (rows @ maps.astype(np.float64) @ cols.T).astype(np.float32)


def display_pixels(images):
    """images [n,H,W,C] as read for a person (not preprocessed) -> uint8 [n,H,W,3]: 8-bit
    values as they are, a float array in [0, 1] or [-1, 1] scaled to 0..255, anything
    else clipped; one channel repeated into three."""
    images = np.asarray(images, np.float32)
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if low >= -1.0 and high <= 1.0:
        images = (images + 1.0) * 127.5 if low < 0 else images * 255.0
    pixels = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels[..., :3]  # an alpha channel is no colour


def category_name(label):
    """The analysis group of a class, and its word_net_id in the label map."""
    return f"{int(label):08d}"


class VirelayExport:
    """A ViRelAy project in `directory` (see the module docstring): add(...) per chunk
    of samples, then finish(clusters_model, clusters) writes the analysis, the label map
    and the project file. Use as a context manager to leave nothing behind on error."""

    def __init__(self, directory, *, class_names, method, strategy="predicted_label",
                 name="sightline", model="model", title=None):
        if strategy not in STRATEGIES:
            raise UsageError(f"attribution strategy must be one of {STRATEGIES}; received "
                             f"{strategy!r}")
        if not class_names:
            raise UsageError("class_names must name every class of the model (ViRelAy's "
                             "label map); received none")
        os.makedirs(directory, exist_ok=True)
        self.directory, self.class_names = directory, [str(n) for n in class_names]
        self.method, self.strategy, self.name, self.model = method, strategy, name, model
        # ViRelAy finds a project by its name: two projects of one name in a workspace
        # would show the first twice.
        self.title = title or name
        self.files = {"input": f"{name}.input.h5", "attribution": f"{name}.attribution.h5",
                      "analysis": f"{name}.analysis.h5"}
        self._staged = _Staged()
        self._input = self._staged.stage(os.path.join(directory, self.files["input"]))
        self._attribution = self._staged.stage(os.path.join(directory, self.files["attribution"]))
        self._image_shape = None
        self._rows = {}  # dataset name -> appendable
        self._per_sample = {"explained": [], "cluster": [], "layout": []}  # small: per row

    def _create(self, image_shape):
        height, width, channels = image_shape
        classes = len(self.class_names)
        self._image_shape = image_shape
        self._rows = {
            "data": _appendable(self._input, "data", (3, height, width), np.uint8),
            "label": _appendable(self._input, "label", (classes,), bool),
            "label_known": _appendable(self._input, "label_known", (), bool),
            "index": _appendable(self._attribution, "index", (), np.uint32),
            "attribution": _appendable(self._attribution, "attribution", (1, height, width),
                                       np.float32),
            "explained": _appendable(self._attribution, "label", (), np.uint32),
            "prediction": _appendable(self._attribution, "prediction", (classes,), np.float32),
        }

    def add(self, images, heatmaps, explained, cluster, layout, *, labels=None,
            predictions=None):
        """images [n,H,W,C] as read (not preprocessed); heatmaps [n,h,w]; explained int
        [n]; cluster int [n] and layout [n,2] from ClusterModel.assign; labels int [n]
        (-1 unknown); predictions [n, classes] probabilities (None: zeros, for tests of
        the layout alone)."""
        images = np.asarray(images)
        count = len(images)
        if images.ndim != 4:
            raise UsageError(f"images must be [n, height, width, channels]; received shape "
                             f"{images.shape}")
        if self._image_shape is None:
            self._create(images.shape[1:])
        elif images.shape[1:] != self._image_shape:
            raise UsageError(f"every image must have the shape {self._image_shape}; received "
                             f"{images.shape[1:]}")
        explained = np.asarray(explained, np.int64)
        if len(heatmaps) != count or len(explained) != count or len(cluster) != count:
            raise UsageError(f"one heatmap, explained class and cluster per image: received "
                             f"{count} images, {len(heatmaps)} heatmaps, {len(explained)} "
                             f"classes, {len(cluster)} clusters")
        classes = len(self.class_names)
        if explained.min(initial=0) < 0 or explained.max(initial=0) >= classes:
            raise UsageError(f"explained classes must lie in 0..{classes - 1} (class_names "
                             f"has {classes}); received {explained.min()}..{explained.max()}")
        labels = np.full(count, -1) if labels is None else np.asarray(labels, np.int64)
        known = labels >= 0
        if labels.max(initial=-1) >= classes:
            raise UsageError(f"labels must lie in 0..{classes - 1} (class_names has {classes}) "
                             f"or be -1 (unknown); received up to {labels.max()}")
        probabilities = np.zeros((count, classes), np.float32) if predictions is None \
            else np.asarray(predictions, np.float32)
        if probabilities.shape != (count, classes):
            raise UsageError(f"predictions must be [n, classes] = [{count}, {classes}]; "
                             f"received {probabilities.shape}")
        start = self._rows["index"].shape[0]
        _append(self._rows["data"], display_pixels(images).transpose(0, 3, 1, 2))
        n_hot = np.zeros((count, classes), bool)
        n_hot[np.nonzero(known)[0], labels[known]] = True
        _append(self._rows["label"], n_hot)
        _append(self._rows["label_known"], known)
        _append(self._rows["index"], np.arange(start, start + count, dtype=np.uint32))
        _append(self._rows["attribution"], resize_cells(heatmaps, self._image_shape[:2])[:, None])
        _append(self._rows["explained"], explained.astype(np.uint32))
        _append(self._rows["prediction"], probabilities)
        self._per_sample["explained"].append(explained)
        self._per_sample["cluster"].append(np.asarray(cluster, np.int64))
        self._per_sample["layout"].append(np.asarray(layout, np.float32))

    def finish(self, model, clusters):
        """Write the analysis (model: the ClusterModel; clusters: its cluster dicts, for
        the flags), the label map and the project file; publish every file."""
        if self._image_shape is None:
            raise UsageError("nothing to export: add() at least one chunk of samples first")
        explained = np.concatenate(self._per_sample["explained"])
        cluster = np.concatenate(self._per_sample["cluster"])
        layout = np.concatenate(self._per_sample["layout"])
        flagged = {entry["id"] for entry in clusters if entry["flagged"]}
        analysis = self._staged.stage(os.path.join(self.directory, self.files["analysis"]))
        for label, fit in sorted(model.fits.items()):
            rows = np.nonzero((explained == label) & (cluster >= 0))[0]
            group = analysis.create_group(category_name(label))
            group["name"] = self.class_names[label] if label < len(self.class_names) else str(label)
            group["index"] = rows.astype(np.uint32)
            spectral = group.create_group("embedding").create_dataset(
                "spectral", data=layout[rows].astype(np.float32))
            spectral.attrs["eigenvalue"] = np.asarray(fit.eigenvalues[1:3], np.float32)
            partitions = group.create_group("cluster")
            local = partitions.create_dataset("sightline", data=cluster[rows] - model.offsets[label])
            local.attrs["embedding"] = "spectral"
            local.attrs["k"] = fit.cluster_count
            local.attrs["index"] = np.arange(2, dtype=np.uint32)
            marked = partitions.create_dataset(
                "flagged", data=np.isin(cluster[rows], list(flagged)).astype(np.int64))
            marked.attrs["embedding"] = "spectral"
            marked.attrs["k"] = 2
            marked.attrs["index"] = np.arange(2, dtype=np.uint32)
        self._write_json(LABEL_MAP_FILE, [
            {"index": index, "word_net_id": category_name(index), "name": name}
            for index, name in enumerate(self.class_names)])
        height, width, _ = self._image_shape
        self._write_json(PROJECT_FILE, {"project": {
            "name": self.title,
            "model": self.model,
            "label_map": LABEL_MAP_FILE,
            "dataset": {"name": self.name, "type": "hdf5", "path": self.files["input"],
                        "input_width": int(width), "input_height": int(height),
                        "up_sampling_method": "none", "down_sampling_method": "none"},
            "attributions": {"attribution_method": self.method,
                             "attribution_strategy": self.strategy,
                             "sources": [self.files["attribution"]]},
            "analyses": [{"analysis_method": "spectral", "sources": [self.files["analysis"]]}],
        }})
        self._staged.publish()
        return os.path.join(self.directory, PROJECT_FILE)

    def _write_json(self, name, payload):
        temporary = self._staged.stage(os.path.join(self.directory, name), open_h5=False)
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")

    def __enter__(self):
        return self

    def __exit__(self, kind, *rest):
        if self._staged.files:  # not finished: an error, or finish() never called
            self._staged.discard()
