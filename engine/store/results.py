"""Reading an output folder back, the store's one reader: maps by sample index or key,
streamed chunks for the audit, the index step, and a human summary for `sightline
inspect`."""

import os
from typing import Union

import numpy as np

from sightline.store.layout import (INDEX_FILE, MANIFEST_FILE, PRED_CLASS, PRED_SCORE,
                                    PRED_TARGET, RELEVANCE, RELEVANCE_ATTRIBUTE,
                                    RELEVANCE_COLUMNS, RELEVANCE_SCALE, SAMPLE_GROUP,
                                    SAMPLE_INDEX, SAMPLE_KEY, SAMPLE_LABEL, heatmap,
                                    heatmap_scale)
from sightline.store.manifest import read_manifest, refresh_manifest, run_source
from sightline.store.shards import (PER_SHARD_ATTRIBUTES, build_index, label_names,
                                    remove_stale_temporaries, verify_shard, verify_shards)
from sightline.errors import UsageError

# What `sightline inspect` calls a shard, by the kind of its problem (see ShardProblem).
INSPECT_STATES = {"missing": "pending", "unfinished": "pending", "lost": "missing",
                  "damaged": "damaged", "foreign": "other run"}


def index_output(out):
    """Verify every shard against its record and the run's fingerprint, build index.h5,
    rewrite the manifest."""
    manifest = read_manifest(out)
    remove_stale_temporaries(out)
    records = build_index(out, manifest["num_shards"], fingerprint=manifest.get("fingerprint"))
    refresh_manifest(out)
    return records


