"""The run's model and images again, from its manifest: what `--verify` and
`--export-virelay` need, without the user passing the model, data or preprocessing a
second time.

The model is loaded by sightline.model with the loader and safe mode of a job (safe
unless the user passes --unsafe again: the manifest does not record it, and loading
code from a file must stay the user's decision each time), at the run's layer and
precision. The images come from sightline.data's pipeline with the run's image shape and
preprocessing, read by sample index.
"""

import hashlib
import os

import numpy as np

from sightline.compute.auto_precision import AUTO
from sightline.errors import UsageError
from sightline.store.results import run_source

READ_BATCH = 16  # images per pipeline batch when reading scattered samples
_GAP = 16  # members closer than this are read as one range and the gap dropped


def source_spec(manifest):
    """The spec open_source takes to open the run's source again (the store reads it from
    the manifest, old runs' description too)."""
    found = run_source(manifest)
    if found is None:
        described = manifest["run"].get("source")
        raise UsageError(f"the run's manifest names its source as {described!r}, which is "
                         "not a source sightline can open again; audit without --verify "
                         "and --export-virelay")
    return found[1]


def open_run_source(manifest):
    """The run's data source, checked to still list the same samples (its keys' hash)."""
    from sightline.data.sources import open_source

    run = manifest["run"]
    tfrecord = run.get("tfrecord_keys") or {}
    options = {"image_key": tfrecord["image"], "label_key": tfrecord["label"]} if tfrecord else {}
    spec = source_spec(manifest)
    try:
        source = open_source(spec, **options)
    except ValueError as error:
        raise UsageError(f"the run's source cannot be opened again ({error}); --verify and "
                         "--export-virelay read its images") from None
    digest = hashlib.sha256("\0".join(source.keys).encode("utf-8")).hexdigest()
    if run.get("keys_sha256") not in (None, digest):
        raise UsageError(f"the run's source {spec!r} no longer lists the samples the run "
                         "explained (its keys changed); --verify and --export-virelay need "
                         "the same images")
    return source


def sample_runs(indices, gap=_GAP):
    """Sorted sample indices -> [(start, stop)] ranges covering them, neighbours less
    than `gap` apart merged (the few samples between are read and dropped)."""
    indices = np.asarray(indices, np.int64)
    if len(indices) == 0:
        return []
    breaks = np.nonzero(np.diff(indices) >= gap)[0]
    starts = np.concatenate([[indices[0]], indices[breaks + 1]])
    stops = np.concatenate([indices[breaks], [indices[-1]]]) + 1
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def read_images(source, indices, *, image_shape, preprocess, resize="stretch", chunk=256):
    """Yield float32 [n,H,W,C] chunks of the images of `indices` (sorted ascending, no
    repeats), in that order, decoded, resized (`resize`: the run's manifest's mode) and
    preprocessed as the job did; at most `chunk` images at a time."""
    from sightline.data.pipeline import shard_batches

    indices = np.asarray(indices, np.int64)
    if np.any(np.diff(indices) <= 0):
        raise UsageError("sample indices to read must be ascending without repeats")
    if len(indices) == 0:
        return
    dataset = shard_batches(source, sample_runs(indices), batch_size=READ_BATCH,
                            image_size=tuple(image_shape[:2]), channels=int(image_shape[2]),
                            preprocessing=preprocess, resize=resize)
    found, parts, held, expected = [], [], 0, 0
    for batch in dataset:
        index = batch["index"].numpy()
        keep = batch["mask"].numpy() & np.isin(index, indices)
        if not keep.any():
            continue
        found.append(index[keep])
        parts.append(batch["images"].numpy()[keep])
        held += int(keep.sum())
        while held >= chunk:
            images, got = np.concatenate(parts), np.concatenate(found)
            _check_read(got[:chunk], indices[expected:expected + chunk])
            yield images[:chunk]
            expected += chunk
            parts, found, held = [images[chunk:]], [got[chunk:]], held - chunk
    got = np.concatenate(found) if found else np.zeros(0, np.int64)
    _check_read(got, indices[expected:])
    if held:
        yield np.concatenate(parts)


def _check_read(got, wanted):
    if len(got) != len(wanted) or np.any(got != wanted):
        missing = sorted(set(wanted.tolist()) - set(got.tolist()))[:5]
        raise UsageError(f"the run's source could not give back sample(s) {missing} (they "
                         "no longer decode); --verify and --export-virelay need the same images")


