"""The dataset job behind `sightline explain`: validate everything, plan shards, stream
batches through the compiled step on every device, hand the maps to the writer.

Shard `s` holds samples [s * shard_size, (s + 1) * shard_size) and belongs to worker
`s mod W`. A run killed at any moment and started again redoes only the shards that
have no verified record, so it ends with exactly the output of an uninterrupted run.
"""

import dataclasses
import hashlib
import math
import os
import signal
import sys
import threading
import time
from typing import Optional

import numpy as np

from sightline.config import ExplainConfig
from sightline.store.manifest import MANIFEST_FILE, fingerprint_hash
from sightline.store.manifest import write_manifest as write_manifest_file
from sightline.store.shards import (INDEX_FILE, SHARD_DIRECTORY, ShardWriter, build_index,
                           remove_stale_temporaries, shard_name, verify_shard)
from sightline.jobs.workers import resolve_worker, shards_of

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclasses.dataclass
class JobSummary:
    images: int
    skipped: int
    shards_written: int
    shards_reused: int
    shards_total: int
    startup_seconds: float  # until the first batch's maps: tracing, compiling, first reads
    # After start-up, until the last shard is on disk; None when it cannot be measured
    # (one batch, or every shard reused): a rate of 0.0 would read as a stalled run.
    images_per_second: Optional[float]
    wall_seconds: float
    index_built: bool
    exit_code: int = 0


class _Timer:
    """Start-up (until the first batch is done) apart from steady-state throughput."""

    def __init__(self):
        self.started = time.monotonic()
        self.first_batch = None
        self.stopped = None
        self.steady_images = 0

    def batch_done(self, images):
        if self.first_batch is None:
            self.first_batch = time.monotonic()
        else:
            self.steady_images += images

    def stop(self):
        self.stopped = time.monotonic()

    @property
    def startup(self):
        return (self.first_batch or time.monotonic()) - self.started

    def steady_rate(self):
        if self.first_batch is None or not self.steady_images:
            return None
        return self.steady_images / max((self.stopped or time.monotonic()) - self.first_batch,
                                        1e-9)


class _ShardProgress:
    """Follows the batches of one pipeline over many shards: opens a shard in the writer
    at its first batch, finishes it (with its skipped samples) when the next begins.
    A shard none of whose samples decode yields no batch and is finished empty."""

    def __init__(self, source, writer, progress, ranges, shards):
        self.source, self.writer, self.progress = source, writer, progress
        self.ranges, self.shards = ranges, shards
        self.current = None  # position in `ranges` being written
        self.next_position = 0
        self.seen = None
        self.images = self.skipped = self.written = 0
        self.failures = {}

    def add(self, position, arrays, failures):
        """failures: {sample index: reason} of the batch's rows that could not be decoded."""
        if position != self.current:
            self._close_current()
            while self.next_position < position:
                self._open(self.next_position)
                self._close_current()
            self._open(position)
        start = self.ranges[position][0]
        self.seen[arrays["sample/index"] - start] = True
        self.failures.update(failures)
        if len(arrays["sample/index"]):
            self.writer.append(arrays)
        self.progress.advance(len(arrays["sample/index"]) + len(failures))

    def close_all(self):
        self._close_current()
        while self.next_position < len(self.ranges):
            self._open(self.next_position)
            self._close_current()

    def _corrupt(self, index):
        # Not in any batch: the decoder failed inside a file that looked whole (the
        # pipeline's last resort); decode it once more for the decoder's own words.
        return f"corrupt image data ({self.source.read_error(index) or 'the decoder failed'})"

    def _open(self, position):
        start, stop = self.ranges[position]
        self.writer.begin(self.shards[position], start, stop)
        self.current, self.next_position = position, position + 1
        self.seen = np.zeros(stop - start, bool)

    def _close_current(self):
        if self.current is None:
            return
        start = self.ranges[self.current][0]
        skipped = [{"index": int(start + i), "key": self.source.keys[start + i],
                    "reason": self.failures.pop(int(start + i), None) or self._corrupt(start + i)}
                   for i in np.flatnonzero(~self.seen)]
        for item in skipped:
            self.progress.event("skipped", message=f"{item['key']}: {item['reason']}")
        self.writer.finish(skipped)
        self.images += int(self.seen.sum())
        self.skipped += len(skipped)
        self.written += 1
        self.current = None


