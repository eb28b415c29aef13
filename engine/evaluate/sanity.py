"""Sanity checks (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): do a method's
maps depend on the model's weights and on the class explained?

Cascading model-parameter randomisation: a copy of the model (the user's model is never
touched) has its layers re-initialised one at a time from the top (the logits) down to
the target layer, or down to the first layer when a gradient method of the input is
checked (its maps depend on every layer), each layer with its own initializers and a
fixed seed, and after each
step the sample is explained again by `sightline.explain`, the code of the run itself.
Each step's maps are compared with the original maps image by image: Spearman rank
correlation of the absolute values, and SSIM of the absolute values scaled to [0, 1]
(each map divided by its largest magnitude). The floor is what two unrelated maps reach:
each image's original map against the original map of another image of the sample (a
seeded derangement). Random logit: the map of the explained class against that of a
seeded random other class, on the trained model.

The pass rule and the summary of the numbers are in `sanity_scores`, which needs no
TensorFlow.
"""

import dataclasses
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from sightline import kernels
from sightline.compute.explain import explain
from sightline.errors import UsageError
from sightline.evaluate.sanity_scores import PASS_THRESHOLD, RULE, Similarity
from sightline.kernels.methods import INPUT, METHODS
from sightline.model.loading import load_model
from sightline.model.precision import copy_weights

# The verdict's names, where callers of the checks look for them.
__all__ = ["PASS_THRESHOLD", "RULE", "SanityChecks", "Similarity", "cascade", "copy_model",
           "reinitialize", "sanity_checks"]

# Images per call of the similarity measures: Spearman sorts every map, and a call over
# thousands of 224x224 maps would hold gigabytes of sorted copies.
_SIMILARITY_CHUNK = 256
# Explain options the checks set themselves.
_OWN_OPTIONS = ("targets", "normalize", "layer")


@dataclasses.dataclass(frozen=True)
class SanityChecks:
    """What `sanity_checks` returns.

    layers: the layers re-initialised at each step, top-down (the last is the target
        layer, or the lowest layer with weights above it; with a gradient method of the
        input among the methods, the lowest layer with weights).
    results: method or control name -> its `Similarity`.
    initializers: layer -> what each of its variables was re-initialised with
        ("kernel: GlorotUniform", ...); a variable whose initializer the layer does not
        name gets Glorot uniform (two or more axes) or zeros, and says so.
    """

    layers: Tuple[str, ...]
    target_layer: str
    results: Dict[str, Similarity]
    initializers: Dict[str, Tuple[str, ...]]
    controls: Tuple[str, ...]
    seed: int
    partner: np.ndarray  # [N]: the image each image's floor map comes from
    other_classes: np.ndarray  # [N]: the random-logit check's classes

    def summary(self, name):
        return self.results[name].summary(self.layers)

    @property
    def passing(self):
        """The methods (never the controls) that pass, in the order given."""
        return tuple(name for name, result in self.results.items()
                     if name not in self.controls and result.passes)


def sanity_checks(model, images, targets, methods, *, controls=None, seed=0, **explain_options):
    """Cascading randomisation and random-logit checks of `methods` and `controls`.

    model: a Keras 3 or tf_keras model, or the path of one (loaded as `explain` loads
        it; `unsafe` among explain_options); a copy is randomised, never the model.
    images[N,H,W,C] (preprocessed, N >= 2), targets[N]: the classes explained (the
        run's, so the randomised model explains the same classes).
    methods: names from the table of methods, explained by `sightline.explain`.
    controls: name -> function(images[N,H,W,C]) -> maps[N,h,w], maps that come from
        the image alone (an edge map), through the same comparisons.
    seed: the re-initialisation, the derangement of the floor and the random classes.
    explain_options: passed to `explain` (layer, precision, batch_size, xla, unsafe,
        method options); `layer` is the target layer, default explain's.
    """
    controls = dict(controls or {})
    methods = tuple(methods)
    _check_arguments(methods, controls, seed, explain_options)
    images, targets = _check_sample(images, targets)
    layer = explain_options.pop("layer", None)
    clone, flavor = copy_model(model, unsafe=explain_options.get("unsafe", False))

    def maps_of(explained_targets):
        maps, explained_layer = {}, layer
        if methods:
            explanation = explain(clone, images, methods, layer=layer,
                                  targets=explained_targets, normalize=False, **explain_options)
            maps, explained_layer = dict(explanation.heatmaps), explanation.layer
        maps.update({name: _control_maps(name, control, images)
                     for name, control in controls.items()})
        return explained_layer, maps

    target_layer, original = maps_of(targets)
    input_methods = [m for m in methods if METHODS[m].resolution == INPUT]
    steps = cascade(clone, target_layer)
    # The step that randomises the lowest layer a method's maps depend on: the target
    # layer's (or the lowest with weights above it) for maps read there, the last for
    # gradients of the input and for the controls. The whole cascade begins with the
    # target layer's, so that step keeps its index.
    target_step = len(steps) - 1
    if input_methods and target_layer is not None:
        steps = cascade(clone, None)
    verdict_steps = {name: (target_step if name in methods and name not in input_methods
                            else len(steps) - 1) for name in original}
    num_classes = int(clone.outputs[0].shape[-1])
    rng = np.random.default_rng(seed)
    partner = _derangement(rng, len(images))
    other_classes = _other_classes(rng, targets, max(num_classes, 2))

    _, other = maps_of(other_classes)
    collected = {name: {"spearman": [], "ssim": [], "strip": [_unit_maps(maps[:1])[0]]}
                 for name, maps in original.items()}
    initializers = {}
    for position, cascade_layer in steps:
        initializers[cascade_layer.name] = reinitialize(cascade_layer, flavor, seed, position)
        _, randomised = maps_of(targets)
        for name, maps in randomised.items():
            spearman, ssim = _similarity(original[name], maps)
            collected[name]["spearman"].append(spearman)
            collected[name]["ssim"].append(ssim)
            collected[name]["strip"].append(_unit_maps(maps[:1])[0])

    results = {}
    for name, maps in original.items():
        floor_spearman, floor_ssim = _similarity(maps, maps[partner])
        logit_spearman, logit_ssim = _similarity(maps, other[name])
        results[name] = Similarity(
            spearman=np.stack(collected[name]["spearman"]),
            ssim=np.stack(collected[name]["ssim"]),
            floor_spearman=floor_spearman, floor_ssim=floor_ssim,
            random_logit_spearman=logit_spearman, random_logit_ssim=logit_ssim,
            strip=np.stack(collected[name]["strip"]), verdict_step=verdict_steps[name])
    return SanityChecks(layers=tuple(layer.name for _, layer in steps),
                        target_layer=target_layer, results=results,
                        initializers=initializers, controls=tuple(controls), seed=seed,
                        partner=partner, other_classes=other_classes)


