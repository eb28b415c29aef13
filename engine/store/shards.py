"""Shard files: the layout of DESIGN.md, written by a background thread, renamed into
place only when complete; verification against the manifest; the index file.

    shards/shard-00003-of-00016.h5     the maps and sample data of one index range
    shards/shard-00003-of-00016.json   its record: sha256, sample range, count, skipped,
                                       the run's fingerprint and the worker that wrote it

The record is written (atomically) only after the shard file has been renamed into
place, so a shard without a record, or whose checksum differs from it, is redone. A
shard whose record carries another run's fingerprint (left by an --overwrite that other
workers have not reached yet) is redone too, and never indexed.
"""

import dataclasses
import json
import os
import queue
import threading

import numpy as np

from sightline.errors import UsageError
from sightline.store.files import (TEMPORARY_MARK, fsync_directory, remove_quietly, sha256_of,
                                   temporary_path, write_json_atomic, writer_is_gone)
from sightline.store.layout import (
    CLASS_NAMES_ATTRIBUTE, GROUP_NAMES_ATTRIBUTE, INDEX_FILE,
    NUM_CLASSES_ATTRIBUTE, RELEVANCE, RELEVANCE_SCALE, SAMPLE_INDEX, SAMPLE_KEY,
    SCALAR_DATASETS, SCALAR_DEFAULTS, SHARD_DIRECTORY, heatmap, heatmap_scale)

# Heatmap chunks hold several maps, up to this many bytes (or MAX_CHUNK_ROWS maps): HDF5
# pays per chunk (compression call, index entry), and one chunk per 3x3 or 28x28 map cost
# the writer 3 to 5 times as much as the compression of the bytes themselves. Reading
# one map back decompresses at most 64 KiB.
CHUNK_BYTES = 64 * 1024
MAX_CHUNK_ROWS = 256
# Rows per chunk of the per-sample scalars (index, label, key, class, score, scale).
SCALAR_CHUNK_ROWS = 1024
# Attributes that describe one shard, not the run: the index (and the reader of a run
# without one) leaves them out of the run's attributes.
PER_SHARD_ATTRIBUTES = ("shard", "sample_start", "sample_stop", "num_samples", "worker",
                        "workers")


def label_attributes(class_names, group_names, num_classes):
    """The shard attributes that say what /pred/class, /sample/label and /sample/group
    mean; empty lists are left out (HDF5 cannot type an empty list of strings)."""
    attributes = {NUM_CLASSES_ATTRIBUTE: int(num_classes)}
    if class_names:
        attributes[CLASS_NAMES_ATTRIBUTE] = [str(name) for name in class_names]
    if group_names:
        attributes[GROUP_NAMES_ATTRIBUTE] = [str(name) for name in group_names]
    return attributes


def label_names(attributes):
    """(class names, group names, number of classes) from a shard's or index's
    attributes: tuples, or None when the run did not record them."""
    def names(key):
        value = attributes.get(key)
        return None if value is None else tuple(str(v) for v in np.atleast_1d(value))
    count = attributes.get(NUM_CLASSES_ATTRIBUTE)
    return (names(CLASS_NAMES_ATTRIBUTE), names(GROUP_NAMES_ATTRIBUTE),
            None if count is None else int(count))


def resolve_compression(compression, on_accelerator):
    """The shard filter for a `compression` setting: "auto" is gzip when the step runs on
    an accelerator and none when it runs on the CPU.

    The writer compresses on its own thread, and on a CPU-only machine every cycle it
    spends is taken from the model: on a 2-core Xeon the job (Fashion-MNIST CNN, Grad-CAM
    and saliency) ran at 0.95 of explain() on the same arrays with no compression, 0.80
    with lzf and 0.56 with gzip, for files only a third smaller (the demo's trained models'
    maps: gzip 0.61-0.70 of the raw bytes, lzf 0.69-0.77). With a GPU the host's cores are
    otherwise idle and the maps are the bytes that fill disks: gzip costs nothing there.
    """
    if compression == "auto":
        return "gzip" if on_accelerator else "none"
    return compression


