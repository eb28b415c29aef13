"""`sightline evaluate OUT`: every stored method and three controls through the same
compiled curves, on the run's own model and images (read again from its manifest as
`audit --verify` does), written as OUT/evaluation.h5 and OUT/evaluation.json.

Resume. The chosen samples (ascending sample index) are cut into parts of `part_size`;
each finished part is written to OUT/evaluation.parts/part-NNNNN.h5 under a temporary
name and renamed into place, so a killed evaluation started again keeps the finished
parts and computes the rest. Every number of a sample depends only on the sample (its
image, maps, index and the seed), never on its batch or part, so the merged files are
the same as an uninterrupted run's. The parts folder records the settings it was made
with; other settings start it afresh. After the merge the parts are removed.

Memory: one part of maps and images at a time, and per chosen sample its scores.

Sanity checks (sightline.evaluate.sanity): after the parts, `sanity_sample` images per
explained class (chosen as `--sample` chooses, at most SANITY_MAX_IMAGES in all) are
explained again by the run's model, layer, precision and method parameters while a copy
of the model is randomised, beside the three controls; the result is written to
OUT/evaluation.parts/sanity.h5 (so a resume keeps it) and merged into evaluation.h5
under /sanity. They explain in batches of SANITY_BATCH_SIZE whatever --batch-size is,
so their numbers do not depend on it.
"""

import json
import os
import shutil

import numpy as np

from sightline.audit.replay import ImageFeed, load_run_model, open_run_source, read_images
from sightline.errors import UsageError
from sightline.evaluate.settings import EvaluationSettings, choose_samples, ranking_grid
from sightline.evaluate.summary import (CONTROLS, EVALUATION_FILE, FORMAT, H5_FILE, summarise)
from sightline.kernels.methods import LAYER, METHODS
from sightline.store.files import (fsync_directory, remove_quietly, temporary_path,
                                   write_json_atomic)
from sightline.store.results import open_results
from sightline.store.layout import PRED_TARGET, SAMPLE_INDEX, SAMPLE_LABEL, SAMPLE_TARGET, heatmap

PARTS_FOLDER = "evaluation.parts"
SETTINGS_FILE = "settings.json"
SANITY_FILE = "sanity.h5"
# The sanity sample is held in memory (images and every method's maps): at most this
# many images, fewer per class when the classes are many.
SANITY_MAX_IMAGES = 2048
SANITY_BATCH_SIZE = 32
# Per sample and map kind, what each part (and evaluation.h5) holds.
PER_SAMPLE = ("probabilities", "logits", "fractions", "auc", "one_pass", "original",
              "tie_fraction")


def evaluate_run(out, settings=None, *, progress=None):
    """Evaluate the run in `out`; returns the evaluation dict written to
    OUT/evaluation.json. `progress(done, total)` is called after every part."""
    settings = (settings or EvaluationSettings()).checked()
    with open_results(out) as results:
        manifest = results.manifest
        run = manifest["run"]
        methods = settings.chosen_methods(results.methods)
        image_shape = tuple(int(v) for v in run["image_shape"])
        map_shapes = {m: results.map_shape(m) for m in results.methods}
        layer_methods = () if run.get("map_size") == "input" else \
            tuple(m for m in METHODS if METHODS[m].resolution == LAYER)
        grid = ranking_grid(results.methods, map_shapes, image_shape[:2], layer_methods)
        targets = results.read(PRED_TARGET)
        labels = results.read(SAMPLE_LABEL)
        chosen = choose_samples(results.sample_indices, targets, settings.sample, settings.seed)
        if len(chosen) == 0:
            raise UsageError(f"{out!r} holds no samples to evaluate")
        parts_folder = os.path.join(out, PARTS_FOLDER)
        unsafe = _prepare_parts(parts_folder, settings, manifest, methods, grid)
        parts = [chosen[start:start + settings.part_size]
                 for start in range(0, len(chosen), settings.part_size)]
        pending = [p for p in range(len(parts)) if not os.path.exists(_part_path(parts_folder, p))]
        if pending:
            source = open_run_source(manifest)
            adapter = load_run_model(manifest, unsafe=unsafe)
            engine = _Engine(adapter, image_shape, grid, settings, run.get("preprocess", "none"))
            wanted = np.concatenate([parts[p] for p in pending])
            feed = ImageFeed(source, wanted, image_shape=image_shape,
                             preprocess=run.get("preprocess", "none"), chunk=settings.part_size)
            for p, maps in _part_maps(results, methods, parts, set(pending)):
                images = feed.take(len(parts[p]))
                values = engine.part(images, maps, targets[_rows(results, parts[p])], parts[p])
                _write_part(_part_path(parts_folder, p), parts[p], values)
                if progress is not None:
                    progress(len(parts) - len(pending) + pending.index(p) + 1, len(parts))
        sanity_path = os.path.join(parts_folder, SANITY_FILE)
        if settings.sanity_sample and not os.path.exists(sanity_path):
            _write_sanity(sanity_path, results, methods, grid, settings, unsafe)
        rows = _rows(results, chosen)
        # The manifest lists the model's class names in class order (--class-names).
        names = dict(enumerate(run.get("class_names") or ()))
        h5_path = _merge(out, parts_folder, len(parts), chosen, targets[rows], labels[rows],
                         methods, settings, grid, sanity_path)
        evaluation = summarise(h5_path, methods, settings, grid, names)
        evaluation["settings"]["unsafe"] = bool(unsafe)
        write_json_atomic(os.path.join(out, EVALUATION_FILE), evaluation)
        shutil.rmtree(parts_folder, ignore_errors=True)
        return evaluation


