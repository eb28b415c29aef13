"""The naive eager loop, written the way the course computes it.

One image at a time, eagerly, with `tf.GradientTape`: a feature model gives the target
layer's activations and the class scores together; CAM multiplies the activations by
the dense layer's weights; Grad-CAM and saliency take the gradient of the explained
class's score. This is what people write from tutorials, and what `sightline bench`
measures the compiled step against. It is also a second, independent reference for
`explain(..., normalize=False, map_size="native")` in the tests, so it shares nothing with
the engine's adapter or kernels: it walks the Keras model itself to find the target
layer and the logits, and draws SmoothGrad's noise from the noise's definition in NumPy.

- Target layer: the last layer with a 4-D output before the first global pooling layer
  (the last 4-D layer when there is no global pooling), in the model's layer order.
- Explained score: the pre-softmax logit, as DESIGN.md defines it. A final Softmax (or
  Activation("softmax"/"sigmoid")) layer is skipped by reading its input; a final Dense
  layer with a softmax or sigmoid activation is recomputed from its kernel and bias
  without the activation. A single sigmoid unit z explains class 0 by -z, class 1 by z.

Every function takes `model` (a Keras model, or an adapter from `adapt_model`: then its
Keras model is walked at the adapter's layer, which the caller may have chosen; a
SavedModel or a nested model, which this walk cannot enter, falls back on the adapter's
forward and is then no independent reference), `images`
float32 [N,H,W,C] and `targets` int [N] (None: the predicted class) and returns the
raw maps, float32 [N,h,w] (CAM family, the target layer's resolution) or [N,H,W]
(gradient methods).
"""

import numpy as np

from sightline.errors import UsageError

_FINAL_ACTIVATIONS = ("softmax", "sigmoid")


class FeatureModel:
    """forward(images) -> (activations[B,h,w,K] or None, logits[B,classes]), and the dense
    kernel [K,classes] of a GAP -> (Dropout) -> Dense head (None for any other head)."""

    def __init__(self, forward, cam_weights=None, cam_unsupported=None):
        self.forward = forward
        self.cam_weights = cam_weights
        self.cam_unsupported = cam_unsupported


def _keras_module(model):
    import tf_keras
    if isinstance(model, tf_keras.Model):
        return tf_keras
    import keras
    return keras


def _activation_name(layer):
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _global_pooling(layer):
    return type(layer).__name__.startswith("Global")


def _output_rank(layer):
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return None  # an input layer, or a layer with no single output


def feature_model(model, layer=None):
    """A FeatureModel for `model`, found by walking the model's layers (see the module)."""
    if hasattr(model, "layers"):
        return _walk(model, layer)
    adapter = model
    if getattr(adapter.model, "layers", None) is not None:
        try:
            return _walk(adapter.model, adapter.layer_name if layer is None else layer)
        except _NotWalkable:
            pass
    # A SavedModel or a nested model: only the adapter knows its way in.
    return FeatureModel(adapter.forward, adapter.cam_weights, adapter.cam_unsupported)


class _NotWalkable(ValueError):
    pass


def _walk(model, layer):
    import tensorflow as tf
    K = _keras_module(model)
    layers = [l for l in model.layers if type(l).__name__ != "InputLayer"]

    # The logits: the input of a final softmax, or a final dense layer without its activation.
    final = layers[-1]
    final_kind, final_activation = type(final).__name__, _activation_name(final)
    logits_dense = None
    if final_kind == "Softmax" or (final_kind == "Activation"
                                   and final_activation in _FINAL_ACTIVATIONS):
        logits_tensor = final.input
        sigmoid = final_activation == "sigmoid"
    elif hasattr(final, "kernel") and final_activation in _FINAL_ACTIVATIONS:
        logits_tensor, logits_dense = final.input, final
        sigmoid = final_activation == "sigmoid"
    else:
        logits_tensor, sigmoid = final.output, False
    binary = sigmoid and int(final.output.shape[-1]) == 1

    def to_logits(values):  # values [B,features] (before the dense) or [B,classes]
        if logits_dense is not None:
            values = tf.matmul(values, tf.convert_to_tensor(logits_dense.kernel))
            if logits_dense.bias is not None:
                values = values + tf.convert_to_tensor(logits_dense.bias)
        return tf.concat([-values, values], axis=-1) if binary else values  # [B,classes]

    # The target layer: the last 4-D output before the first global pooling.
    if layer is not None:
        try:
            target = model.get_layer(layer)
        except ValueError as error:
            # A Keras 3 operation or a layer inside a nested model, which the adapter
            # names ("add_17", "base/layer") but get_layer cannot find.
            raise _NotWalkable(str(error)) from None
    else:
        before_pooling = []
        for candidate in layers:
            if _global_pooling(candidate):
                break
            before_pooling.append(candidate)
        four_d = [l for l in (before_pooling or layers) if _output_rank(l) == 4]
        target = four_d[-1] if four_d else None

    try:
        if target is None:
            whole = K.Model(model.inputs, logits_tensor)
            return FeatureModel(lambda x: (None, to_logits(whole(x, training=False))),
                                cam_unsupported="the model has no layer with a 4-D output")
        features = K.Model(model.inputs, [target.output, logits_tensor])
    except ValueError as error:
        # A nested model's `output` is a tensor of its own inner graph.
        reached = "the logits" if target is None else f"layer {target.name!r} and the logits"
        raise _NotWalkable(f"the eager baseline cannot reach {reached} from the model's input: "
                           "it walks models whose layers are called once, in one graph (no "
                           "nested models); pass adapt_model(model) to use the engine's adapter "
                           "instead") from error

    def forward(x):
        activations, values = features(x, training=False)
        return activations, to_logits(values)

    # CAM's weights: the layers after the target must be GAP, any Dropout, then one Dense.
    head = [type(l).__name__ for l in layers[layers.index(target) + 1:]]
    dense = logits_dense or final
    if logits_dense is None and final_kind in ("Softmax", "Activation"):
        head, dense = head[:-1], layers[-2]
    head = [name for name in head if name != "Dropout"]
    cam_weights = cam_unsupported = None
    if head == ["GlobalAveragePooling2D", "Dense"] and _activation_name(dense) in (
            None, "linear", *_FINAL_ACTIVATIONS):
        cam_weights = np.asarray(dense.kernel, np.float32)  # [K,classes]
        if binary:
            cam_weights = np.concatenate([-cam_weights, cam_weights], axis=-1)  # [K,2]
    else:
        cam_unsupported = f"the head after {target.name!r} is {head}, not GAP then Dense"
    return FeatureModel(forward, cam_weights, cam_unsupported)