class Interrupted(Exception):
    def __init__(self, signum):
        super().__init__(f"stopped by signal {signum}")
        self.exit_code = EXIT_CODES.get(signum, 1)


def run_job(config: ExplainConfig, *, progress_stream=None) -> JobSummary:
    """Run (or resume) a dataset job. Raises ValueError/TypeError before any work when
    the input is bad; returns a summary whose exit_code is 130/143 after SIGINT/SIGTERM."""
    import tensorflow as tf

    from sightline.model.adapter import adapt_model
    from sightline.data.pipeline import shard_batches
    from sightline.jobs.progress import Progress
    from sightline.data.sources import open_source
    from sightline.compute.step import build_step, check_methods
    from sightline.compute.strategy import make_strategy

    started = time.monotonic()
    for name in ("model", "data", "out"):
        if getattr(config, name) is None:
            raise ValueError(f"a dataset job needs {name}: pass --{name}")
    worker, workers = resolve_worker(config.worker, config.workers)
    out = os.path.abspath(config.out)
    _check_out_folder(out)
    strategy = make_strategy(config.devices)  # before anything initialises TensorFlow
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch size {config.batch_size} must be a multiple of the {replicas} "
                         f"devices, each takes an equal part; try --batch-size "
                         f"{replicas * max(1, config.batch_size // replicas)}")
    source = open_source(config.data, labels=config.labels, image_key=config.tfrecord_image_key,
                         label_key=config.tfrecord_label_key)
    with strategy.scope():
        adapter = adapt_model(config.model, layer=config.layer, precision=config.precision,
                              unsafe=config.unsafe)
    check_methods(adapter, config)
    image_shape = _image_shape(config, adapter, source)
    _check_targets(config, adapter, source)

    num_shards = math.ceil(source.num_samples / config.shard_size)
    mine = shards_of(worker, workers, num_shards)
    run = _run_fingerprint(config, adapter, source, image_shape)
    fingerprint = fingerprint_hash(run)
    _claim_out_folder(out, run, config.overwrite, mine, num_shards)
    remove_stale_temporaries(out, mine, num_shards)
    provenance = _provenance(config, adapter, replicas, workers)
    manifest_lock = threading.Lock()

    ranges = [_shard_range(s, config.shard_size, source.num_samples) for s in range(num_shards)]

    unread = [{"index": None, "key": key, "reason": reason} for key, reason in source.unread]

    def write_manifest(*_):
        with manifest_lock:
            write_manifest_file(out, run, provenance, ranges, fingerprint=fingerprint,
                                unread=unread)

    write_manifest()

    map_shapes = _map_shapes(config, adapter, image_shape)
    encoded_keys = np.array([key.encode("utf-8") for key in source.keys], dtype=np.bytes_)
    layout = {
        "maps": map_shapes,
        "key_length": max(1, encoded_keys.itemsize),
        "attributes": _shard_attributes(config, adapter, image_shape, map_shapes),
    }
    step = build_step(adapter, config, config.batch_size // replicas, image_shape)

    @tf.function
    def distributed_step(images, targets, index):
        # A jit-compiled function handed straight to strategy.run fails on CPU; a plain
        # Python callable around it works.
        return strategy.run(lambda i, t, s: step(i, t, s), args=(images, targets, index))

    progress = Progress(sum(ranges[s][1] - ranges[s][0] for s in mine),
                        log_json=config.log_json, quiet=config.quiet, stream=progress_stream)
    writer = ShardWriter(out, num_shards, layout, compression=config.compression,
                         on_finished=write_manifest, fingerprint=fingerprint, worker=worker,
                         workers=workers)
    if unread:
        names = ", ".join(item["key"] for item in unread[:5]) + (" ..." if len(unread) > 5 else "")
        progress.event("skipped", message=f"{len(unread)} file(s) in the data folder are not "
                                          f"images sightline reads ({names}); listed in the "
                                          "manifest")
    stop_signal = []
    pending, reused = [], 0
    job = None
    timer = _Timer()
    exit_code = 0
    previous_handlers = _install_signal_handlers(stop_signal)
    try:
        # On a large resume, checksumming the finished shards reads them all and takes
        # a while: a signal during it must end the run as cleanly as one between batches.
        for shard in mine:
            if stop_signal:
                raise Interrupted(stop_signal[0])
            if verify_shard(out, shard, num_shards, fingerprint=fingerprint)[0] is None:
                pending.append(shard)
            else:
                reused += 1
                progress.advance(ranges[shard][1] - ranges[shard][0])
        job = _ShardProgress(source, writer, progress, [ranges[s] for s in pending], pending)
        if stop_signal:
            raise Interrupted(stop_signal[0])
        if pending:
            dataset = shard_batches(source, [ranges[s] for s in pending],
                                    batch_size=config.batch_size, image_size=image_shape[:2],
                                    channels=image_shape[2], preprocessing=config.preprocess)
            dataset = dataset.map(_with_targets(config))
            for element in strategy.experimental_distribute_dataset(dataset):
                if stop_signal:
                    raise Interrupted(stop_signal[0])
                outputs = distributed_step(element["images"], element["targets"],
                                           element["index"])
                arrays = _host_arrays(strategy, outputs, element, encoded_keys)
                position = int(strategy.experimental_local_results(element["position"])[0][0])
                job.add(position, arrays, _failures(strategy, element))
                timer.batch_done(len(arrays["sample/index"]))
            if stop_signal:
                raise Interrupted(stop_signal[0])
            job.close_all()
        writer.close()
        timer.stop()
    except Interrupted as interrupted:
        writer.abort()
        writer.close()
        exit_code = interrupted.exit_code
        progress.event("stopped", message="signal received; finished shards are kept, run "
                                          "the same command again to continue")
    except BaseException:
        try:
            writer.abort()
            writer.close()
        except BaseException:  # noqa: BLE001 - the first error is the one to report
            pass
        raise
    finally:
        _restore_signal_handlers(previous_handlers)
        write_manifest()

    index_built = False
    if exit_code == 0 and all(verify_shard(out, s, num_shards, checksum=False,
                                           fingerprint=fingerprint)[0]
                              for s in range(num_shards)):
        build_index(out, num_shards, fingerprint=fingerprint)
        index_built = True
        write_manifest()
    wall = time.monotonic() - started
    summary = JobSummary(
        images=job.images if job else 0, skipped=job.skipped if job else 0,
        shards_written=job.written if job else 0,
        shards_reused=reused, shards_total=num_shards,
        startup_seconds=round(timer.startup, 2),
        images_per_second=(None if timer.steady_rate() is None
                           else round(timer.steady_rate(), 2)),
        wall_seconds=round(wall, 2), index_built=index_built, exit_code=exit_code)
    progress.summary(**{k: v for k, v in dataclasses.asdict(summary).items() if k != "exit_code"})
    return summary


# ----------------------------------------------------------------------------- validation


def _check_out_folder(out):
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"output {out!r} is a file, not a folder; pass a folder for --out")
    try:
        os.makedirs(os.path.join(out, SHARD_DIRECTORY), exist_ok=True)
        probe = os.path.join(out, SHARD_DIRECTORY, f".write-test-{os.getpid()}")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"output folder {out!r} is not writable ({error.strerror}); choose "
                         "another --out or fix its permissions") from None