class ImageFeed:
    """The images of the samples a stream asks for, in source order: take(indices)
    returns float32 [n,H,W,C] for the next indices (ascending across calls), reading
    through one pipeline over all of them."""

    def __init__(self, source, indices, *, image_shape, preprocess, resize="stretch",
                 chunk=256):
        self._chunks = read_images(source, indices, image_shape=image_shape,
                                   preprocess=preprocess, resize=resize, chunk=chunk)
        self._held = np.zeros((0, *image_shape), np.float32)

    def take(self, count):
        while len(self._held) < count:
            self._held = np.concatenate([self._held, next(self._chunks)])
        images, self._held = self._held[:count], self._held[count:]
        return images


def run_resize(manifest):
    """The resize mode the run's images were resized with (runs written before the
    option existed were stretched)."""
    return manifest["run"].get("resize", "stretch")


def load_run_model(manifest, *, unsafe=False):
    """The run's model, adapted as the job adapted it (layer, precision, safe mode)."""
    from sightline.model.adapter import adapt_model

    path = manifest.get("model")
    if not path or not os.path.exists(path):
        raise UsageError(f"the run's model {path!r} is not there any more; --verify needs "
                         "the model the run explained")
    run = manifest["run"]
    return adapt_model(path, layer=run.get("layer"), precision=run_precision(manifest),
                       unsafe=unsafe)


def run_precision(manifest):
    """The precision the run's maps were made at: the manifest's run records the option
    ("auto" included), and an "auto" run records the one it chose beside it."""
    precision = manifest["run"].get("precision", "float32")
    if precision != AUTO:
        return precision
    choice = (manifest.get("precision_auto") or {}).get("choice")
    if choice is None:
        raise UsageError("the run's manifest says precision 'auto' but records no choice "
                         "(its precision_auto entry is missing); re-run the job to write it")
    return choice


def preprocess_images(images, preprocess):
    """images [n,H,W,C] decoded and resized (preprocess "none") -> float32 [n,H,W,C] as the
    job's pipeline hands them to the model (the same function, after resizing as there)."""
    import tensorflow as tf

    from sightline.data.pipeline import preprocess as apply

    return apply(tf.convert_to_tensor(np.asarray(images, np.float32)), preprocess).numpy()


def compiled_probabilities(adapter, image_shape, batch_size):
    """probabilities(images [n,H,W,C], n <= batch_size) -> float64 [n, classes], through
    ONE tf.function traced once for [batch_size,H,W,C] (short batches are padded)."""
    import tensorflow as tf

    shape = (int(batch_size), *(int(v) for v in image_shape))

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def forward(images):
        _, logits = adapter.forward(images)
        return adapter.probabilities(tf.cast(logits, tf.float32))

    def probabilities(images):
        images = np.asarray(images, np.float32)
        count = len(images)
        if count > shape[0] or images.shape[1:] != shape[1:]:
            raise UsageError(f"at most {shape[0]} images of shape {shape[1:]} per call; "
                             f"received {images.shape}")
        padded = np.zeros(shape, np.float32)
        padded[:count] = images
        return forward(padded).numpy()[:count].astype(np.float64)

    return probabilities


def compiled_feature_functions(adapter, image_shape, batch_size):
    """(activations, head_outputs, output_kind) for ablation in feature space, or None
    when the model's head cannot be separated from its backbone (the step then records
    the whole forward pass, and no activation can be replaced in it).

    activations(images [n,H,W,C]) -> float32 [n,h,w,K] at the run's target layer;
    head_outputs(activations [n,h,w,K]) -> float64 [n, 2 * classes]: the probabilities
    then the logits. Each is one tf.function traced once for batch_size rows (short
    batches are padded)."""
    import tensorflow as tf

    if adapter.backbone is None or adapter.head is None:
        return None
    images_shape = (int(batch_size), *(int(v) for v in image_shape))
    activation_shape = (int(batch_size), *(int(v) for v in adapter.activation_shape))

    @tf.function(input_signature=[tf.TensorSpec(images_shape, tf.float32)])
    def backbone(images):
        return tf.cast(adapter.backbone(images), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec(activation_shape, tf.float32)])
    def head(activations):
        logits = tf.cast(adapter.head(activations), tf.float32)
        return tf.concat([adapter.probabilities(logits), logits], axis=-1)

    def padded(values, shape):
        values = np.asarray(values, np.float32)
        if len(values) > shape[0] or values.shape[1:] != shape[1:]:
            raise UsageError(f"at most {shape[0]} rows of shape {shape[1:]} per call; "
                             f"received {values.shape}")
        full = np.zeros(shape, np.float32)
        full[:len(values)] = values
        return full

    def activations(images):
        return backbone(padded(images, images_shape)).numpy()[:len(images)]

    def head_outputs(values):
        return head(padded(values, activation_shape)).numpy()[:len(values)].astype(np.float64)

    return activations, head_outputs, adapter.output_kind
