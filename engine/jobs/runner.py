"""The dataset job behind `sightline explain`: validate everything, plan shards, stream
batches through the compiled step on every device, hand the maps to the writer.

Shard `s` holds samples [s * shard_size, (s + 1) * shard_size) and belongs to worker
`s mod W`. A run killed at any moment and started again redoes only the shards that
have no verified record, so it ends with exactly the output of an uninterrupted run.
"""

import dataclasses
import math
import os
import time
import types
from typing import Optional

import numpy as np

from sightline.compute.auto_precision import AUTO, CANDIDATES, measure_precisions
from sightline.config import ExplainConfig
from sightline.data.labels import check_class_count, parse_class_names
from sightline.jobs.batches import distributed_batches, single_device_batches, targets_of
from sightline.jobs.lock import lock_worker, unlock_worker
from sightline.jobs.predictions import PredictionTally, collapse_message
from sightline.jobs.provenance import method_parameters, run_fingerprint, run_provenance
from sightline.jobs.signals import Interrupted, install_signal_handlers, restore_signal_handlers
from sightline.jobs.workers import resolve_worker, shards_of
from sightline.kernels.methods import LAYER, METHODS
from sightline.model.input_range import input_rescaling, rescaling_warning
from sightline.store.files import OutOfSpace, check_writable_folder, is_out_of_space
from sightline.store.layout import (PRED_CLASS, PRED_SCORE, RELEVANCE_ATTRIBUTE, SAMPLE_GROUP,
                                    SAMPLE_INDEX, SAMPLE_LABEL, SHARD_DIRECTORY)
from sightline.store.manifest import (ManifestWriter, fingerprint_hash, other_run_settings,
                                      previous_manifest, remove_stale_shards, source_entry)
from sightline.store.shards import (ShardWriter, build_index, label_attributes, read_shard_columns,
                                    remove_stale_temporaries, resolve_compression, verify_shard)
from sightline.errors import UsageError

# The --preprocess spelling a person types, by the pipeline's name for it.
PREPROCESS_FLAGS = {"unit": "[0,1]", "symmetric": "[-1,1]"}

# A finished shard rewrites manifest.json at most this often: the shard's own record is
# what a resume trusts, and the file holds every shard, so writing it per shard would
# cost O(S) per shard. The end of the run (or a stop) always writes it.
MANIFEST_SECONDS = 2.0


@dataclasses.dataclass
class JobSummary:
    images: int
    skipped: int
    shards_written: int
    shards_reused: int
    shards_total: int
    # From the job's start until the first batch's maps: loading, tracing, compiling,
    # first reads; None when no batch ran.
    startup_seconds: Optional[float]
    # The job's one rate (sightline.jobs.progress.Progress.rate): steady state, after the
    # first batch. None when it cannot be measured, rate_note says why (one batch, or
    # every shard reused): a rate of 0.0 would read as a stalled run.
    images_per_second: Optional[float]
    wall_seconds: float
    index_built: bool
    rate_note: Optional[str] = None
    exit_code: int = 0


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
        self.seen[arrays[SAMPLE_INDEX] - start] = True
        arrays[SAMPLE_GROUP] = self.source.group_of(arrays[SAMPLE_INDEX])
        self.failures.update(failures)
        if len(arrays[SAMPLE_INDEX]):
            self.writer.append(arrays)
        self.progress.advance(len(arrays[SAMPLE_INDEX]) + len(failures))

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


