"""`explain`: heatmaps for an in-memory batch of images, from one compiled function."""

import dataclasses
import numbers
import weakref
from typing import Dict, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from sightline.config import make_config
from sightline.errors import UsageError
from sightline.model.adapter import adapt_model
from sightline.model.loading import ModelSource, model_flavor
from sightline.model.precision import copy_weights
from sightline.compute.auto_precision import AUTO, CANDIDATES, measure_precisions
from sightline.compute.step import (batches_per_call, build_batches_function, build_step,
                                    check_methods)

# A method option's value, as the table of methods types them (Option.kind).
OptionValue = Union[int, float, str]


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What `explain` returns.

    heatmaps: method -> float32 [N,h,w] (scaled to [0, 1] unless normalize=False).
    scales: method -> float32 [N], max |raw map|: ReLU(raw) == heatmap * scale.
    targets: int32 [N], the explained class; predictions: int32 [N], the predicted
    class; scores: float32 [N], the probability of the predicted class.
    relevance: float32 [N,K], each target-layer channel's contribution to the explained
    class's score, sum_ij A * dy_c/dA (None when the model shows no feature map).
    """

    heatmaps: Dict[str, np.ndarray]
    scales: Dict[str, np.ndarray]
    targets: np.ndarray
    predictions: np.ndarray
    scores: np.ndarray
    layer: Optional[str]
    precision: str = "float32"  # the one the maps were computed in ("auto" resolved)
    relevance: Optional[np.ndarray] = None


# Adapters and compiled steps of in-memory models, so that calling `explain` again on
# the same model with the same settings neither rebuilds nor retraces.
_COMPILED = weakref.WeakKeyDictionary()
# Bytes TensorFlow aligns its tensors' memory to (Eigen's largest vector, AVX-512).
_TENSOR_ALIGNMENT = 64
# precision="auto": per in-memory model, the figures and choice per (settings, batch,
# image shape).
_AUTO_CHOICES = weakref.WeakKeyDictionary()


def explain(model: ModelSource, images: npt.ArrayLike, methods: Sequence[str] = ("gradcam",),
            *, layer: Optional[str] = None, targets: Union[None, int, npt.ArrayLike] = None,
            normalize: bool = True, map_size: str = "native", precision: str = "float32",
            batch_size: int = 64, xla: str = "auto", unsafe: bool = False,
            **method_options: OptionValue) -> Explanation:
    """Explain every image of `images` with every method in `methods`.

    model: a Keras 3 or tf_keras model, or a path (.keras, .h5, SavedModel directory).
    images: array or tensor [N,H,W,C], already preprocessed for the model.
    methods: names from the table of methods (`sightline.kernels.methods.METHODS`).
    targets: None (the predicted class), an int (that class for every image) or an
        int array [N].
    map_size: "native" keeps CAM-family maps at the target layer's resolution,
        "input" resizes them to the images'; gradient maps are always input-sized.
    method_options: any option of the table (`sightline.config.METHOD_OPTIONS` lists
        them with the methods that read them), e.g. num_copies=8 for smoothgrad.
    """
    config = make_config(methods, layer=layer, normalize=normalize, map_size=map_size,
                         precision=precision, batch_size=batch_size, xla=xla, unsafe=unsafe,
                         **method_options)
    images = _as_images(images)
    num_images = images.shape[0]
    auto = config.precision == AUTO
    adapter, steps = _adapter_for(model, dataclasses.replace(config, precision="float32")
                                  if auto else config, images.shape[1:])
    check_methods(adapter, config)
    _check_image_shape(images, adapter.input_shape)
    targets = _as_targets(targets, num_images, adapter.num_classes)

    # Fewer images than batch_size: the next power of two, so calls with many different
    # small N share a handful of compiled steps instead of one each.
    batch = min(config.batch_size, 1 << (num_images - 1).bit_length())
    image_shape = tuple(images.shape[1:])
    if auto:
        config, adapter, steps = _auto_precision(model, config, images, targets, batch,
                                                 image_shape)
    key = (config, batch, image_shape)
    if key not in steps:
        steps[key] = build_step(adapter, config, batch, image_shape)
    key = ("batches", config, batch, image_shape)
    if key not in steps:
        steps[key] = build_batches_function(steps[key[1:]], batch, image_shape)
    run_batches = steps[key]

    per_call = batches_per_call(batch, images[0].nbytes) * batch
    staging = _Staging(min(per_call, num_images), image_shape)
    collected = {}
    for start in range(0, num_images, per_call):
        stop = min(start + per_call, num_images)
        outputs = run_batches(staging.tensor(images[start:stop]),
                              tf.convert_to_tensor(targets[start:stop]),
                              tf.range(start, stop, dtype=tf.int64))
        for name, value in outputs.items():
            value = value.numpy()  # a view of the tensor's buffer on the CPU, not a copy
            if stop - start == num_images:
                collected[name] = value
                continue
            if name not in collected:
                collected[name] = np.empty((num_images, *value.shape[1:]), value.dtype)
            collected[name][start:stop] = value

    return Explanation(
        heatmaps={m: collected[f"heatmaps/{m}"] for m in config.methods},
        scales={m: collected[f"scales/{m}"] for m in config.methods},
        targets=collected["targets"].astype(np.int32),
        predictions=collected["predictions"].astype(np.int32),
        scores=collected["scores"].astype(np.float32),
        layer=adapter.layer_name, precision=config.precision,
        relevance=collected.get("relevance"))


def _auto_precision(model, config, images, targets, batch, image_shape):
    """precision="auto" resolved on the first batch: (config with the chosen precision,
    its adapter, its cache of steps). An in-memory model keeps the choice, so later
    calls with the same settings neither measure nor retrace again."""
    candidates, steps_of = {}, {}
    for precision in CANDIDATES:
        settled = dataclasses.replace(config, precision=precision)
        adapter, steps = _adapter_for(model, settled, image_shape)
        key = (settled, batch, image_shape)
        if key not in steps:
            steps[key] = build_step(adapter, settled, batch, image_shape)
        candidates[precision] = (settled, adapter, steps)
        steps_of[precision] = steps[key]
    choices = {} if model_flavor(model) is None else _AUTO_CHOICES.setdefault(model, {})
    key = (AUTO, config, batch, image_shape)
    if key not in choices:
        count = min(batch, len(images))
        first_images = np.zeros((batch, *image_shape), np.float32)
        first_images[:count] = images[:count]
        first_targets = np.full(batch, -1, np.int32)
        first_targets[:count] = targets[:count]
        choices[key] = measure_precisions(steps_of, tf.constant(first_images),
                                          tf.constant(first_targets),
                                          tf.range(batch, dtype=tf.int64), config.methods,
                                          count=count)
    return candidates[choices[key]["choice"]]


class _Staging:
    """Hands explain()'s chunks of images to TensorFlow: through one buffer aligned as
    TensorFlow aligns its own tensors, shared with it through DLPack (no copy by
    TensorFlow). tf.convert_to_tensor copied a chunk of 64 MiB of 128x128x3 float32
    images in 23 ms, a fifth of explain()'s time on a five-layer CNN; NumPy copies it into
    the buffer in 7. Memory the caller owns is never shared: an unaligned one crashed a
    bfloat16 step, whose kernels assume TensorFlow's alignment."""

    def __init__(self, rows, image_shape):
        size = rows * int(np.prod(image_shape)) * 4
        raw = np.empty(size + _TENSOR_ALIGNMENT, np.uint8)
        offset = (-raw.ctypes.data) % _TENSOR_ALIGNMENT
        self.buffer = raw[offset:offset + size].view(np.float32).reshape(rows, *image_shape)

    def tensor(self, images):
        """images[n,H,W,C] (n <= rows) as a tensor over the buffer; valid until the next
        call, which overwrites it."""
        staged = self.buffer[:len(images)]
        np.copyto(staged, images)
        try:
            return tf.experimental.dlpack.from_dlpack(staged.__dlpack__())
        except (BufferError, TypeError, ValueError):
            return tf.convert_to_tensor(staged)