def map_chunk_rows(height, width):
    """Maps per HDF5 chunk for float16 maps [h,w]: as many as fit in CHUNK_BYTES, 1 to
    MAX_CHUNK_ROWS."""
    return int(max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // (2 * height * width))))


def shard_name(shard, num_shards):
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def shard_paths(out, shard, num_shards):
    base = os.path.join(out, SHARD_DIRECTORY, shard_name(shard, num_shards))
    return base + ".h5", base + ".json"


def read_record(out, shard, num_shards):
    """The shard's record, or None when the shard is not complete."""
    _, record_path = shard_paths(out, shard, num_shards)
    try:
        with open(record_path) as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None


@dataclasses.dataclass(frozen=True)
class ShardProblem:
    """Why a shard cannot be used. kind is one of:

    missing     neither file nor record: not written yet
    unfinished  the file without its record: the run stopped between the two
    lost        the record without its file: the file was deleted or moved
    damaged     unreadable record, or file bytes that differ from its checksum
    foreign     the record carries another run's fingerprint
    """

    kind: str
    message: str

    def __str__(self):
        return self.message


def verify_shard(out, shard, num_shards, *, checksum=True, fingerprint=None):
    """(record, None) for a complete shard, else (None, ShardProblem).

    fingerprint: the run's fingerprint hash; a record that carries another is a problem.
    None skips that check (output written without fingerprints).
    """
    path, record_path = shard_paths(out, shard, num_shards)
    has_file, has_record = os.path.exists(path), os.path.exists(record_path)
    if not has_file:
        if has_record:
            return None, ShardProblem("lost", "missing, though its record says it was "
                                              "finished (deleted or moved)")
        return None, ShardProblem("missing", "missing")
    if not has_record:
        return None, ShardProblem("unfinished", "no record (the run stopped before "
                                                "finishing it)")
    record = read_record(out, shard, num_shards)
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return None, ShardProblem("damaged", "its record is unreadable (damaged)")
    if fingerprint is not None and record.get("fingerprint") != fingerprint:
        theirs = str(record.get("fingerprint") or "none")[:12]
        return None, ShardProblem("foreign", f"written by another run (fingerprint {theirs}, "
                                             f"this run's {fingerprint[:12]})")
    if checksum and sha256_of(path) != record["sha256"]:
        return None, ShardProblem("damaged", "checksum differs from its record (damaged or "
                                             "overwritten)")
    return record, None


class ShardWriter:
    """Writes shards on a background thread, fed through a bounded queue.

    `begin`, `append` (repeatedly), then `finish` or `abort`, per shard. The queue
    holds at most `depth` batches: compute runs ahead of the disk by that much and no
    more, so memory stays flat. An error on the writer thread is raised on the next
    call from the main thread. `abort` with no shard open does nothing: a stop signal
    can arrive before the first batch.

    Each shard's record and file attributes carry `fingerprint` (the run's) and
    `worker` of `workers` (who wrote it), so a resume can refuse another run's shard
    and a test can check that worker i wrote only shards s with s mod W == i.
    """

    def __init__(self, out, num_shards, layout, *, compression="gzip", depth=8,
                 on_finished=None, fingerprint=None, worker=0, workers=1):
        self.out = out
        self.on_finished = on_finished  # called on the writer thread with each record
        self.num_shards = num_shards
        self.fingerprint = fingerprint
        self.worker, self.workers = worker, workers
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
                    state = None
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
                    if state is not None:
                        state.discard()
                        state = None
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                self.error = error
                if state is not None:
                    state.discard()
                    state = None


class _PendingRows:
    """Rows of one dataset not yet written: batches are gathered until they fill whole
    chunks. A batch that ends inside a chunk, written as it came, made HDF5 read,
    decompress and recompress that chunk again with the next batch."""

    def __init__(self, chunk_rows):
        self.chunk_rows = chunk_rows
        self.parts, self.rows = [], 0
        self.written = 0  # rows already in the dataset

    def add(self, values):
        """Take a batch; return the rows that now fill whole chunks, or None."""
        self.parts.append(values)
        self.rows += len(values)
        whole = (self.rows // self.chunk_rows) * self.chunk_rows
        if whole == 0:
            return None
        block = self.rest()
        if whole < len(block):
            self.parts, self.rows = [block[whole:]], len(block) - whole
        return block[:whole]

    def rest(self):
        """Every row gathered, taken out."""
        block = self.parts[0] if len(self.parts) == 1 else (
            np.concatenate(self.parts) if self.parts else None)
        self.parts, self.rows = [], 0
        return block


class _OpenShard:
    def __init__(self, writer, shard, start, stop):
        import h5py
        self.writer = writer
        self.shard, self.start, self.stop = shard, start, stop
        self.path, self.record_path = shard_paths(writer.out, shard, writer.num_shards)
        self.temporary = temporary_path(self.path)
        self.count = 0
        self.pending = {}  # dataset name -> _PendingRows
        self.datasets = {}  # dataset name -> its h5py handle, opened once per shard
        self.handle = h5py.File(self.temporary, "w")
        try:
            self._create_layout(shard, start, stop)
        except BaseException:
            self.discard()
            raise

    def _create_layout(self, shard, start, stop):
        writer = self.writer
        compression = None if writer.compression == "none" else writer.compression
        options = dict(compression=compression, shuffle=compression is not None)
        if compression == "gzip":
            # Level 1: compression runs on the writer thread, and on a small machine it
            # takes its CPU from the model; after the byte shuffle, higher levels buy
            # little for heatmaps.
            options["compression_opts"] = 1
        layout = writer.layout
        # Datasets are created at the shard's full size once (the range is known) and
        # shrunk at `finish` if samples were skipped: no resize per batch.
        size = stop - start

        def create(name, shape, dtype, chunk_rows):
            self.datasets[name] = self.handle.create_dataset(
                name, shape=(size, *shape), maxshape=(None, *shape), dtype=dtype,
                chunks=(chunk_rows, *shape), **options)
            self.pending[name] = _PendingRows(chunk_rows)

        for method, (height, width) in layout["maps"].items():
            create(heatmap(method), (height, width), np.float16,
                   map_chunk_rows(height, width))
            create(heatmap_scale(method), (), np.float32, SCALAR_CHUNK_ROWS)
        for name, dtype in SCALAR_DATASETS.items():
            create(name, (), dtype, SCALAR_CHUNK_ROWS)
        channels = layout.get("relevance_channels")
        if channels:
            create(RELEVANCE, (channels,), np.float16, map_chunk_rows(1, channels))
            create(RELEVANCE_SCALE, (), np.float32, SCALAR_CHUNK_ROWS)
        create(SAMPLE_KEY, (), f"S{layout['key_length']}", SCALAR_CHUNK_ROWS)
        for name, value in layout["attributes"].items():
            self.handle.attrs[name] = value
        self.handle.attrs["shard"] = shard
        self.handle.attrs["num_shards"] = writer.num_shards
        self.handle.attrs["sample_start"] = start
        self.handle.attrs["sample_stop"] = stop
        self.handle.attrs["worker"] = writer.worker
        self.handle.attrs["workers"] = writer.workers
        if writer.fingerprint is not None:
            self.handle.attrs["fingerprint"] = writer.fingerprint

    def append(self, arrays):
        rows = len(arrays[SAMPLE_INDEX])
        if rows == 0:
            return
        missing = {name: np.full(rows, value, SCALAR_DATASETS[name])
                   for name, value in SCALAR_DEFAULTS.items() if name not in arrays}
        for name, values in {**arrays, **missing}.items():
            self._write(name, self.pending[name].add(values))
        self.count += rows

    def _write(self, name, block):
        """Write `block` (whole chunks, or the last rows at finish) where the dataset's
        written rows end: a chunk is compressed once, never read back and rewritten."""
        if block is None or len(block) == 0:
            return
        pending = self.pending[name]
        self.datasets[name][pending.written:pending.written + len(block)] = block
        pending.written += len(block)

    def finish(self, skipped):
        for name, pending in self.pending.items():
            self._write(name, pending.rest())
            if pending.written != self.stop - self.start:
                self.datasets[name].resize(pending.written, axis=0)
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
        fsync_directory(os.path.dirname(self.path))
        record = {
            "shard": self.shard, "file": os.path.relpath(self.path, self.writer.out),
            "sample_start": self.start, "sample_stop": self.stop, "num_samples": self.count,
            "sha256": sha256_of(self.path), "skipped": skipped,
            "fingerprint": self.writer.fingerprint, "worker": self.writer.worker,
            "workers": self.writer.workers,
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
        remove_quietly(self.temporary)


def read_shard_columns(out, shards, num_shards, names):
    """Yield {name: array} of per-sample datasets `names` of each finished shard in
    `shards` (whole shards: these are the small vectors, never the heatmaps); a name the
    shard does not hold (an older run's /sample/group) comes as its default."""
    import h5py
    for shard in shards:
        path, _ = shard_paths(out, shard, num_shards)
        with h5py.File(path, "r") as handle:
            count = int(handle[SAMPLE_INDEX].shape[0])
            yield {name: handle[name][()] if name in handle
                   else np.full(count, SCALAR_DEFAULTS[name], SCALAR_DATASETS[name])
                   for name in names}


def remove_stale_temporaries(out, shards=(), num_shards=None):
    """Temporary files left by killed runs; returns the paths removed.

    Shard temporaries (.h5 and .json) of `shards`: all of them. Only this worker
    writes these shards, so whatever is there was left by an earlier process; another
    worker's shard temporaries are that worker's to remove, as it may be writing them.
    Temporaries in OUT itself (manifest.json, index.h5, ...), which every worker
    writes: only those whose writer is known to be gone (see writer_is_gone).
    """
    removed = []
    folder = os.path.join(out, SHARD_DIRECTORY)
    own = {shard_name(s, num_shards) for s in shards}
    if own and os.path.isdir(folder):
        for name in os.listdir(folder):
            final, mark, _ = name.partition(TEMPORARY_MARK)
            stem, extension = os.path.splitext(final)
            if mark and stem in own and extension in (".h5", ".json"):
                remove_quietly(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    if os.path.isdir(out):
        for name in os.listdir(out):
            path = os.path.join(out, name)
            if TEMPORARY_MARK in name and os.path.isfile(path) and writer_is_gone(path):
                remove_quietly(path)
                removed.append(path)
    return removed


def verify_shards(out, num_shards, *, checksum=True, fingerprint=None, verified=()):
    """(records, problems) of every shard in shard order: records[s] is None where
    problems holds a line "shard-....h5: why" for it (see verify_shard). verified: shards
    whose bytes this process has just checksummed (written or resumed by it): their
    records are still read and matched, their files not read again."""
    records, problems = [], []
    verified = set(verified)
    for shard in range(num_shards):
        record, problem = verify_shard(out, shard, num_shards,
                                       checksum=checksum and shard not in verified,
                                       fingerprint=fingerprint)
        if problem:
            problems.append(f"{shard_name(shard, num_shards)}.h5: {problem}")
        records.append(record)
    return records, problems


def build_index(out, num_shards, *, checksum=True, fingerprint=None, verified=()):
    """Verify every shard, then stitch them with virtual datasets into index.h5.

    Raises ValueError naming the missing, damaged or other-run shards (fingerprint: the
    run's, see verify_shard): a virtual dataset would silently read a missing source as
    fill values, and would as silently mix two runs. Paths inside are relative, so the
    output folder can be moved as a whole.
    """
    import h5py
    records, problems = verify_shards(out, num_shards, checksum=checksum, fingerprint=fingerprint,
                                      verified=verified)
    if problems:
        raise UsageError(f"cannot build {INDEX_FILE}: {len(problems)} of {num_shards} shard(s) "
                         f"are not finished shards of this run: {'; '.join(problems[:5])}"
                         f"{' ...' if len(problems) > 5 else ''}; run the job again to finish them")
    total = sum(r["num_samples"] for r in records)
    first_path, _ = shard_paths(out, 0, num_shards)
    with h5py.File(first_path, "r") as first:
        names = []
        first.visititems(lambda name, item: names.append(name)
                         if isinstance(item, h5py.Dataset) else None)
        specs = {name: (first[name].shape[1:], first[name].dtype) for name in names}
        attributes = dict(first.attrs)
    temporary = temporary_path(os.path.join(out, INDEX_FILE))
    try:
        _write_index(temporary, specs, records, attributes, total)
        os.replace(temporary, os.path.join(out, INDEX_FILE))
    except BaseException:
        remove_quietly(temporary)
        raise
    return records


def _write_index(temporary, specs, records, attributes, total):
    import h5py
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
            if key not in PER_SHARD_ATTRIBUTES:
                index.attrs[key] = value
        index.attrs["num_samples"] = total