def _image_shape(config, adapter, source):
    height, width, channels = (tuple(adapter.input_shape) + (None,) * 3)[:3]
    if config.image_size is not None:
        if (height, width) != (None, None) and (height, width) != config.image_size:
            raise ValueError(f"image size {config.image_size} differs from the model's input "
                             f"({height}, {width}); leave --image-size out to use the model's")
        height, width = config.image_size
    if height is None or width is None:
        if not source.encoded:
            height, width = source.array_shape[:2]
        else:
            raise ValueError("the model takes any image size: pass --image-size H,W")
    if channels is None:
        raise ValueError("the model does not fix its number of input channels; re-save it "
                         "with a defined input shape")
    if not source.encoded and source.array_shape[-1] != channels:
        raise ValueError(f"the images have {source.array_shape[-1]} channel(s) but the model "
                         f"takes {channels}; convert the array first")
    return (int(height), int(width), int(channels))


def _check_targets(config, adapter, source):
    if config.target == "label":
        unknown = int(np.sum(source.labels < 0))
        if unknown:
            raise ValueError(f"--target label needs a label for every image; {unknown} of "
                             f"{source.num_samples} have none (use class subfolders or --labels)")
        if source.labels.max() >= adapter.num_classes:
            raise ValueError(f"labels go up to {source.labels.max()} but the model has "
                             f"{adapter.num_classes} classes")
    elif isinstance(config.target, int) and config.target >= adapter.num_classes:
        raise ValueError(f"--target {config.target} is not a class of this model (it has "
                         f"{adapter.num_classes}: 0 to {adapter.num_classes - 1})")


