"""Reading an output folder back: maps by sample index or key, the index step, and a
human summary for `sightline inspect`."""

import os

import numpy as np

from sightline.store.manifest import MANIFEST_FILE, read_manifest, refresh_manifest
from sightline.store.shards import INDEX_FILE, build_index, remove_stale_temporaries, verify_shard

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
    """The maps of a finished run, read lazily from index.h5.

    results.methods, len(results), results.sample_indices (int64 [N], source order)
    results.heatmap(method, index=i) or (method, key="cat/001.jpg") -> float32 [h,w]
        (scaled to [0, 1]; raw=True multiplies the scale back: ReLU of the raw map)
    results.sample(index=i) -> dict of the sample's label, target, class, score, key
    results.read(name) -> a whole dataset, e.g. "pred/class", "heatmaps/gradcam_scale"
    """

    def __init__(self, out):
        import h5py
        self.out = out
        self.manifest = read_manifest(out)
        path = os.path.join(out, INDEX_FILE)
        if not os.path.exists(path):
            raise ValueError(f"{out!r} has no {INDEX_FILE} yet: the run is not complete "
                             f"({self.manifest['shards_complete']} of "
                             f"{self.manifest['num_shards']} shards); finish it, or run "
                             f"`sightline index {out}` after a multi-worker job")
        self.file = h5py.File(path, "r")
        self.methods = tuple(self.manifest["run"]["methods"])
        self.sample_indices = self.file["sample/index"][:]
        self._row_of_index = {int(i): row for row, i in enumerate(self.sample_indices)}
        self._row_of_key = None

    def __len__(self):
        return len(self.sample_indices)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.file.close()

    def row(self, index=None, key=None):
        if (index is None) == (key is None):
            raise TypeError("pass exactly one of index= or key=")
        if key is not None:
            if self._row_of_key is None:
                keys = self.file["sample/key"][:]
                self._row_of_key = {k.decode("utf-8"): row for row, k in enumerate(keys)}
            if key not in self._row_of_key:
                raise KeyError(f"no sample with key {key!r} (skipped, or not in this run)")
            return self._row_of_key[key]
        if int(index) not in self._row_of_index:
            raise KeyError(f"no sample with index {index} (skipped, or not in this run)")
        return self._row_of_index[int(index)]

    def heatmap(self, method, index=None, key=None, raw=False):
        if method not in self.methods:
            raise KeyError(f"method {method!r} was not run; this run has {', '.join(self.methods)}")
        row = self.row(index=index, key=key)
        values = self.file[f"heatmaps/{method}"][row].astype(np.float32)
        if raw:
            values = values * self.file[f"heatmaps/{method}_scale"][row]
        return values

    def sample(self, index=None, key=None):
        row = self.row(index=index, key=key)
        return {
            "index": int(self.sample_indices[row]),
            "key": self.file["sample/key"][row].decode("utf-8"),
            "label": int(self.file["sample/label"][row]),
            "target": int(self.file["pred/target"][row]),
            "predicted": int(self.file["pred/class"][row]),
            "score": float(self.file["pred/score"][row]),
        }

    def read(self, name):
        return self.file[name][:]


def open_results(out):
    """Open the output folder of a finished `sightline explain` run."""
    return Results(out)


def describe_output(out):
    """A few lines a person can read: what ran, on what, and the state of every shard.

    Every shard's checksum is verified: reading them all is the price of reporting
    damage, which is what a person runs inspect to find."""
    manifest = read_manifest(out)
    run = manifest["run"]
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
        f"{'x'.join(map(str, run['image_shape']))}, preprocess {run['preprocess']}",
        f"shards:     {manifest['num_shards']} of {run['shard_size']} samples; "
        + ", ".join(f"{len(v)} {k}" for k, v in sorted(states.items())),
        f"skipped:    {manifest.get('num_skipped', len(manifest.get('skipped', [])))} unreadable "
        "input(s)",
        f"index:      {'present' if os.path.exists(os.path.join(out, INDEX_FILE)) else 'not built'}",
    ]
    for state in sorted(set(INSPECT_STATES.values())):
        if state in states:
            shown = ", ".join(str(s) for s in states[state][:20])
            lines.append(f"{state + ':':<11} shards {shown}"
                         f"{' ...' if len(states[state]) > 20 else ''}")
    for item in manifest.get("skipped", [])[:10]:
        lines.append(f"  skipped {item['key']}: {item['reason']}")
    return "\n".join(lines)


__all__ = ["open_results", "Results", "index_output", "describe_output", "MANIFEST_FILE"]