def _rows(results, indices):
    """The reader's rows of the given sample indices."""
    return np.searchsorted(results.sample_indices, indices)


def _part_path(folder, part):
    return os.path.join(folder, f"part-{part:05d}.h5")


def _prepare_parts(folder, settings, manifest, methods, grid):
    """The parts folder for these settings: kept when it was made with the same ones
    (then its --unsafe holds too), started afresh otherwise. Returns whether the model
    may be loaded unsafely."""
    wanted = {**settings.recorded(), "methods": methods, "grid": list(grid),
              "run": manifest.get("fingerprint") or manifest["run"].get("model_sha256")}
    path = os.path.join(folder, SETTINGS_FILE)
    unsafe = bool(settings.unsafe)
    if os.path.exists(path):
        with open(path) as handle:
            recorded = json.load(handle)
        if {k: recorded.get(k) for k in wanted} == json.loads(json.dumps(wanted)):
            unsafe = unsafe or bool(recorded.get("unsafe"))
        else:
            shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if ".tmp" in name or name.startswith("."):
            remove_quietly(os.path.join(folder, name))
    write_json_atomic(path, {**wanted, "unsafe": unsafe})
    return unsafe


def _part_maps(results, methods, parts, pending):
    """Yield (part, {method: maps [n,h,w] float32}) for the pending parts, in order,
    streaming the stored maps once (source order is ascending sample index, as the
    parts are)."""
    names = [heatmap(m) for m in methods]
    queue = [p for p in range(len(parts)) if p in pending]
    wanted = np.concatenate([parts[p] for p in queue])
    buffer, held = {m: [] for m in methods}, 0
    for chunk in results.chunks(names + [SAMPLE_INDEX], rows=256):
        keep = np.isin(chunk[SAMPLE_INDEX], wanted)
        if not keep.any():
            continue
        for method, name in zip(methods, names):
            buffer[method].append(chunk[name][keep].astype(np.float32))
        held += int(keep.sum())
        while queue and held >= len(parts[queue[0]]):
            size = len(parts[queue[0]])
            joined = {m: np.concatenate(v) for m, v in buffer.items()}
            yield queue.pop(0), {m: v[:size] for m, v in joined.items()}
            buffer = {m: [v[size:]] for m, v in joined.items()}
            held -= size


class _Engine:
    """The compiled functions of one evaluation, and one part through them."""

    def __init__(self, adapter, image_shape, grid, settings, preprocessing):
        from sightline.evaluate.curves import (CurveSettings, build_controls, build_curves,
                                               build_prepare)
        self.batch_size = settings.batch_size
        self.settings = settings
        curve_settings = CurveSettings(steps=settings.steps, fill=settings.fill, grid=grid,
                                       seed=settings.seed,
                                       memory_budget_mb=settings.memory_budget_mb)
        self.curves = build_curves(adapter, image_shape, settings.batch_size, curve_settings,
                                   preprocessing)
        self.prepare = build_prepare(grid, image_shape[:2])
        self.controls = build_controls(grid, settings.seed)

    def part(self, images, maps, targets, indices):
        """{kind: {name: array [n, ...]}} for the methods and the controls."""
        from sightline.evaluate.curves import padded
        size = self.batch_size
        collected = {}
        for start in range(0, len(images), size):
            count = min(size, len(images) - start)
            batch = padded(images[start:start + count], size)
            index = padded(np.asarray(indices[start:start + count], np.int64), size, -1)
            target = padded(np.asarray(targets[start:start + count], np.int32), size, 0)
            kinds = {m: padded(v[start:start + count], size) for m, v in maps.items()}
            control = {name: value.numpy()
                       for name, value in self.controls(batch, index).items()}
            for name, value in list(kinds.items()) + list(control.items()):
                cells, pixel = self.prepare(value)
                outputs = self.curves(batch, cells, pixel, target, index)
                entry = collected.setdefault(name, {k: [] for k in PER_SAMPLE})
                for key in PER_SAMPLE:
                    entry[key].append(outputs[key].numpy()[:count])
        return {name: {k: np.concatenate(v) for k, v in entry.items()}
                for name, entry in collected.items()}