def _with_targets(config):
    import tensorflow as tf

    def attach(batch):
        if config.target == "label":
            targets = batch["labels"]
        elif config.target == "predicted":
            targets = tf.fill(tf.shape(batch["labels"]), -1)
        else:
            targets = tf.fill(tf.shape(batch["labels"]), int(config.target))
        # The position is repeated per sample so the batch can be split over replicas.
        return {"images": batch["images"], "targets": tf.cast(targets, tf.int32),
                "index": batch["index"], "labels": batch["labels"],
                "skipped_index": batch["skipped_index"], "skipped_reason": batch["skipped_reason"],
                "position": tf.fill(tf.shape(batch["index"]), batch["position"])}

    return attach


def _gather(strategy, value):
    """A per-replica value -> one NumPy array over the whole batch."""
    return np.concatenate([np.asarray(p) for p in strategy.experimental_local_results(value)])


def _failures(strategy, element):
    """{sample index: reason} of the batch's rows the pipeline could not decode."""
    from sightline.data.decode import SKIP_REASONS
    index = _gather(strategy, element["skipped_index"])
    reasons = _gather(strategy, element["skipped_reason"])
    return {int(i): SKIP_REASONS[int(r)] for i, r in zip(index, reasons) if i >= 0}


def _host_arrays(strategy, outputs, element, encoded_keys):
    """Per-replica results -> the valid rows as NumPy arrays, in the shard layout."""
    def gather(value):
        return _gather(strategy, value)

    index = gather(element["index"])
    valid = index >= 0
    index = index[valid]
    arrays = {
        "sample/index": index.astype(np.int64),
        "sample/label": gather(element["labels"])[valid].astype(np.int32),
        "sample/key": encoded_keys[index],
        "pred/target": gather(outputs["targets"])[valid].astype(np.int32),
        "pred/class": gather(outputs["predictions"])[valid].astype(np.int32),
        "pred/score": gather(outputs["scores"])[valid].astype(np.float32),
    }
    for name, value in outputs.items():
        if name.startswith("heatmaps/"):
            method = name.split("/", 1)[1]
            arrays[name] = gather(value)[valid].astype(np.float16)
            arrays[f"heatmaps/{method}_scale"] = gather(outputs[f"scales/{method}"])[valid].astype(np.float32)
    return arrays


def _shard_attributes(config, adapter, image_shape, map_shapes):
    """File attributes of every shard: what the maps are and how they were made."""
    import json
    return {
        "sightline_format": "sightline/1",
        "methods": json.dumps(list(config.methods)),
        "parameters": json.dumps(method_parameters(config), sort_keys=True),
        "map_shapes": json.dumps({m: list(s) for m, s in map_shapes.items()}, sort_keys=True),
        "input_size": list(image_shape[:2]),
        "layer": adapter.layer_name or "",
        "logits_layer": adapter.logits_layer or "",
        "precision": config.precision,
        "normalize": config.normalize,
        "store": config.size,
        "target": str(config.target),
        "preprocess": config.preprocess,
    }


def _shard_range(shard, shard_size, total):
    return shard * shard_size, min((shard + 1) * shard_size, total)


def _map_shapes(config, adapter, image_shape):
    from sightline.kernels import ACTIVATION_METHODS
    shapes = {}
    for method in config.methods:
        if method in ACTIVATION_METHODS and config.size == "native":
            shapes[method] = tuple(int(v) for v in adapter.activation_shape[:2])
        else:
            shapes[method] = tuple(image_shape[:2])
    return shapes