def _adapter_for(model, config, image_shape):
    """(adapter, cache of compiled steps); in-memory models keep theirs between calls.
    image_shape (H, W, C) builds a subclassed model that was never built or called."""
    def build():
        return adapt_model(model, layer=config.layer, precision=config.precision,
                           unsafe=config.unsafe, input_shape=tuple(image_shape))

    if model_flavor(model) is None:
        return build(), {}
    per_model = _COMPILED.setdefault(model, {})
    key = (config.layer, config.precision)
    if key not in per_model:
        per_model[key] = (build(), {})
    adapter, steps = per_model[key]
    if adapter.model is not model:
        # A mixed-precision adapter runs a rebuilt copy of the model: give it the
        # weights the model has now, or maps would lag behind a model that trained on.
        copy_weights(model, adapter.model)
    return adapter, steps


def _as_images(images):
    if isinstance(images, tf.Tensor):
        images = images.numpy()
    images = np.asarray(images)
    if images.dtype == object or not (np.issubdtype(images.dtype, np.number)
                                      or images.dtype == np.bool_):
        raise UsageError(f"images must be a numeric array [N,H,W,C]; got dtype {images.dtype}")
    if images.ndim == 3:
        raise UsageError(f"images must be a batch [N,H,W,C]; got one image of shape "
                         f"{images.shape}: add a batch axis with images[None]")
    if images.ndim != 4:
        raise UsageError(f"images must be a batch [N,H,W,C]; got shape {images.shape}")
    if images.shape[0] == 0:
        raise UsageError("images is empty (N = 0): pass at least one image")
    images = np.ascontiguousarray(images, np.float32)
    # min and max are NaN or infinite when any value is, without a boolean copy of
    # the whole array.
    if not (np.isfinite(images.min()) and np.isfinite(images.max())):
        raise UsageError("images contain NaN or infinite values; clean or re-preprocess them")
    return images


def _check_image_shape(images, input_shape):
    got = images.shape[1:]
    for axis, (want, have) in enumerate(zip(input_shape, got)):
        if want is not None and want != have:
            what = ("channels", "height", "width")[(axis + 1) % 3]
            raise UsageError(f"images have shape {tuple(got)} per image but the model takes "
                             f"{tuple(input_shape)} ({what} differ); resize or convert them first")


def _as_targets(targets, num_images, num_classes):
    """-1 everywhere for the predicted class, else validated class indices, int32 [N]."""
    if targets is None:
        return np.full(num_images, -1, np.int32)
    if isinstance(targets, numbers.Integral) and not isinstance(targets, bool):
        targets = np.full(num_images, int(targets), np.int64)
    else:
        if isinstance(targets, tf.Tensor):
            targets = targets.numpy()
        targets = np.asarray(targets)
        if not np.issubdtype(targets.dtype, np.integer):
            raise UsageError(f"targets must be None, an int or an int array [N]; got dtype {targets.dtype}")
        if targets.shape != (num_images,):
            raise UsageError(f"targets must have one class per image, shape ({num_images},); "
                             f"got shape {targets.shape}")
    bad = (targets < 0) | (targets >= num_classes)
    if np.any(bad):
        raise UsageError(f"targets must be class indices in [0, {num_classes}); got "
                         f"{targets[bad][:5].tolist()}")
    return targets.astype(np.int32)