def run_job(config: ExplainConfig, *, progress_stream=None) -> JobSummary:
    """Run (or resume) a dataset job. Raises ValueError/TypeError before any work when
    the input is bad; returns a summary whose exit_code is 130/143 after SIGINT/SIGTERM."""
    from sightline.jobs.progress import Progress

    started = time.monotonic()
    progress = Progress(log_json=config.log_json, quiet=config.quiet, stream=progress_stream)
    try:
        plan = _plan(config, progress)
    except BaseException:
        progress.close()  # a refusal is the one line on the terminal: no status before it
        raise
    unread = [{"index": None, "key": key, "reason": reason} for key, reason in plan.source.unread]
    manifest = ManifestWriter(plan.out, plan.run, plan.provenance, plan.ranges,
                              fingerprint=plan.fingerprint, interval=MANIFEST_SECONDS,
                              unread=unread)
    manifest.reload()
    manifest.write()
    progress.begin(sum(plan.ranges[s][1] - plan.ranges[s][0] for s in plan.mine))
    for warning in plan.provenance.get("warnings", []):  # found while planning
        progress.event("warning", message=warning["message"])
    writer = ShardWriter(plan.out, plan.num_shards, plan.layout,
                         compression=plan.provenance["compression"],
                         on_finished=manifest.shard_finished, fingerprint=plan.fingerprint,
                         worker=plan.worker, workers=plan.workers)
    if unread:
        names = ", ".join(item["key"] for item in unread[:5]) + (" ..." if len(unread) > 5 else "")
        progress.event("skipped", message=f"{len(unread)} file(s) in the data folder are not "
                                          f"images sightline reads ({names}); listed in the "
                                          "manifest")
    stop_signal = []
    job, reused = None, 0
    exit_code = 0
    previous_handlers = install_signal_handlers(stop_signal)
    try:
        pending, reused = _pending_shards(plan, stop_signal, progress)
        job = _ShardProgress(plan.source, writer, progress, [plan.ranges[s] for s in pending],
                             pending)
        if stop_signal:
            raise Interrupted(stop_signal[0])
        if pending:
            progress.stage("tracing and compiling the step", "(the first batch)")
            _explain_shards(config, plan, pending, job, stop_signal)
        writer.close()
    except Interrupted as interrupted:
        writer.abort()
        writer.close()
        exit_code = interrupted.exit_code
        progress.event("stopped", message="signal received; finished shards are kept, run "
                                          "the same command again to continue")
    except BaseException as error:
        try:
            writer.abort()
            writer.close()
        except BaseException:  # noqa: BLE001 - the first error is the one to report
            pass
        if is_out_of_space(error):
            _write_manifest_if_room(manifest)
            kept = sum(record is not None for record in manifest.records)
            raise OutOfSpace(f"the disk is full: writing into {plan.out!r} stopped; {kept} of "
                             f"{plan.num_shards} shard(s) are finished and kept, no partial "
                             "shard is left; free space and run the same command again to "
                             "continue") from None
        raise
    finally:
        restore_signal_handlers(previous_handlers)
        progress.close()  # the bar's line ends before any error or summary line
        manifest.provenance["timing"] = progress.timing()
        _write_manifest_if_room(manifest)
        unlock_worker(plan.lock)

    index_built = False
    # The lock is released: building the index reads every worker's shards, and a run of
    # worker i finishing while another is still writing is normal.
    if exit_code == 0:
        manifest.reload()  # the other workers' shards too
        complete = all(record is not None for record in manifest.records)
        warnings = _prediction_warnings(plan, range(plan.num_shards) if complete else plan.mine)
        if warnings:  # one line; the manifest lists every set that collapsed
            others = [w["set"] for w in warnings[1:]]
            progress.event("warning", message=warnings[0]["message"] + (
                f" (also in folder(s) {', '.join(others)})" if others else ""))
            plan.provenance.setdefault("warnings", []).extend(warnings)
        if complete:
            # This worker's shards were checksummed minutes ago, when written or when the
            # resume verified them: reading them all again cost the job 8% of its time
            # on a 100,000-image array (py-spy); the other workers' shards are read.
            build_index(plan.out, plan.num_shards, fingerprint=plan.fingerprint,
                        verified=plan.mine)
            index_built = True
        manifest.write()
    timing = progress.timing()
    summary = JobSummary(
        images=job.images if job else 0, skipped=job.skipped if job else 0,
        shards_written=job.written if job else 0,
        shards_reused=reused, shards_total=plan.num_shards,
        startup_seconds=timing["startup_seconds"],
        images_per_second=timing["images_per_second"],
        wall_seconds=round(time.monotonic() - started, 2), index_built=index_built,
        rate_note=timing.get("rate_note"), exit_code=exit_code)
    progress.summary(**{k: v for k, v in dataclasses.asdict(summary).items() if k != "exit_code"})
    return summary