def _check_arguments(methods, controls, seed, explain_options):
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(METHODS)}")
    if not methods and not controls:
        raise UsageError("sanity_checks needs at least one method or control to check")
    clashes = sorted(set(methods) & set(controls))
    if clashes:
        raise UsageError(f"control name(s) {', '.join(map(repr, clashes))} are also method "
                         "names; give the controls names of their own")
    for name, control in controls.items():
        if not callable(control):
            raise UsageError(f"control {name!r} must be a function images[N,H,W,C] -> "
                             f"maps[N,h,w]; got {type(control).__name__}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2 ** 32:
        raise UsageError(f"seed must be an integer in [0, 2**32); got {seed!r}")
    own = sorted(set(_OWN_OPTIONS[:2]) & set(explain_options))
    if own:
        raise UsageError(f"sanity_checks sets {', '.join(own)} itself (the explained classes "
                         "come from targets, the raw maps are compared); leave them out")


def _check_sample(images, targets):
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise UsageError(f"images must be a batch [N,H,W,C]; got shape {images.shape}")
    if len(images) < 2:
        raise UsageError(f"the sanity checks need at least 2 images (the floor compares "
                         f"maps of different images); got {len(images)}")
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer) or targets.shape != (len(images),):
        raise UsageError(f"targets must be one class index per image, int [{len(images)}]; "
                         f"got {targets.dtype} of shape {targets.shape}")
    return images, targets.astype(np.int32)


def copy_model(model, *, unsafe=False):
    """(a copy of the model with the same weights, its flavour); the user's model is
    left as it is."""
    model, flavor = load_model(model, unsafe=unsafe)
    if flavor == "saved_model":
        raise UsageError("the sanity checks re-initialise the model's layers, and a "
                         "SavedModel exposes none; save the model as .keras or .h5")
    if flavor == "keras3":
        import keras as K
    else:
        import tf_keras as K
    try:
        clone = K.models.clone_model(model)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise UsageError(f"the sanity checks randomise a copy of the model, and Keras cannot "
                         f"copy this one ({error}); build it as a Sequential or functional "
                         "model") from None
    copy_weights(model, clone)
    return clone, flavor


def cascade(clone, target_layer):
    """[(position in clone.layers, layer)] with weights, from the last layer down to the
    target layer, in the model's (topological) layer order."""
    names = [layer.name for layer in clone.layers]
    if target_layer is None:
        # No target layer (gradient methods on a model without feature maps): the
        # whole network, top-down.
        start = 0
    else:
        if target_layer not in names:
            raise UsageError(f"target layer {target_layer!r} is not a layer of the model "
                             f"itself; layers: {', '.join(names)}")
        start = names.index(target_layer)
    cascade = [(position, clone.layers[position]) for position in range(len(names) - 1, start - 1, -1)
               if clone.layers[position].weights]
    if not cascade:
        raise UsageError(f"no layer with weights from the top down to {target_layer!r}: "
                         "nothing to randomise")
    return cascade