class Results:
    """The maps of a complete run, read lazily: from index.h5 when it was built, else
    straight from the run's verified shards (a multi-worker job before `sightline
    index`), in source order either way.

    results.methods, len(results), results.sample_indices (int64 [N], source order)
    results.manifest, results.attrs (the run's shard attributes: input_size, store, ...)
    results.class_names: the model's class names in class order ([num_classes] str, what
        /pred/class, /pred/target and /sample/label index), None when the run had none
    results.group_names: the source's class folders ([G] str, what /sample/group
        indexes), None without folders; results.num_classes (None for older runs)
    results.labels_are: "classes" when some /sample/label is known (a label is the
        model's class), "groups" when the folders are only groups, else "none"
    results.map_shape(method) -> (h, w) as stored
    results.chunks(names, rows=256) -> dicts {name: array of at most `rows` rows}, in
        source order: the streaming read (memory flat in N)
    results.heatmap(method, index=i) or (method, key="cat/001.jpg") -> float32 [h,w]
        (scaled to [0, 1]; raw=True multiplies the scale back: ReLU of the raw map)
    results.sample(index=i) -> dict of the sample's label, target, class, score, key
    results.relevance: how each channel's relevance was stored, None when it was not;
        results.relevance_of(chunk) -> float32 [n, K] from a chunk of RELEVANCE and
        RELEVANCE_SCALE (results.relevance_channels = K)
    results.read(name) -> a whole dataset, e.g. PRED_CLASS (per-sample vectors only:
        a whole heatmap dataset does not fit in memory for a large run)

    checksum: verify the shards' sha256 when there is no index (the index step did).
    """

    def __init__(self, out, *, checksum=True):
        import h5py
        self._h5py = h5py
        self.out = out
        self.manifest = read_manifest(out)
        self.methods = tuple(self.manifest["run"]["methods"])
        index_path = os.path.join(out, INDEX_FILE)
        self.indexed = os.path.exists(index_path)
        self._paths = [index_path] if self.indexed else self._shard_paths(checksum)
        counts, indices = [], []
        for path in self._paths:
            with h5py.File(path, "r") as handle:
                indices.append(handle[SAMPLE_INDEX][:])
                counts.append(len(indices[-1]))
                if path == self._paths[0]:
                    self.attrs = {k: v for k, v in handle.attrs.items()
                                  if k not in PER_SHARD_ATTRIBUTES}
                    self._map_shapes = {m: tuple(handle[heatmap(m)].shape[1:])
                                        for m in self.methods}
                    self.relevance_channels = (int(handle[RELEVANCE].shape[1])
                                               if RELEVANCE in handle else None)
                    self._datasets = set()
                    handle.visititems(lambda name, item: self._datasets.add(name)
                                      if isinstance(item, h5py.Dataset) else None)
        self._offsets = np.cumsum([0, *counts])  # part p holds rows [offsets[p], offsets[p+1])
        self.sample_indices = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        # Rows by sample index, found by bisection when the indices ascend (shards hold
        # consecutive ranges): a dict of a million Python ints would be about 100 MB and
        # a second of a streaming audit's start that never looks a sample up.
        self._ascending = bool(np.all(np.diff(self.sample_indices) > 0))
        self._row_of_index = None
        self._row_of_key = None
        self._open_part, self._open_handle = None, None
        self.class_names, self.group_names, self.num_classes = label_names(self.attrs)
        self._labels_are = None

    def has(self, name):
        """Whether the run stores dataset `name` (older runs have no /sample/group)."""
        return name in self._datasets

    @property
    def labels_are(self):
        if self._labels_are is None:
            if (self.read(SAMPLE_LABEL) >= 0).any():
                self._labels_are = "classes"
            elif self.group_names and self.has(SAMPLE_GROUP):
                self._labels_are = "groups"
            else:
                self._labels_are = "none"
        return self._labels_are

    def class_name(self, index):
        """The name of the model's class `index` ('class k' when the run has no names)."""
        index = int(index)
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    def _shard_paths(self, checksum):
        num_shards = self.manifest["num_shards"]
        records, problems = verify_shards(self.out, num_shards, checksum=checksum,
                                          fingerprint=self.manifest.get("fingerprint"))
        if problems:
            raise UsageError(f"{self.out!r} is not complete: {len(problems)} of {num_shards} "
                             f"shard(s) are not finished shards of this run "
                             f"({'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}); "
                             "run the job again to finish them")
        if not records:
            raise UsageError(f"{self.out!r} holds no shards")
        return [os.path.join(self.out, record["file"]) for record in records]

    def __len__(self):
        return len(self.sample_indices)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._open_handle is not None:
            self._open_handle.close()
        self._open_part, self._open_handle = None, None

    def _part(self, part):
        """The open file of one part (index.h5, or one shard); one file open at a time."""
        if self._open_part != part:
            self.close()
            self._open_handle = self._h5py.File(self._paths[part], "r")
            self._open_part = part
        return self._open_handle

    def _locate(self, row):
        part = int(np.searchsorted(self._offsets, row, side="right")) - 1
        return self._part(part), row - int(self._offsets[part])

    def map_shape(self, method):
        self._check_method(method)
        return self._map_shapes[method]

    def _check_method(self, method):
        if method not in self.methods:
            raise KeyError(f"method {method!r} was not run; this run has {', '.join(self.methods)}")

    def chunks(self, names, rows=256):
        """Yield {name: array} of at most `rows` consecutive samples, in source order; a
        chunk never spans two shards."""
        names = list(names)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise UsageError(f"rows must be an integer >= 1; got {rows!r}")
        # Files of their own: heatmap() between two chunks must not close them.
        for part, path in enumerate(self._paths):
            count = int(self._offsets[part + 1] - self._offsets[part])
            with self._h5py.File(path, "r") as handle:
                for start in range(0, count, rows):
                    stop = min(count, start + rows)
                    yield {name: handle[name][start:stop] for name in names}

    def row(self, index=None, key=None):
        if (index is None) == (key is None):
            raise UsageError("pass exactly one of index= or key=")
        if key is not None:
            if self._row_of_key is None:
                keys = self.read(SAMPLE_KEY)
                self._row_of_key = {k.decode("utf-8"): row for row, k in enumerate(keys)}
            if key not in self._row_of_key:
                raise KeyError(f"no sample with key {key!r} (skipped, or not in this run)")
            return self._row_of_key[key]
        index = int(index)
        if self._ascending:
            row = int(np.searchsorted(self.sample_indices, index))
            if row < len(self.sample_indices) and self.sample_indices[row] == index:
                return row
        else:
            if self._row_of_index is None:
                self._row_of_index = {int(i): row for row, i in enumerate(self.sample_indices)}
            if index in self._row_of_index:
                return self._row_of_index[index]
        raise KeyError(f"no sample with index {index} (skipped, or not in this run)")

    def heatmap(self, method, index=None, key=None, raw=False):
        self._check_method(method)
        handle, row = self._locate(self.row(index=index, key=key))
        values = handle[heatmap(method)][row].astype(np.float32)
        if raw:
            values = values * handle[heatmap_scale(method)][row]
        return values

    @property
    def relevance(self):
        """How the shards' channel relevance was computed (GRADIENT_RELEVANCE or
        CAM_RELEVANCE of sightline.compute.step), or None: a run written before it, or a model that
        shows no feature map."""
        if not self.relevance_channels:
            return None
        return str(self.attrs.get(RELEVANCE_ATTRIBUTE, "")) or None

    def relevance_of(self, chunk):
        """A chunk holding RELEVANCE and RELEVANCE_SCALE -> float32 [n, K], the raw
        relevance of each channel to the explained class."""
        return chunk[RELEVANCE].astype(np.float32) * chunk[RELEVANCE_SCALE][:, None]

    def sample(self, index=None, key=None):
        row = self.row(index=index, key=key)
        handle, local = self._locate(row)
        return {
            "index": int(self.sample_indices[row]),
            "key": handle[SAMPLE_KEY][local].decode("utf-8"),
            "label": int(handle[SAMPLE_LABEL][local]),
            "group": int(handle[SAMPLE_GROUP][local]) if self.has(SAMPLE_GROUP) else -1,
            "target": int(handle[PRED_TARGET][local]),
            "predicted": int(handle[PRED_CLASS][local]),
            "score": float(handle[PRED_SCORE][local]),
        }

    def read(self, name):
        parts = [chunk[name] for chunk in self.chunks([name], rows=1 << 20)]
        if parts:
            return np.concatenate(parts)
        with self._h5py.File(self._paths[0], "r") as handle:
            return handle[name][:0]


