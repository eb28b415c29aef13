"""`sightline activations`: ZFNet's lesson, per-layer activation statistics over a dataset.

Zeiler and Fergus improved AlexNet by looking at what its layers did: dead filters and
filters that never switch off are wasted capacity a design can fix. This command
streams a dataset through the model once (batch by batch; nothing but per-channel
running sums is kept) and reports, for every chosen layer and every channel:

    active fraction   share of all positions (images x rows x cols) where a > 0
    dead              never active anywhere in the dataset (max a <= 0)
    saturated         at its ceiling almost everywhere (>= SATURATED_FRACTION of
                      positions): for bounded activations (sigmoid, tanh, relu6,
                      hard_sigmoid) within 1% of the range from the upper bound; for
                      unbounded ones (ReLU and the like) active (a > 0) everywhere, so
                      the non-linearity is never used and the channel passes its input on
                      as a linear map
    mean activation   over all positions, and the channel's maximum

and keeps the first few images (input, then the first channels of each layer) for the
feature-map grids that sightline.report.activations draws. Written to OUT:
activations.json here; activations-stats.png, featuremaps-<layer>.png and report.html by
the report.
"""

import json
import os
import time

import numpy as np

from sightline.errors import UsageError
from sightline.store.files import write_json_atomic

ACTIVATIONS_FILE = "activations.json"
SATURATED_FRACTION = 0.99
SATURATION_TOLERANCE = 0.01
BOUNDS = {"sigmoid": (0.0, 1.0), "hard_sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0),
          "relu6": (0.0, 6.0), "softsign": (-1.0, 1.0)}
DEFAULT_SHOWN_IMAGES = 3
DEFAULT_SHOWN_CHANNELS = 16


def _activation_of(layer):
    try:
        activation = layer.get_config().get("activation")
    except Exception:  # noqa: BLE001 - layers without a config
        return None
    if isinstance(activation, dict):
        activation = activation.get("config", {}).get("name") or activation.get("class_name")
    return activation if isinstance(activation, str) else None


def _default_layers(model):
    names = []
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and "Conv" in type(layer).__name__:
            names.append(layer.name)
    return names


class LayerStats:
    """Running per-channel statistics of one layer."""

    def __init__(self, name, channels, activation):
        self.name, self.channels, self.activation = name, channels, activation
        self.positions = 0
        self.active = np.zeros(channels, np.int64)
        self.saturated = np.zeros(channels, np.int64)
        self.total = np.zeros(channels, np.float64)
        self.maximum = np.full(channels, -np.inf)
        self.minimum = np.full(channels, np.inf)

    def add(self, values):
        """values [B,h,w,C] of valid images."""
        values = np.asarray(values, np.float64).reshape(-1, self.channels)
        self.positions += values.shape[0]
        self.active += (values > 0).sum(axis=0)
        self.saturated += self._at_ceiling(values).sum(axis=0)
        self.total += values.sum(axis=0)
        if values.size:
            self.maximum = np.maximum(self.maximum, values.max(axis=0))
            self.minimum = np.minimum(self.minimum, values.min(axis=0))

    def _at_ceiling(self, values):
        if self.activation in BOUNDS:
            low, high = BOUNDS[self.activation]
            return values >= high - SATURATION_TOLERANCE * (high - low)
        return values > 0

    def summary(self):
        positions = max(self.positions, 1)
        active = self.active / positions
        saturated = self.saturated / positions
        dead = np.flatnonzero(self.maximum <= 0)
        always = np.flatnonzero(saturated >= SATURATED_FRACTION)
        return {
            "layer": self.name, "activation": self.activation, "channels": self.channels,
            "positions": int(self.positions),
            "dead": dead.tolist(), "saturated": always.tolist(),
            "dead_fraction": len(dead) / self.channels,
            "saturated_fraction": len(always) / self.channels,
            "mean_activation": float(self.total.sum() / (positions * self.channels)),
            "channel_mean": np.round(self.total / positions, 6).tolist(),
            "channel_active_fraction": np.round(active, 6).tolist(),
            "channel_max": np.round(np.where(np.isfinite(self.maximum), self.maximum, 0), 6).tolist(),
        }