def _prediction_warnings(plan, shards):
    """Warnings (dicts for the manifest's "warnings") about collapsed predictions over the
    finished `shards`, read back from their files: a resumed run judges the shards it
    kept as well as those it wrote, and the worker that completes the run judges all."""
    tally = PredictionTally(plan.num_classes, plan.source.group_names)
    for columns in read_shard_columns(plan.out, shards, plan.num_shards,
                                      (PRED_CLASS, PRED_SCORE, SAMPLE_LABEL,
                                       SAMPLE_GROUP)):
        tally.add(columns[PRED_CLASS], columns[PRED_SCORE], labels=columns[SAMPLE_LABEL],
                  groups=columns[SAMPLE_GROUP])
    warnings = []
    for entry in tally.collapsed():
        name = plan.class_names[entry["class"]] if plan.class_names else f"class {entry['class']}"
        warnings.append({"kind": "collapsed_predictions", **entry, "class_name": name,
                         "message": collapse_message(entry, name, plan.preprocess_flag)})
    return warnings


def _write_manifest_if_room(manifest):
    """Write the manifest, unless the disk is full: the shard records are what a resume
    trusts, and the next run rewrites the manifest from them."""
    try:
        manifest.write()
    except OSError as error:
        if not is_out_of_space(error):
            raise


