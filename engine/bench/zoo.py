"""The benchmark's models and its fixed batch: built-in models with random weights
(nothing is downloaded) or the user's file, and the calls each mode times (the compiled
step, eager, distributed; compiled inference; the naive eager loop).

TensorFlow is imported inside functions: the CLI imports this room to build --help.
"""

import os

import numpy as np

from sightline.bench.eager_baseline import EAGER_FUNCTIONS
from sightline.config import make_config
from sightline.kernels.methods import CLASS_WEIGHTS, LAYER
from sightline.kernels.methods import METHODS as METHOD_TABLE
from sightline.store.layout import heatmap
from sightline.errors import UsageError

# Every method of the table with an eager loop to measure it against, in table order.
BENCH_METHODS = tuple(name for name in METHOD_TABLE if name in EAGER_FUNCTIONS)
MODES = ("eager_loop", "eager_batched", "graph", "xla", "bf16")
BUILTIN_MODELS = ("fashion", "mobilenet_v2", "resnet50", "small_cnn")
# The settings; the tiny size (CI: every benchmark once, so none can rot) keeps
# the code paths and cuts the work per image.
BENCH_METHOD_OPTIONS = {
    "full": {"smoothgrad": {"num_copies": 8}, "integrated_gradients": {"num_steps": 16}},
    "tiny": {"smoothgrad": {"num_copies": 2}, "integrated_gradients": {"num_steps": 2}},
}

# Per size and model: input shape, batch size, images the eager loop explains, and the
# seconds of timed calls per row (at least one call, at most MAX_REPS).
PRESETS = {
    "full": {
        "fashion": dict(input_shape=(28, 28, 1), classes=10, batch=256, eager_images=16,
                        seconds=2.0),
        "mobilenet_v2": dict(input_shape=(224, 224, 3), classes=1000, batch=16,
                             eager_images=2, seconds=4.0),
        "resnet50": dict(input_shape=(224, 224, 3), classes=1000, batch=16, eager_images=2,
                         seconds=4.0),
        "small_cnn": dict(input_shape=(128, 128, 3), classes=10, batch=64, eager_images=4,
                          seconds=3.0),
        "path": dict(batch=32, eager_images=4, seconds=3.0),
    },
    "tiny": {
        "fashion": dict(input_shape=(28, 28, 1), classes=10, batch=8, eager_images=2,
                        seconds=0.0),
        "mobilenet_v2": dict(input_shape=(32, 32, 3), classes=10, batch=2, eager_images=1,
                             seconds=0.0),
        "resnet50": dict(input_shape=(32, 32, 3), classes=10, batch=2, eager_images=1,
                         seconds=0.0),
        "small_cnn": dict(input_shape=(32, 32, 3), classes=10, batch=4, eager_images=1,
                          seconds=0.0),
        "path": dict(batch=4, eager_images=1, seconds=0.0),
    },
}


def fashion_cnn(K, input_shape, num_classes, *, widths=(16, 32, 64, 128), softmax=True):
    """The course's Fashion-MNIST CNN, Sequential: three convolutions each followed by max
    pooling, a last convolution (`last_conv`, the target layer), global average pooling
    and a dense classifier. K: the Keras module (keras or tf_keras); widths: the four
    convolutions' channels (the tests build a smaller one)."""
    first, second, third, last = widths
    return K.Sequential([
        K.Input(input_shape),
        K.layers.Conv2D(first, 3, padding="same", activation="relu"),
        K.layers.MaxPooling2D(),
        K.layers.Conv2D(second, 3, padding="same", activation="relu"),
        K.layers.MaxPooling2D(),
        K.layers.Conv2D(third, 3, padding="same", activation="relu"),
        K.layers.MaxPooling2D(),
        K.layers.Conv2D(last, 3, padding="same", activation="relu", name="last_conv"),
        K.layers.GlobalAveragePooling2D(),
        K.layers.Dense(num_classes, activation="softmax" if softmax else None,
                       name="classifier"),
    ], name="fashion_cnn")


def small_cnn(K, input_shape, num_classes):
    """A small CNN for photographs (the end-to-end benchmark on 128x128 JPEGs): five 3x3
    convolutions, the first three with stride 2, the last (`last_conv`) the target
    layer, then global average pooling and a dense softmax classifier."""
    layers = [K.Input(input_shape)]
    for width, stride in ((16, 2), (32, 2), (64, 2), (64, 1)):
        layers.append(K.layers.Conv2D(width, 3, strides=stride, padding="same",
                                      activation="relu"))
    return K.Sequential(layers + [
        K.layers.Conv2D(128, 3, padding="same", activation="relu", name="last_conv"),
        K.layers.GlobalAveragePooling2D(),
        K.layers.Dense(num_classes, activation="softmax", name="classifier"),
    ], name="small_cnn")