def activation_statistics(model, data, *, layers=None, batch_size=32, preprocess="none",
                          image_size=None, limit=None, labels=None,
                          shown_images=DEFAULT_SHOWN_IMAGES, shown_channels=DEFAULT_SHOWN_CHANNELS,
                          unsafe=False):
    """Stream `data` through `model` and gather per-layer statistics (see the module doc).

    Returns a dict (what activations.json holds, plus "samples": the first images' input
    and activations for the grids). write_activations writes the JSON; the report
    (sightline.report.activations) draws the figures from this dict.
    """
    import tensorflow as tf

    from sightline.data.pipeline import batches, preprocessing_name
    from sightline.data.sources import open_source
    from sightline.model.adapter import load_model

    started = time.monotonic()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be an integer >= 1; got {batch_size!r}")
    preprocess = preprocessing_name(preprocess)
    keras_model, flavor = load_model(model, unsafe=unsafe)
    if flavor == "saved_model":
        raise UsageError("activation statistics need a Keras model (.keras or .h5), not a "
                         "SavedModel: its layers are not reachable")
    names = _chosen_layers(keras_model, layers)
    keras_module = _keras_module(flavor)
    probe = keras_module.Model(keras_model.inputs,
                               [keras_model.get_layer(n).output for n in names])
    run_probe = tf.function(lambda x: probe(x, training=False))

    source = open_source(data, labels=labels)
    height, width, channels = _input_size(keras_model, source, image_size)
    stop = source.num_samples if limit is None else min(source.num_samples, int(limit))
    stats = {}
    samples = {"inputs": [], "keys": [], "maps": {n: [] for n in names}}
    seen = 0
    for element in batches(source, 0, stop, batch_size=batch_size, image_size=(height, width),
                           channels=channels, preprocessing=preprocess):
        valid = element["index"].numpy() >= 0
        outputs = run_probe(element["images"])
        if len(names) == 1 and not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        for name, values in zip(names, outputs):
            values = values.numpy()[valid]
            if name not in stats:
                stats[name] = LayerStats(name, values.shape[-1],
                                         _activation_of(keras_model.get_layer(name)))
            stats[name].add(values)
            room = shown_images - len(samples["maps"][name])
            if room > 0:
                samples["maps"][name].extend(values[:room, ..., :shown_channels])
        room = shown_images - len(samples["inputs"])
        if room > 0:
            samples["inputs"].extend(element["images"].numpy()[valid][:room])
            samples["keys"].extend(source.keys[int(i)] for i in
                                   element["index"].numpy()[valid][:room])
        seen += int(valid.sum())
    if not seen:
        raise UsageError(f"no image of {data!r} could be read")
    return {
        "format": "sightline-activations/1",
        "model": os.path.abspath(model) if isinstance(model, (str, os.PathLike)) else None,
        "data": source.description,
        "images": seen,
        "image_size": [int(height), int(width)],
        "preprocess": preprocess,
        "saturated_rule": f">= {SATURATED_FRACTION:.0%} of positions at the ceiling (bounded "
                          f"activations: within {SATURATION_TOLERANCE:.0%} of the range from the "
                          "upper bound; unbounded: active, a > 0)",
        "layers": [stats[n].summary() for n in names],
        "seconds": round(time.monotonic() - started, 2),
        "samples": samples,
        "files": {},
    }


def _keras_module(flavor):
    if flavor == "keras3":
        import keras
        return keras
    import tf_keras
    return tf_keras


def _chosen_layers(keras_model, layers):
    """The layers to look at: `layers` checked against the model, else every convolution."""
    if layers:
        all_names = [layer.name for layer in keras_model.layers]
        unknown = [name for name in layers if name not in all_names]
        if unknown:
            raise UsageError(f"no layer named {', '.join(map(repr, unknown))} in the model; its "
                             f"layers are {', '.join(all_names)}")
        not_maps = [n for n in layers if len(keras_model.get_layer(n).output.shape) != 4]
        if not_maps:
            raise UsageError(f"layer(s) {', '.join(not_maps)} do not give feature maps "
                             "[B,h,w,C]; choose convolutional layers")
        names = list(layers)
    else:
        names = _default_layers(keras_model)
    if not names:
        raise UsageError("the model has no convolutional layer to look at; name layers with "
                         "--layers")
    return names


def _input_size(keras_model, source, image_size):
    """(height, width, channels) the images are resized to."""
    height, width, channels = tuple(keras_model.inputs[0].shape[1:])
    if image_size is not None:
        height, width = image_size
    if height is None or width is None:
        if source.encoded:
            raise UsageError("the model takes any image size: pass --image-size H,W")
        height, width = source.array_shape[:2]
    return height, width, channels


def write_activations(out, result):
    """activations.json: the statistics without the sample arrays; result["files"] (figure
    paths) stored relative to `out`. Returns its path."""
    os.makedirs(out, exist_ok=True)
    payload = {k: v for k, v in result.items() if k != "samples"}
    payload["files"] = {k: os.path.relpath(v, out) for k, v in result.get("files", {}).items()}
    path = os.path.join(out, ACTIVATIONS_FILE)
    write_json_atomic(path, payload)
    return path


def read_activations(out):
    """activations.json with its figure paths made absolute."""
    path = os.path.join(out, ACTIVATIONS_FILE)
    try:
        with open(path) as handle:
            result = json.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{out!r} holds no {ACTIVATIONS_FILE}: run `sightline activations "
                         f"--out {out}` first") from None
    result["files"] = {k: os.path.join(os.path.abspath(out), v) for k, v in result["files"].items()}
    return result


def summary_lines(result):
    lines = [f"activations of {result['model']} over {result['images']} images of "
             f"{result['data']}"]
    for layer in result["layers"]:
        lines.append(f"  {layer['layer']} ({layer['activation']}, {layer['channels']} channels): "
                     f"{len(layer['dead'])} dead, {len(layer['saturated'])} saturated, mean "
                     f"activation {layer['mean_activation']:.4f}")
    return lines
