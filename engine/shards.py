"""Shard files: the layout of DESIGN.md, written by a background thread, renamed into
place only when complete; verification against the manifest; the index file.

    shards/shard-00003-of-00016.h5     the maps and sample data of one index range
    shards/shard-00003-of-00016.json   its record: sha256, sample range, count, skipped

The record is written (atomically) only after the shard file has been renamed into
place, so a shard without a record, or whose checksum differs from it, is redone.
"""

import hashlib
import json
import os
import queue
import threading

import numpy as np

SHARD_DIRECTORY = "shards"
# Heatmap chunks hold several maps, up to this many bytes (or MAX_CHUNK_ROWS maps): HDF5
# pays per chunk (compression call, index entry), and one chunk per 3x3 or 28x28 map cost
# the writer 3 to 5 times as much as the compression of the bytes themselves. Reading
# one map back decompresses at most 64 KiB.
CHUNK_BYTES = 64 * 1024
MAX_CHUNK_ROWS = 256
INDEX_FILE = "index.h5"
SCALAR_DATASETS = {
    "sample/index": np.int64, "sample/label": np.int32, "pred/target": np.int32,
    "pred/class": np.int32, "pred/score": np.float32,
}


def map_chunk_rows(height, width):
    """Maps per HDF5 chunk for float16 maps [h,w]: as many as fit in CHUNK_BYTES, 1 to
    MAX_CHUNK_ROWS."""
    return int(max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // (2 * height * width))))


def shard_name(shard, num_shards):
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def shard_paths(out, shard, num_shards):
    base = os.path.join(out, SHARD_DIRECTORY, shard_name(shard, num_shards))
    return base + ".h5", base + ".json"


def sha256_of(path, block=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path, payload):
    """Write JSON under a temporary name, fsync, rename: readers see old or new, whole."""
    temporary = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(temporary, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(os.path.dirname(path) or ".")


def _fsync_directory(path):
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def read_record(out, shard, num_shards):
    """The shard's record, or None when the shard is not complete."""
    _, record_path = shard_paths(out, shard, num_shards)
    try:
        with open(record_path) as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None


def verify_shard(out, shard, num_shards, *, checksum=True):
    """(record, None) for a complete shard, else (None, what is wrong)."""
    path, _ = shard_paths(out, shard, num_shards)
    record = read_record(out, shard, num_shards)
    if not os.path.exists(path):
        return None, "missing"
    if record is None:
        return None, "no record (the run stopped before finishing it)"
    if checksum and sha256_of(path) != record.get("sha256"):
        return None, "checksum differs from its record (damaged or overwritten)"
    return record, None


class ShardWriter:
    """Writes shards on a background thread, fed through a bounded queue.

    `begin`, `append` (repeatedly), then `finish` or `abort`, per shard. The queue
    holds at most `depth` batches: compute runs ahead of the disk by that much and no
    more, so memory stays flat. An error on the writer thread is raised on the next
    call from the main thread.
    """

    def __init__(self, out, num_shards, layout, *, compression="gzip", depth=8,
                 on_finished=None):
        self.out = out
        self.on_finished = on_finished  # called on the writer thread with each record
        self.num_shards = num_shards
        self.layout = layout  # method -> (h, w); plus "attributes" and "key_length"
        self.compression = compression
        self.queue = queue.Queue(maxsize=depth)
        self.error = None
        self.thread = threading.Thread(target=self._run, name="sightline-writer", daemon=True)
        self.thread.start()

    # --- main thread
    def begin(self, shard, start, stop):
        self._put(("begin", (shard, start, stop)))

    def append(self, arrays):
        self._put(("append", arrays))

    def finish(self, skipped):
        self._put(("finish", skipped))

    def abort(self):
        self._put(("abort", None))

    def close(self):
        self._put(None)
        self.thread.join()
        self._raise()

    def _put(self, item):
        self._raise()
        while True:
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                self._raise()

    def _raise(self):
        if self.error is not None:
            raise self.error

    # --- writer thread
    def _run(self):
        state = None
        while True:
            item = self.queue.get()
            if item is None:
                if state is not None:
                    state.discard()
                return
            if self.error is not None:
                continue  # drain: the main thread will see the error
            kind, payload = item
            try:
                if kind == "begin":
                    state = _OpenShard(self, *payload)
                elif kind == "append":
                    state.append(payload)
                elif kind == "finish":
                    record = state.finish(payload)
                    state = None
                    if self.on_finished is not None:
                        self.on_finished(record)
                elif kind == "abort":
                    state.discard()
                    state = None
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                self.error = error
                if state is not None:
                    state.discard()
                    state = None


class _OpenShard:
    def __init__(self, writer, shard, start, stop):
        import h5py
        self.writer = writer
        self.shard, self.start, self.stop = shard, start, stop
        self.path, self.record_path = shard_paths(writer.out, shard, writer.num_shards)
        self.temporary = f"{self.path}.tmp-{os.getpid()}"
        self.count = 0
        self.handle = h5py.File(self.temporary, "w")
        compression = None if writer.compression == "none" else writer.compression
        options = dict(compression=compression, shuffle=compression is not None)
        if compression == "gzip":
            # Level 1: compression runs on the writer thread, and on a small machine it
            # takes its CPU from the model; after the byte shuffle, higher levels buy
            # little for heatmaps.
            options["compression_opts"] = 1
        layout = writer.layout
        for method, (height, width) in layout["maps"].items():
            self.handle.create_dataset(f"heatmaps/{method}", shape=(0, height, width),
                                       maxshape=(None, height, width), dtype=np.float16,
                                       chunks=(map_chunk_rows(height, width), height, width),
                                       **options)
            self.handle.create_dataset(f"heatmaps/{method}_scale", shape=(0,), maxshape=(None,),
                                       dtype=np.float32, chunks=(1024,), **options)
        for name, dtype in SCALAR_DATASETS.items():
            self.handle.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                       chunks=(1024,), **options)
        self.handle.create_dataset("sample/key", shape=(0,), maxshape=(None,),
                                   dtype=f"S{layout['key_length']}", chunks=(1024,), **options)
        for name, value in layout["attributes"].items():
            self.handle.attrs[name] = value
        self.handle.attrs["shard"] = shard
        self.handle.attrs["num_shards"] = writer.num_shards
        self.handle.attrs["sample_start"] = start
        self.handle.attrs["sample_stop"] = stop

    def append(self, arrays):
        rows = len(arrays["sample/index"])
        if rows == 0:
            return
        for name, values in arrays.items():
            dataset = self.handle[name]
            dataset.resize(self.count + rows, axis=0)
            dataset[self.count:self.count + rows] = values
        self.count += rows

    def finish(self, skipped):
        self.handle.attrs["num_samples"] = self.count
        self.handle.flush()
        self.handle.close()
        self.handle = None
        descriptor = os.open(self.temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(self.temporary, self.path)
        _fsync_directory(os.path.dirname(self.path))
        record = {
            "shard": self.shard, "file": os.path.relpath(self.path, self.writer.out),
            "sample_start": self.start, "sample_stop": self.stop, "num_samples": self.count,
            "sha256": sha256_of(self.path), "skipped": skipped,
        }
        write_json_atomic(self.record_path, record)
        return record

    def discard(self):
        if self.handle is not None:
            try:
                self.handle.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self.handle = None
        if os.path.exists(self.temporary):
            os.remove(self.temporary)


def remove_stale_temporaries(out, shards, num_shards):
    """Temporary files of these shards left by a killed run (this worker's shards only)."""
    folder = os.path.join(out, SHARD_DIRECTORY)
    if not os.path.isdir(folder):
        return
    prefixes = {shard_name(s, num_shards) + ".h5.tmp-" for s in shards}
    for name in os.listdir(folder):
        if any(name.startswith(p) for p in prefixes):
            os.remove(os.path.join(folder, name))


def build_index(out, num_shards, *, checksum=True):
    """Verify every shard, then stitch them with virtual datasets into index.h5.

    Raises ValueError naming the missing or damaged shards: a virtual dataset would
    silently read a missing source as fill values. Paths inside are relative, so the
    output folder can be moved as a whole.
    """
    import h5py
    records, problems = [], []
    for shard in range(num_shards):
        record, problem = verify_shard(out, shard, num_shards, checksum=checksum)
        if problem:
            problems.append(f"{shard_name(shard, num_shards)}.h5: {problem}")
        records.append(record)
    if problems:
        raise ValueError(f"cannot build {INDEX_FILE}: {len(problems)} of {num_shards} shard(s) "
                         f"incomplete: {'; '.join(problems[:5])}"
                         f"{' ...' if len(problems) > 5 else ''}; run the job again to finish them")
    total = sum(r["num_samples"] for r in records)
    first_path, _ = shard_paths(out, 0, num_shards)
    with h5py.File(first_path, "r") as first:
        names = []
        first.visititems(lambda name, item: names.append(name)
                         if isinstance(item, h5py.Dataset) else None)
        specs = {name: (first[name].shape[1:], first[name].dtype) for name in names}
        attributes = dict(first.attrs)
    temporary = os.path.join(out, f"{INDEX_FILE}.tmp-{os.getpid()}")
    with h5py.File(temporary, "w") as index:
        for name, (shape, dtype) in specs.items():
            layout = h5py.VirtualLayout(shape=(total, *shape), dtype=dtype)
            offset = 0
            for record in records:
                count = record["num_samples"]
                if count:
                    source = h5py.VirtualSource(record["file"], name, shape=(count, *shape))
                    layout[offset:offset + count] = source
                offset += count
            index.create_virtual_dataset(name, layout)
        for key, value in attributes.items():
            if key not in ("shard", "sample_start", "sample_stop", "num_samples"):
                index.attrs[key] = value
        index.attrs["num_samples"] = total
    os.replace(temporary, os.path.join(out, INDEX_FILE))
    return records