def _per_image(model, images, targets, layer, one_map):
    import tensorflow as tf
    features = feature_model(model, layer)
    images = np.asarray(images, np.float32)
    maps = []
    for i in range(images.shape[0]):
        x = tf.constant(images[i:i + 1])  # one image, batch of one
        target = None if targets is None else int(np.asarray(targets)[i])
        maps.append(one_map(features, x, target, i))
    return np.stack(maps).astype(np.float32)


def _class(logits, target):
    return int(np.argmax(logits[0])) if target is None else target


def eager_cam(model, images, targets=None, *, layer=None):
    """CAM: sum_k W[k,c] A[...,k] with W the dense weights [K,classes]."""
    def one(features, x, target, _):
        if features.cam_weights is None:
            raise UsageError(f"CAM cannot run: {features.cam_unsupported}")
        activations, logits = features.forward(x)
        c = _class(logits, target)
        weights = np.asarray(features.cam_weights)[:, c]  # [K]
        return (activations[0].numpy() * weights).sum(-1)  # [h,w]
    return _per_image(model, images, targets, layer, one)


def _activation_gradients(features, x, target):
    import tensorflow as tf
    with tf.GradientTape() as tape:
        activations, logits = features.forward(x)
        if activations is None:
            raise UsageError("CAM-family methods need a layer with a 4-D output; this model "
                             "has none: use saliency, smoothgrad or integrated_gradients")
        c = _class(logits, target)
        score = logits[0, c]
    grads = tape.gradient(score, activations)
    return activations[0].numpy().astype(np.float32), grads[0].numpy().astype(np.float32)


def eager_gradcam(model, images, targets=None, *, layer=None):
    """Grad-CAM: ReLU(sum_k mean_ij(dy_c/dA[i,j,k]) A[...,k])."""
    def one(features, x, target, _):
        a, g = _activation_gradients(features, x, target)
        return np.maximum((a * g.mean(axis=(0, 1))).sum(-1), 0)
    return _per_image(model, images, targets, layer, one)


def eager_gradcam_plus_plus(model, images, targets=None, *, layer=None):
    """Grad-CAM++ with the closed-form weights (the exp(y_c) factor left out)."""
    def one(features, x, target, _):
        a, g = _activation_gradients(features, x, target)
        denominator = 2 * g ** 2 + a.sum(axis=(0, 1)) * g ** 3
        alpha = np.where(denominator != 0, g ** 2 / np.where(denominator != 0, denominator, 1), 0)
        weights = (alpha * np.maximum(g, 0)).sum(axis=(0, 1))
        return np.maximum((a * weights).sum(-1), 0)
    return _per_image(model, images, targets, layer, one)


def _input_gradient(features, x, target):
    import tensorflow as tf
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, logits = features.forward(x)
        c = _class(logits, target)
        score = logits[0, c]
    return tape.gradient(score, x)[0].numpy(), c  # [H,W,C]


def _reduce(values, channel_reduce):
    return values.max(-1) if channel_reduce == "max" else values.sum(-1)


def eager_saliency(model, images, targets=None, *, layer=None, channel_reduce="max"):
    """Saliency: reduce_C |dy_c/dx|."""
    def one(features, x, target, _):
        grads, _ = _input_gradient(features, x, target)
        return _reduce(np.abs(grads), channel_reduce)
    return _per_image(model, images, targets, layer, one)