# ----------------------------------------------------------------------------- manifest


def model_digest(path):
    """sha256 of a model file, or of a SavedModel directory's files in sorted order."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                digest.update(os.path.relpath(full, path).encode())
                with open(full, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
        return digest.hexdigest()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def method_parameters(config):
    """The options that shape the maps, per requested method."""
    from sightline.config import METHOD_OPTIONS
    return {method: {option: getattr(config, option)
                     for option, users in METHOD_OPTIONS.items()
                     if method in users and option != "memory_budget_mb"}
            for method in config.methods}


def _run_fingerprint(config, adapter, source, image_shape):
    """What must match for an existing output folder to be resumed.

    The source is named by its path, and what it holds by a hash of its sample keys
    and of its labels (the --labels file, the TFRecord label key, class folders): one
    pass over N short strings, where hashing the images themselves would read the
    whole dataset again.
    """
    keys_digest = hashlib.sha256("\0".join(source.keys).encode("utf-8")).hexdigest()
    labels = np.ascontiguousarray(source.labels, "<i4")
    labels_digest = hashlib.sha256(labels.tobytes()).hexdigest()
    return {
        "model_sha256": model_digest(config.model),
        "layer": adapter.layer_name,
        "logits_layer": adapter.logits_layer,
        "methods": list(config.methods),
        "parameters": method_parameters(config),
        "normalize": config.normalize,
        "store": config.size,
        "precision": config.precision,
        "target": config.target,
        "source": source.description,
        "num_samples": source.num_samples,
        "keys_sha256": keys_digest,
        "labels_sha256": labels_digest,
        "tfrecord_keys": ({"image": source.image_key, "label": source.label_key}
                          if source.kind == "tfrecord" else None),
        "image_shape": list(image_shape),
        "preprocess": config.preprocess,
        "shard_size": config.shard_size,
    }


def _claim_out_folder(out, run, overwrite, mine, num_shards):
    import json
    path = os.path.join(out, MANIFEST_FILE)
    if not os.path.exists(path):
        return
    try:
        with open(path) as handle:
            previous = json.load(handle).get("run", {})
    except (OSError, json.JSONDecodeError):
        previous = {}
    if previous == run:
        return
    if not overwrite:
        different = sorted(k for k in set(run) | set(previous) if run.get(k) != previous.get(k))
        raise ValueError(f"output folder {out!r} holds another run's shards (different "
                         f"{', '.join(different)}); choose another --out or pass --overwrite")
    folder = os.path.join(out, SHARD_DIRECTORY)
    own = {shard_name(s, num_shards) for s in mine}
    suffix = f"-of-{num_shards:05d}"
    for name in os.listdir(folder):
        stem = name.split(".")[0]
        if stem in own or (stem.startswith("shard-") and not stem.endswith(suffix)):
            os.remove(os.path.join(folder, name))
    if os.path.exists(os.path.join(out, INDEX_FILE)):
        os.remove(os.path.join(out, INDEX_FILE))


def _provenance(config, adapter, replicas, workers):
    import platform

    import h5py
    import keras
    import tensorflow as tf

    from sightline import __version__
    try:
        import tf_keras
        tf_keras_version = tf_keras.__version__
    except ImportError:  # pragma: no cover
        tf_keras_version = None
    return {
        "model": os.path.abspath(config.model),
        "model_flavor": adapter.flavor,
        "batch_size": config.batch_size,
        "replicas": replicas,
        "workers": workers,
        "xla": config.xla,
        "software": {"sightline": __version__, "python": platform.python_version(),
                     "tensorflow": tf.__version__, "keras": keras.__version__,
                     "tf_keras": tf_keras_version, "numpy": np.__version__,
                     "h5py": h5py.__version__},
    }


# ----------------------------------------------------------------------------- signals


def _install_signal_handlers(stop_signal):
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if stop_signal:  # a second signal: stop now
            raise KeyboardInterrupt
        stop_signal.append(signum)
        print("sightline: stopping after this batch (signal again to stop at once)",
              file=sys.stderr, flush=True)

    return {signum: signal.signal(signum, handler) for signum in EXIT_CODES}


def _restore_signal_handlers(previous):
    if previous:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
