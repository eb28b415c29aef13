"""The naive eager loop, written the way the course computes it.

One image at a time, eagerly, with `tf.GradientTape`: a feature model gives the target
layer's activations and the class scores together; CAM multiplies the activations by
the dense layer's weights; Grad-CAM and saliency take the gradient of the explained
class's score. This is what people write from tutorials, and what `sightline bench`
measures the compiled step against. It is also a second, independent reference for
`explain(..., normalize=False, map_size="native")` in the tests.

The explained score is the pre-softmax logit (as in the engine): the feature model is
`sightline.model.adapter.adapt_model(model).forward`, which returns `(activations, logits)`.

Every function takes `model` (a Keras model or an adapter from `adapt_model`),
`images` float32 [N,H,W,C] and `targets` int [N] (None: the predicted class) and
returns the raw maps, float32 [N,h,w] (CAM family, the target layer's resolution) or
[N,H,W] (gradient methods).
"""

import numpy as np

def feature_model(model, layer=None):
    """The adapter whose forward(images) -> (activations[B,h,w,K], logits[B,classes])."""
    from sightline.model.adapter import ModelAdapter, adapt_model
    if isinstance(model, ModelAdapter):
        return model
    return adapt_model(model, layer=layer)


def _per_image(model, images, targets, layer, one_map):
    import tensorflow as tf
    adapter = feature_model(model, layer)
    images = np.asarray(images, np.float32)
    maps = []
    for i in range(images.shape[0]):
        x = tf.constant(images[i:i + 1])  # one image, batch of one
        target = None if targets is None else int(np.asarray(targets)[i])
        maps.append(one_map(adapter, x, target, i))
    return np.stack(maps).astype(np.float32)


def _class(logits, target):
    import tensorflow as tf
    return int(tf.argmax(logits[0])) if target is None else target


def eager_cam(model, images, targets=None, *, layer=None):
    """CAM: sum_k W[k,c] A[...,k] with W the dense weights [K,classes]."""
    def one(adapter, x, target, _):
        if adapter.cam_weights is None:
            raise ValueError(f"CAM cannot run: {adapter.cam_unsupported}")
        activations, logits = adapter.forward(x)
        c = _class(logits, target)
        weights = adapter.cam_weights[:, c]  # [K]
        return (activations[0] * weights).numpy().sum(-1)  # [h,w]
    return _per_image(model, images, targets, layer, one)


def _activation_gradients(adapter, x, target):
    import tensorflow as tf
    with tf.GradientTape() as tape:
        activations, logits = adapter.forward(x)
        c = _class(logits, target)
        score = logits[0, c]
    grads = tape.gradient(score, activations)
    return activations[0].numpy().astype(np.float32), grads[0].numpy().astype(np.float32)


def eager_gradcam(model, images, targets=None, *, layer=None):
    """Grad-CAM: ReLU(sum_k mean_ij(dy_c/dA[i,j,k]) A[...,k])."""
    def one(adapter, x, target, _):
        a, g = _activation_gradients(adapter, x, target)
        return np.maximum((a * g.mean(axis=(0, 1))).sum(-1), 0)
    return _per_image(model, images, targets, layer, one)


def eager_gradcam_plus_plus(model, images, targets=None, *, layer=None):
    """Grad-CAM++ with the closed-form weights (the exp(y_c) factor left out)."""
    def one(adapter, x, target, _):
        a, g = _activation_gradients(adapter, x, target)
        denominator = 2 * g ** 2 + a.sum(axis=(0, 1)) * g ** 3
        alpha = np.where(denominator != 0, g ** 2 / np.where(denominator != 0, denominator, 1), 0)
        weights = (alpha * np.maximum(g, 0)).sum(axis=(0, 1))
        return np.maximum((a * weights).sum(-1), 0)
    return _per_image(model, images, targets, layer, one)


def _input_gradient(adapter, x, target):
    import tensorflow as tf
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, logits = adapter.forward(x)
        c = _class(logits, target)
        score = logits[0, c]
    return tape.gradient(score, x)[0].numpy(), c  # [H,W,C]


def _reduce(values, channel_reduce):
    return values.max(-1) if channel_reduce == "max" else values.sum(-1)


def eager_saliency(model, images, targets=None, *, layer=None, channel_reduce="max"):
    """Saliency: reduce_C |dy_c/dx|."""
    def one(adapter, x, target, _):
        grads, _ = _input_gradient(adapter, x, target)
        return _reduce(np.abs(grads), channel_reduce)
    return _per_image(model, images, targets, layer, one)


def eager_smoothgrad(model, images, targets=None, *, layer=None, num_copies=25,
                     noise_sigma=0.15, noise_seed=0, channel_reduce="max", sample_index=None):
    """SmoothGrad: reduce_C |mean_j dy_c/dx (x + noise_j)|, one noisy copy at a time.

    The noise is the engine's (sightline.kernels.gradient_maps.sample_noise keyed by the sample's
    index), so the maps are comparable; the class is chosen on the clean image.
    """
    import tensorflow as tf
    from sightline.kernels.gradient_maps import sample_noise

    def one(adapter, x, target, i):
        index = i if sample_index is None else int(sample_index[i])
        _, logits = adapter.forward(x)
        c = _class(logits, target)
        spread = float(tf.reduce_max(x) - tf.reduce_min(x))
        total = np.zeros(x.shape[1:], np.float32)
        for j in range(num_copies):
            noise = sample_noise(noise_seed, tf.constant([index], tf.int64),
                                 tf.constant([j], tf.int32), tf.shape(x)[1:])[0]
            grads, _ = _input_gradient(adapter, x + noise * noise_sigma * spread, c)
            total += grads
        return _reduce(np.abs(total / num_copies), channel_reduce)
    return _per_image(model, images, targets, layer, one)


def eager_integrated_gradients(model, images, targets=None, *, layer=None, num_steps=32,
                               baseline=0.0):
    """Integrated Gradients, midpoint rule, summed over channels (signed)."""
    import tensorflow as tf

    def one(adapter, x, target, _):
        _, logits = adapter.forward(x)
        c = _class(logits, target)
        start = tf.fill(tf.shape(x), float(baseline))
        total = np.zeros(x.shape[1:], np.float32)
        for k in range(num_steps):
            alpha = (k + 0.5) / num_steps
            grads, _ = _input_gradient(adapter, start + alpha * (x - start), c)
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
        raise ValueError(f"the eager baseline has no method {method!r}; "
                         f"choose from {', '.join(EAGER_FUNCTIONS)}")
    return EAGER_FUNCTIONS[method](model, images, targets, **options)