def _plan(config, progress):
    """Validate everything and plan the shards, before any work: the job's fixed parts.
    progress.stage names each slow part before it starts."""
    progress.stage("loading TensorFlow")
    import tensorflow as tf

    from sightline.compute.step import build_step, check_methods, run_relevance
    from sightline.compute.strategy import make_strategy
    from sightline.data.sources import open_source
    from sightline.model.adapter import adapt_model

    for name in ("model", "data", "out"):
        if getattr(config, name) is None:
            raise UsageError(f"a dataset job needs {name}: pass --{name}")
    worker, workers = resolve_worker(config.worker, config.workers)
    out = os.path.abspath(config.out)
    check_writable_folder(out)  # creates nothing: a refused run leaves no folder behind
    strategy = make_strategy(config.devices)  # before anything initialises TensorFlow
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise UsageError(f"batch size {config.batch_size} must be a multiple of the {replicas} "
                         f"devices, each takes an equal part; try --batch-size "
                         f"{replicas * max(1, config.batch_size // replicas)}")
    auto = config.precision == AUTO
    progress.stage("listing the data", config.data)
    class_names = parse_class_names(config.class_names)
    source = open_source(config.data, labels=config.labels, image_key=config.tfrecord_image_key,
                         label_key=config.tfrecord_label_key, class_names=class_names)
    progress.stage("loading model", config.model)
    with strategy.scope():
        adapter = adapt_model(config.model, layer=config.layer,
                              precision="float32" if auto else config.precision,
                              unsafe=config.unsafe)
    check_methods(adapter, config)
    check_class_count(class_names, adapter.num_classes)
    rescaling = rescaling_warning(input_rescaling(adapter.model),
                                  PREPROCESS_FLAGS.get(config.preprocess, config.preprocess))
    names = class_names.names_for(adapter.num_classes) if class_names is not None else ()
    image_shape = _image_shape(config, adapter, source)
    _check_finite_pixels(source)
    _check_targets(config, adapter, source)

    num_shards = math.ceil(source.num_samples / config.shard_size)
    mine = shards_of(worker, workers, num_shards)
    relevance = run_relevance(adapter, config.methods)
    run = run_fingerprint(config, adapter, source, image_shape, names, relevance)
    map_shapes = _map_shapes(config, adapter, image_shape)
    encoded_keys = np.array([key.encode("utf-8") for key in source.keys], dtype=np.bytes_)
    provenance = run_provenance(config, adapter, replicas, workers)
    provenance.update(source_entry(source.kind, source.open_spec))
    if rescaling:
        provenance["warnings"] = [{"kind": "input_rescaled_twice", "message": rescaling}]
    provenance["compression"] = resolve_compression(
        config.compression, on_accelerator=bool(tf.config.list_logical_devices("GPU")))
    if auto:
        adapter, step, provenance["precision_auto"] = _auto_precision(
            config, strategy, source, adapter, image_shape, out, run)
    else:
        step = build_step(adapter, config, config.batch_size // replicas, image_shape)
    different = other_run_settings(out, run)
    if different and not config.overwrite:
        raise UsageError(f"output folder {out!r} holds another run's shards (different "
                         f"{', '.join(different)}); choose another --out or pass --overwrite")
    # Every check passed: only now does the folder appear, and this worker's lock is
    # taken before anything in it is removed or written.
    os.makedirs(os.path.join(out, SHARD_DIRECTORY), exist_ok=True)
    lock = lock_worker(out, worker)
    try:
        if different:
            remove_stale_shards(out, mine, num_shards)
        remove_stale_temporaries(out, mine, num_shards)
    except BaseException:
        unlock_worker(lock)
        raise
    return types.SimpleNamespace(lock=lock,
        out=out, worker=worker, workers=workers, strategy=strategy, source=source,
        image_shape=image_shape, num_shards=num_shards, mine=mine, run=run,
        fingerprint=fingerprint_hash(run), encoded_keys=encoded_keys,
        provenance=provenance,
        ranges=[_shard_range(s, config.shard_size, source.num_samples)
                for s in range(num_shards)],
        layout={"maps": map_shapes, "key_length": max(1, encoded_keys.itemsize),
                "relevance_channels": (int(adapter.activation_shape[-1]) if relevance
                                       else None),
                "attributes": {**_shard_attributes(config, adapter, image_shape, map_shapes),
                               **label_attributes(names, source.group_names,
                                                  adapter.num_classes),
                               RELEVANCE_ATTRIBUTE: relevance or ""}},
        step=step, class_names=names, num_classes=adapter.num_classes,
        preprocess_flag=PREPROCESS_FLAGS.get(config.preprocess, config.preprocess))


def _auto_precision(config, strategy, source, adapter, image_shape, out, run):
    """precision="auto": (adapter, step, figures) of the precision chosen on the first
    batch (see sightline.compute.auto_precision). A resume of the same run keeps the
    choice its manifest records, so no output folder mixes two precisions."""
    from sightline.compute.step import build_step
    from sightline.data.pipeline import batches
    from sightline.model.adapter import adapt_model

    per_replica = config.batch_size // strategy.num_replicas_in_sync
    adapters = {"float32": adapter}
    with strategy.scope():
        adapters["mixed_bfloat16"] = adapt_model(config.model, layer=config.layer,
                                                 precision="mixed_bfloat16",
                                                 unsafe=config.unsafe)
    steps = {p: build_step(adapters[p], config, per_replica, image_shape) for p in CANDIDATES}
    figures = None
    previous = previous_manifest(out) or {}
    if previous.get("run") == run:
        figures = previous.get("precision_auto")
    if figures is None or figures.get("choice") not in CANDIDATES:
        first = next(iter(batches(source, 0, min(per_replica, source.num_samples),
                                  batch_size=per_replica, image_size=image_shape[:2],
                                  channels=image_shape[2], preprocessing=config.preprocess,
                                  resize=config.resize)))
        count = int(first["mask"].numpy().sum())
        targets = targets_of(config, first["labels"].numpy())
        figures = measure_precisions(steps, first["images"], targets, first["index"],
                                     config.methods, count=count)
    choice = figures["choice"]
    return adapters[choice], steps[choice], figures


def _pending_shards(plan, stop_signal, progress):
    """(this worker's shards still to do, how many are done and verified)."""
    pending, reused = [], 0
    # On a large resume, checksumming the finished shards reads them all and takes a
    # while: a signal during it must end the run as cleanly as one between batches.
    for shard in plan.mine:
        if stop_signal:
            raise Interrupted(stop_signal[0])
        if verify_shard(plan.out, shard, plan.num_shards,
                        fingerprint=plan.fingerprint)[0] is None:
            pending.append(shard)
        else:
            reused += 1
            progress.skip_ahead(plan.ranges[shard][1] - plan.ranges[shard][0])
    return pending, reused


def _explain_shards(config, plan, pending, job, stop_signal):
    """Stream the pending shards' batches through the step on every device, into `job`."""
    ranges = [plan.ranges[s] for s in pending]
    if plan.strategy.num_replicas_in_sync == 1:
        batches = single_device_batches(config, plan, ranges)
    else:
        batches = distributed_batches(config, plan, ranges)
    for position, arrays, failures in batches:
        if stop_signal:
            raise Interrupted(stop_signal[0])
        job.add(position, arrays, failures)
    if stop_signal:
        raise Interrupted(stop_signal[0])
    job.close_all()


# ----------------------------------------------------------------------------- validation


def _image_shape(config, adapter, source):
    height, width, channels = (tuple(adapter.input_shape) + (None,) * 3)[:3]
    if config.image_size is not None:
        if (height, width) != (None, None) and (height, width) != config.image_size:
            raise UsageError(f"image size {config.image_size} differs from the model's input "
                             f"({height}, {width}); leave --image-size out to use the model's")
        height, width = config.image_size
    if height is None or width is None:
        if not source.encoded:
            height, width = source.array_shape[:2]
        else:
            raise UsageError("the model takes any image size: pass --image-size H,W")
    if channels is None:
        raise UsageError("the model does not fix its number of input channels; re-save it "
                         "with a defined input shape")
    if not source.encoded and source.array_shape[-1] != channels:
        raise UsageError(f"the images have {source.array_shape[-1]} channel(s) but the model "
                         f"takes {channels}; convert the array first")
    return (int(height), int(width), int(channels))


def _check_finite_pixels(source, chunk=256):
    """Arrays of floats may hold NaN or Inf, which would turn every map of their batch
    into NaN: the run is refused with the first such sample. Read once, in chunks."""
    if source.encoded:
        return
    import h5py
    handle = None
    if source.kind == "npy":
        array = np.load(source.array_file, mmap_mode="r")
    else:
        handle = h5py.File(source.array_file, "r")
        array = handle[source.array_dataset]
    try:
        if not np.issubdtype(array.dtype, np.floating):
            return
        for start in range(0, source.num_samples, chunk):
            block = np.asarray(array[start:start + chunk])
            finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)  # [chunk]
            if not finite.all():
                first = start + int(np.argmin(finite))
                raise UsageError(f"sample {first} ({source.keys[first]}) of {source.description} "
                                 "holds NaN or Inf pixels; replace or drop such samples first")
    finally:
        if handle is not None:
            handle.close()