def open_results(out: Union[str, os.PathLike[str]], *, checksum: bool = True) -> Results:
    """Open the output folder of a complete `sightline explain` run, indexed or not."""
    return Results(out, checksum=checksum)


def _labels_line(run):
    """What the run's labels mean, in a few words (older runs did not record it)."""
    names = run.get("class_names")
    shown = (f"; class names {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
             if names else "")
    groups = run.get("group_names") or []
    kind = run.get("labels_are")
    if kind == "groups":
        return (f"class folders {', '.join(groups[:8])} are groups, not the model's classes "
                f"(no --class-names){shown}")
    if kind == "classes":
        return f"the model's classes{shown}"
    return ("none" if kind == "none" else "not recorded") + shown


def describe_output(out):
    """A few lines a person can read: what ran, on what, and the state of every shard.

    Every shard's checksum is verified: reading them all is the price of reporting
    damage, which is what a person runs inspect to find."""
    manifest = read_manifest(out)
    run = manifest["run"]
    skipped = manifest.get("skipped", [])
    # Entries without a sample index are files of the data folder that are no image
    # (README.txt): listed in the manifest, but no input was lost.
    unreadable = [item for item in skipped if item.get("index") is not None]
    ignored = [item for item in skipped if item.get("index") is None]
    states = {}
    for entry in manifest["shards"]:
        _, problem = verify_shard(out, entry["shard"], manifest["num_shards"],
                                  fingerprint=manifest.get("fingerprint"))
        state = "complete" if problem is None else INSPECT_STATES[problem.kind]
        states.setdefault(state, []).append(entry["shard"])
    lines = [
        f"output:     {os.path.abspath(out)}",
        f"model:      {manifest.get('model')} (sha256 {run['model_sha256'][:12]}, "
        f"layer {run['layer']}, logits {run['logits_layer']})",
        f"methods:    {', '.join(run['methods'])} (map_size {run['map_size']}, precision "
        f"{run['precision']}, target {run['target']})",
        f"source:     {run['source']}, {run['num_samples']} samples, images "
        f"{'x'.join(map(str, run['image_shape']))} (resize {run.get('resize', 'stretch')}), "
        f"preprocess {run['preprocess']}",
        f"labels:     {_labels_line(run)}",
        f"shards:     {_shard_sizes(manifest['shards'])}; "
        + ", ".join(f"{len(v)} {k}" for k, v in sorted(states.items())),
        f"skipped:    {len(unreadable)} unreadable image(s)",
        f"ignored:    {len(ignored)} other file(s) in the data folder, not images",
        f"timing:     {_timing(manifest.get('timing'))}",
        f"index:      {'present' if os.path.exists(os.path.join(out, INDEX_FILE)) else 'not built'}",
    ]
    for state in sorted(set(INSPECT_STATES.values())):
        if state in states:
            shown = ", ".join(str(s) for s in states[state][:20])
            lines.append(f"{state + ':':<11} shards {shown}"
                         f"{' ...' if len(states[state]) > 20 else ''}")
    for item in unreadable[:10]:
        lines.append(f"  skipped {item['key']}: {item['reason']}")
    for item in ignored[:10]:
        lines.append(f"  ignored {item['key']}: {item['reason']}")
    return "\n".join(lines)


def _shard_sizes(shards):
    """'1 shard of 64 samples', '16 shards of 1024 samples', '3 shards of 10 samples,
    the last of 5': from the shard table's sample ranges."""
    sizes = [entry["sample_stop"] - entry["sample_start"] for entry in shards]
    if not sizes:
        return "no shards"
    text = f"{len(sizes)} shard{'s' if len(sizes) > 1 else ''} of {sizes[0]} samples"
    return text + (f", the last of {sizes[-1]}" if sizes[-1] != sizes[0] else "")


def _timing(timing):
    """The manifest's start-up and rate (see sightline.jobs.progress) in words."""
    if not timing:
        return "not recorded"
    startup = timing.get("startup_seconds")
    text = "no batch computed" if startup is None else f"start-up {startup} s"
    if timing.get("images_per_second") is None:
        return text + f", no rate ({timing.get('rate_note') or 'not measured'})"
    return (text + f", then {timing['images_per_second']} images/s "
            f"({timing['steady_images']} images in {timing['steady_seconds']} s)")


# The datasets a reader asks chunks() for to get relevance_of(chunk).
__all__ = ["open_results", "Results", "index_output", "describe_output", "MANIFEST_FILE",
           "RELEVANCE_COLUMNS", "run_source"]