# SmoothGrad's noise, from its definition (the engine's kernels draw the same numbers in
# TensorFlow): every value is a function of (seed, sample index, copy, position) only.
#   hash(v)     "lowbias32": v ^= v >> 16; v *= 0x7FEB352D; v ^= v >> 15; v *= 0x846CA68B;
#               v ^= v >> 16, all in uint32 arithmetic (products wrap modulo 2**32)
#   mix(k, v)   hash(k ^ hash(v + 0x9E3779B9))
#   sample key  mix(mix(seed, low 32 bits of the index), high 32 bits of the index)
#   copy key    mix(sample key, copy)
#   value n     (n counts the image's values in H, W, C order, C fastest)
#               u1 = uniform(mix(copy key, 2n)), u2 = uniform(mix(copy key, 2n + 1)),
#               uniform(bits) = ((bits >> 8) + 1/2) / 2**24, in (0, 1)
#               noise = sqrt(-2 ln u1) cos(2 pi u2)       (Box-Muller)
_UINT32 = 0xFFFFFFFF


def _lowbias32(values):
    values = np.asarray(values, np.uint64) & _UINT32  # uint64 holds every product before wrapping
    values ^= values >> 16
    values = (values * 0x7FEB352D) & _UINT32
    values ^= values >> 15
    values = (values * 0x846CA68B) & _UINT32
    values ^= values >> 16
    return values


def _mix(key, values):
    return _lowbias32(np.uint64(key) ^ _lowbias32((np.asarray(values, np.uint64) + 0x9E3779B9)
                                                  & _UINT32))


def _uniform(bits):
    return ((bits >> 8).astype(np.float64) + 0.5) / 2.0 ** 24


def smoothgrad_noise(seed, sample_index, copy, image_shape):
    """Standard normal noise [H,W,C] (float64) of copy `copy` of sample `sample_index`."""
    index = int(sample_index)
    sample_key = _mix(_mix(int(seed) & _UINT32, index & _UINT32), (index >> 32) & _UINT32)
    copy_key = _mix(sample_key, int(copy))
    positions = np.arange(int(np.prod(image_shape)), dtype=np.uint64)
    radius = np.sqrt(-2.0 * np.log(_uniform(_mix(copy_key, 2 * positions))))
    angle = 2.0 * np.pi * _uniform(_mix(copy_key, 2 * positions + 1))
    return (radius * np.cos(angle)).reshape(image_shape)


def eager_smoothgrad(model, images, targets=None, *, layer=None, num_copies=25,
                     noise_sigma=0.15, noise_seed=0, channel_reduce="max", sample_index=None):
    """SmoothGrad: reduce_C |mean_j dy_c/dx (x + noise_j)|, one noisy copy at a time.

    Noise std = noise_sigma * (max(x) - min(x)); the noise of copy j is
    `smoothgrad_noise(noise_seed, index, j)` with the sample's index (its position in
    `images` unless `sample_index` gives it), so the maps are comparable with the
    engine's; the class is chosen on the clean image.
    """
    import tensorflow as tf

    def one(features, x, target, i):
        index = i if sample_index is None else int(sample_index[i])
        _, logits = features.forward(x)
        c = _class(logits, target)
        pixels = x.numpy()[0].astype(np.float64)  # [H,W,C]
        spread = pixels.max() - pixels.min()
        total = np.zeros(pixels.shape, np.float64)
        for j in range(num_copies):
            noise = smoothgrad_noise(noise_seed, index, j, pixels.shape)
            noisy = (pixels + noise * noise_sigma * spread).astype(np.float32)[None]
            grads, _ = _input_gradient(features, tf.constant(noisy), c)
            total += grads
        return _reduce(np.abs(total / num_copies), channel_reduce)
    return _per_image(model, images, targets, layer, one)


def eager_integrated_gradients(model, images, targets=None, *, layer=None, num_steps=32,
                               baseline=0.0):
    """Integrated Gradients, midpoint rule, summed over channels (signed)."""
    import tensorflow as tf

    def one(features, x, target, _):
        _, logits = features.forward(x)
        c = _class(logits, target)
        start = tf.fill(tf.shape(x), float(baseline))
        total = np.zeros(x.shape[1:], np.float32)
        for k in range(num_steps):
            alpha = (k + 0.5) / num_steps
            grads, _ = _input_gradient(features, start + alpha * (x - start), c)
            total += grads
        return ((x - start)[0].numpy() * total / num_steps).sum(-1)
    return _per_image(model, images, targets, layer, one)


EAGER_FUNCTIONS = {
    "cam": eager_cam,
    "gradcam": eager_gradcam,
    "gradcam_plus_plus": eager_gradcam_plus_plus,
    "saliency": eager_saliency,
    "smoothgrad": eager_smoothgrad,
    "integrated_gradients": eager_integrated_gradients,
}


def eager_maps(method, model, images, targets=None, **options):
    """Dispatch by method name; options are the method's own (num_copies, ...)."""
    if method not in EAGER_FUNCTIONS:
        raise UsageError(f"the eager baseline has no method {method!r}; "
                         f"choose from {', '.join(EAGER_FUNCTIONS)}")
    return EAGER_FUNCTIONS[method](model, images, targets, **options)