def reinitialize(layer, flavor, seed, position):
    """Give every variable of `layer` (and of the layers nested in it) fresh values from
    its own initializer, seeded by (seed, position, variable number). Returns what each
    variable was given."""
    if flavor == "keras3":
        import keras as K
    else:
        import tf_keras as K
    given = []
    for number, (owner, variable) in enumerate(_variables(layer)):
        name = _short_name(variable)
        initializer = _initializer_of(owner, name)
        origin = ""
        if initializer is None:
            initializer = (K.initializers.GlorotUniform() if len(variable.shape) >= 2
                           else K.initializers.Zeros())
            origin = " (the layer names none: the default for its rank)"
        seeded = _seeded(initializer, _variable_seed(seed, position, number))
        values = seeded(tuple(variable.shape), dtype=variable.dtype)
        variable.assign(tf.cast(values, variable.dtype))
        prefix = "" if owner is layer else f"{owner.name}/"
        given.append(f"{prefix}{name}: {type(initializer).__name__}{origin}")
    return tuple(given)


def _variables(layer):
    """[(the layer that owns it, variable)]: a nested model's layers one by one, so each
    variable is matched with its own layer's initializers."""
    inner = getattr(layer, "layers", None)
    if inner:
        return [pair for sub in inner for pair in _variables(sub)]
    return [(layer, variable) for variable in layer.weights]


def _short_name(variable):
    """"kernel" from Keras 3's "kernel" and tf_keras's "conv/kernel:0"."""
    return variable.name.split("/")[-1].split(":")[0]


def _initializer_of(layer, name):
    """The initializer `layer` created variable `name` with, or None: Keras names them
    <variable>_initializer (kernel_initializer, gamma_initializer,
    moving_variance_initializer), <kind>_initializer for <kind>_kernel (depthwise,
    pointwise), and Keras 3's depthwise convolution keeps its kernel as "kernel"."""
    keys = [f"{name}_initializer"]
    if name.endswith("_kernel"):
        keys.append(f"{name[:-len('_kernel')]}_initializer")
    if name == "kernel":
        keys.append("depthwise_initializer")
    for key in keys:
        initializer = getattr(layer, key, None)
        if initializer is not None and callable(initializer):
            return initializer
    return None


def _seeded(initializer, seed):
    """A copy of `initializer` with `seed` (initializers without randomness as they are):
    a seeded Keras initializer gives the same values on every call."""
    config = initializer.get_config()
    if "seed" not in config:
        return initializer
    config["seed"] = seed
    return type(initializer).from_config(config)


def _variable_seed(seed, position, number):
    return int(np.random.SeedSequence([seed, position, number]).generate_state(1)[0] % 2 ** 31)


def _derangement(rng, count):
    """partner[N]: a seeded permutation with no fixed point (each image is paired with
    another one), the next image along a random cycle through all of them."""
    order = rng.permutation(count)
    partner = np.empty(count, np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def _other_classes(rng, targets, num_classes):
    """targets[N] -> a seeded random class other than each target, int32 [N]."""
    shift = rng.integers(1, num_classes, size=len(targets))
    return ((targets + shift) % num_classes).astype(np.int32)


def _control_maps(name, control, images):
    maps = np.asarray(control(images), np.float32)
    if maps.ndim != 3 or len(maps) != len(images):
        raise UsageError(f"control {name!r} must return maps [N,h,w] for {len(images)} "
                         f"images; it returned shape {maps.shape}")
    return maps


def _measure(maps_a, maps_b):
    unit_a, _ = kernels.scale_heatmaps(tf.abs(maps_a))
    unit_b, _ = kernels.scale_heatmaps(tf.abs(maps_b))
    return kernels.spearman(maps_a, maps_b), kernels.ssim(unit_a, unit_b)


# One compiled measure per map size (SSIM's window depends on it), for any count.
_MEASURES = {}


def _similarity(maps_a, maps_b):
    """(spearman[N], ssim[N]) float64 of two sets of raw maps [N,h,w], in chunks."""
    size = tuple(maps_a.shape[1:])
    if size not in _MEASURES:
        spec = tf.TensorSpec([None, *size], tf.float32)
        _MEASURES[size] = tf.function(_measure, input_signature=[spec, spec])
    spearman, ssim = [], []
    for start in range(0, len(maps_a), _SIMILARITY_CHUNK):
        chunk = slice(start, start + _SIMILARITY_CHUNK)
        values = _MEASURES[size](tf.constant(maps_a[chunk], tf.float32),
                                 tf.constant(maps_b[chunk], tf.float32))
        spearman.append(values[0].numpy())
        ssim.append(values[1].numpy())
    return np.concatenate(spearman).astype(np.float64), np.concatenate(ssim).astype(np.float64)


def _unit_maps(maps):
    """|maps| [n,h,w] divided by their largest magnitude, float32."""
    return kernels.scale_heatmaps(tf.abs(tf.constant(maps, tf.float32)))[0].numpy()