def _write_part(path, indices, values):
    import h5py
    temporary = temporary_path(path)
    try:
        with h5py.File(temporary, "w") as handle:
            handle[SAMPLE_INDEX] = np.asarray(indices, np.int64)
            for name, entry in values.items():
                for key, array in entry.items():
                    handle[f"{name}/{key}"] = array
            handle.flush()
        os.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise
    fsync_directory(os.path.dirname(path))


def _write_sanity(path, results, methods, grid, settings, unsafe):
    """The sanity checks of the run's methods and the controls, written to `path`
    atomically (sightline.evaluate.sanity_scores.write_sanity's layout)."""
    import h5py

    from sightline.evaluate.curves import build_controls
    from sightline.evaluate.sanity import sanity_checks
    from sightline.evaluate.sanity_scores import write_sanity

    manifest = results.manifest
    run = manifest["run"]
    model = manifest.get("model")
    if not model or not os.path.exists(model):
        raise UsageError(f"the run's model {model!r} is not there any more; the sanity checks "
                         "randomise a copy of it (--sanity-sample 0 evaluates without them)")
    if os.path.isdir(model):
        raise UsageError(f"the run's model {model!r} is a SavedModel, whose layers the sanity "
                         "checks cannot re-initialise; pass --sanity-sample 0 to evaluate "
                         "without them, or explain a .keras or .h5 file")
    targets = results.read(PRED_TARGET)
    per_class = min(settings.sanity_sample,
                    max(1, SANITY_MAX_IMAGES // max(1, len(np.unique(targets)))))
    chosen = choose_samples(results.sample_indices, targets, per_class, settings.seed)
    if len(chosen) < 2:
        return  # the floor needs two images: the entries say "sanity": null
    image_shape = tuple(int(v) for v in run["image_shape"])
    images = np.concatenate(list(read_images(open_run_source(manifest), chosen,
                                             image_shape=image_shape,
                                             preprocess=run.get("preprocess", "none"))))
    controls_of = build_controls(grid, settings.seed)
    controls = {name: (lambda batch, name=name: controls_of(batch, chosen)[name].numpy())
                for name in CONTROLS}
    precision = run.get("precision", "float32")
    if precision == "auto":  # the run's choice, recorded beside its figures
        precision = (manifest.get("precision_auto") or {}).get("choice", "float32")
    # The options that shaped the stored maps, so the checks explain as the run did.
    options = {option: value for method in methods
               for option, value in (run.get("parameters") or {}).get(method, {}).items()}
    checks = sanity_checks(model, images, targets[_rows(results, chosen)],
                           methods, controls=controls, seed=settings.seed,
                           layer=run.get("layer"), precision=precision,
                           map_size=run.get("map_size", "native"),
                           batch_size=SANITY_BATCH_SIZE, unsafe=unsafe, **options)
    temporary = temporary_path(path)
    try:
        with h5py.File(temporary, "w") as handle:
            write_sanity(handle, checks, chosen)
        os.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise
    fsync_directory(os.path.dirname(path))


def _merge(out, folder, num_parts, chosen, targets, labels, methods, settings, grid,
           sanity_path=None):
    """OUT/evaluation.h5 from the parts, written under a temporary name and renamed."""
    import h5py
    path = os.path.join(out, H5_FILE)
    temporary = temporary_path(path)
    names = [("methods", m) for m in methods] + [("controls", c) for c in CONTROLS]
    try:
        handles = [h5py.File(_part_path(folder, p), "r") for p in range(num_parts)]
        try:
            got = np.concatenate([h[SAMPLE_INDEX][:] for h in handles])
            if not np.array_equal(got, chosen):
                raise UsageError("the evaluation's parts do not cover the chosen samples; "
                                 f"remove {folder!r} and run the evaluation again")
            with h5py.File(temporary, "w") as handle:
                handle.attrs["format"] = FORMAT
                handle.attrs["settings"] = json.dumps({**settings.recorded(),
                                                       "grid": list(grid)}, sort_keys=True)
                handle[SAMPLE_INDEX] = chosen
                handle[SAMPLE_TARGET] = np.asarray(targets, np.int32)
                handle[SAMPLE_LABEL] = np.asarray(labels, np.int32)
                for group, name in names:
                    for key in PER_SAMPLE:
                        handle[f"{group}/{name}/{key}"] = np.concatenate(
                            [h[f"{name}/{key}"][:] for h in handles])
                if sanity_path is not None and os.path.exists(sanity_path):
                    with h5py.File(sanity_path, "r") as sanity:
                        sanity.copy(sanity["sanity"], handle, "sanity")
        finally:
            for h in handles:
                h.close()
        os.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise
    fsync_directory(out)
    return path