def _check_targets(config, adapter, source):
    if config.target == "label":
        unknown = int(np.sum(source.labels < 0))
        if unknown and source.group_names:
            raise UsageError(f"--target label needs the model's class of every image, but the "
                             f"class folders ({', '.join(source.group_names[:5])}) are only groups "
                             "of images until --class-names says how they map to the model's "
                             "classes (names in class order, or a JSON/TOML file folder -> index)")
        if unknown:
            raise UsageError(f"--target label needs a label for every image; {unknown} of "
                             f"{source.num_samples} have none (use class subfolders with "
                             "--class-names, or --labels)")
        if source.labels.max() >= adapter.num_classes:
            raise UsageError(f"labels go up to {source.labels.max()} but the model has "
                             f"{adapter.num_classes} classes")
    elif isinstance(config.target, int) and config.target >= adapter.num_classes:
        raise UsageError(f"--target {config.target} is not a class of this model (it has "
                         f"{adapter.num_classes}: 0 to {adapter.num_classes - 1})")


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
        "precision": adapter.precision if config.precision == AUTO else config.precision,
        "normalize": config.normalize,
        "map_size": config.map_size,
        "target": str(config.target),
        "preprocess": config.preprocess,
    }


def _shard_range(shard, shard_size, total):
    return shard * shard_size, min((shard + 1) * shard_size, total)


def _map_shapes(config, adapter, image_shape):
    shapes = {}
    for method in config.methods:
        if METHODS[method].resolution == LAYER and config.map_size == "native":
            shapes[method] = tuple(int(v) for v in adapter.activation_shape[:2])
        else:
            shapes[method] = tuple(image_shape[:2])
    return shapes