def build_model(name, size="full", seed=0):
    """A built-in model with random weights (nothing is downloaded)."""
    import keras as K
    preset = PRESETS[size][name]
    K.utils.set_random_seed(seed)
    shape, classes = preset["input_shape"], preset["classes"]
    if name == "fashion":
        return fashion_cnn(K, shape, classes)
    if name == "mobilenet_v2":
        return K.applications.MobileNetV2(input_shape=shape, weights=None, classes=classes)
    if name == "resnet50":
        return K.applications.ResNet50(input_shape=shape, weights=None, classes=classes)
    if name == "small_cnn":
        return small_cnn(K, shape, classes)
    raise UsageError(f"unknown built-in model {name!r}; choose from {', '.join(BUILTIN_MODELS)} "
                     "or pass a model file")


class Context:
    """One model, its adapter, one fixed batch of images and targets."""

    def __init__(self, model, size="full", batch_size=None, seed=0, layer=None):
        from sightline.model.adapter import UNKNOWN_DIMENSION, adapt_model, load_model
        self.name = model if model in BUILTIN_MODELS else os.path.basename(str(model))
        preset = dict(PRESETS[size]["path" if model not in BUILTIN_MODELS else model])
        if model in BUILTIN_MODELS:
            self.model, self.flavor = build_model(model, size, seed), "keras3"
        else:
            self.model, self.flavor = load_model(model)
        self.source = model
        self.layer = layer
        self.adapter = adapt_model(self.model, layer=layer)
        shape = tuple(d if d is not None else UNKNOWN_DIMENSION for d in self.adapter.input_shape)
        self.image_shape = shape
        self.batch = int(batch_size or preset["batch"])
        self.eager_images = min(int(preset["eager_images"]), self.batch)
        self.seconds = float(preset["seconds"])
        self.size = size
        rng = np.random.default_rng(seed)
        self.images = rng.uniform(0, 1, (self.batch, *shape)).astype(np.float32)
        self.targets = (np.arange(self.batch) % self.adapter.num_classes).astype(np.int32)
        self.sample_index = np.arange(self.batch, dtype=np.int64)
        self.methods_supported = [
            m for m in BENCH_METHODS
            if not (CLASS_WEIGHTS in METHOD_TABLE[m].arguments and self.adapter.cam_unsupported)
            and not (METHOD_TABLE[m].resolution == LAYER and self.adapter.activations_unsupported)]
        self._adapters = {"float32": self.adapter}
        self.strategy = None

    def options(self, *methods):
        """The method options (num_copies, num_steps) of this size, for these methods."""
        return {k: v for m in methods for k, v in BENCH_METHOD_OPTIONS[self.size].get(m, {}).items()}

    def adapter_for(self, precision):
        from sightline.model.adapter import adapt_model
        if precision not in self._adapters:
            self._adapters[precision] = adapt_model(self.model, layer=self.layer,
                                                    precision=precision)
        return self._adapters[precision]

    def config(self, method, precision="float32", xla=False):
        return make_config((method,), layer=self.layer, normalize=False, map_size="native",
                           precision=precision, batch_size=self.batch, xla=xla,
                           **self.options(method))

    def step_call(self, method, precision="float32", xla=False, eager=False):
        """A no-argument callable running the step on the context's batch -> raw maps."""
        import tensorflow as tf

        from sightline.compute.step import build_step
        adapter = self.adapter_for(precision)
        config = self.config(method, precision, xla)
        strategy = self.strategy
        replicas = 1 if strategy is None or eager else strategy.num_replicas_in_sync
        step = build_step(adapter, config, self.batch // replicas, self.image_shape)
        images = tf.constant(self.images)
        targets = tf.constant(self.targets)
        index = tf.constant(self.sample_index)
        key = heatmap(method)  # the step names its maps as the shards do
        if eager:
            function = step.python_function
            return lambda: function(images, targets, index)[key].numpy()
        if replicas == 1:
            return lambda: step(images, targets, index)[key].numpy()

        @tf.function
        def distributed(i, t, s):
            return strategy.run(lambda a, b, c: step(a, b, c), args=(i, t, s))[key]

        dataset = tf.data.Dataset.from_tensor_slices((images, targets, index)).batch(self.batch)
        inputs = next(iter(strategy.experimental_distribute_dataset(dataset)))
        return lambda: np.concatenate([v.numpy() for v in strategy.experimental_local_results(
            distributed(*inputs))])

    def inference_call(self, precision="float32", xla=False):
        import tensorflow as tf
        adapter = self.adapter_for(precision)
        model = adapter.model
        images = tf.constant(self.images)
        if self.flavor == "saved_model":
            function = tf.function(lambda x: adapter.forward(x)[1], jit_compile=xla)
        else:
            function = tf.function(lambda x: model(x, training=False), jit_compile=xla)
        return lambda: function(images).numpy()

    def eager_call(self, method, count):
        from sightline.bench.eager_baseline import eager_maps
        options = self.options(method)
        return lambda: eager_maps(method, self.adapter, self.images[:count],
                                  self.targets[:count], **options)
