"""Small models of every kind the suite needs, for Keras 3 and tf_keras alike.

`flavor` is "keras3" or "tf_keras"; every builder seeds its weights so that models are
the same from run to run.
"""

import keras
import tf_keras

from sightline.bench import zoo

FLAVORS = ("keras3", "tf_keras")


def keras_module(flavor):
    return {"keras3": keras, "tf_keras": tf_keras}[flavor]


def fashion_cnn(flavor, *, input_shape=(28, 28, 1), num_classes=10, softmax=True, seed=0):
    """The course's Fashion-MNIST CNN (the bench's own builder), smaller: conv 8/16/32/32."""
    K = keras_module(flavor)
    K.utils.set_random_seed(seed)
    return zoo.fashion_cnn(K, input_shape, num_classes, widths=(8, 16, 32, 32), softmax=softmax)


def functional_cnn(flavor, *, input_shape=(16, 16, 3), num_classes=4, head="gap_dense",
                   seed=0):
    """A functional CNN. head: "gap_dense" (Dropout between, softmax as its own layer),
    "flatten" (no CAM), "skip" (the head also reads an earlier tensor)."""
    K = keras_module(flavor)
    K.utils.set_random_seed(seed)
    inputs = K.Input(input_shape)
    x = K.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv_a")(inputs)
    x = K.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b")(x)
    pooled_early = K.layers.GlobalAveragePooling2D(name="early_pool")(x)
    x = K.layers.MaxPooling2D(name="pool")(x)
    x = K.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv_c")(x)
    if head == "gap_dense":
        x = K.layers.GlobalAveragePooling2D(name="gap")(x)
        x = K.layers.Dropout(0.3, name="dropout")(x)
        x = K.layers.Dense(num_classes, name="logits")(x)
        outputs = K.layers.Softmax(name="probabilities")(x)
    elif head == "flatten":
        x = K.layers.Flatten(name="flatten")(x)
        outputs = K.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    elif head == "skip":
        x = K.layers.GlobalAveragePooling2D(name="gap")(x)
        x = K.layers.Concatenate(name="concat")([x, pooled_early])
        outputs = K.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    else:
        raise ValueError(head)
    return K.Model(inputs, outputs)


def nested_mobilenet(flavor, *, input_shape=(32, 32, 3), num_classes=3, seed=0):
    """MobileNetV2 (random weights, alpha 0.35) used as a layer, GAP + dense on top."""
    K = keras_module(flavor)
    K.utils.set_random_seed(seed)
    base = K.applications.MobileNetV2(input_shape=input_shape, include_top=False,
                                      weights=None, alpha=0.35)
    inputs = K.Input(input_shape)
    x = base(inputs, training=False)
    x = K.layers.GlobalAveragePooling2D()(x)
    outputs = K.layers.Dense(num_classes, activation="softmax")(x)
    return K.Model(inputs, outputs)


def dense_only(flavor, *, input_shape=(8, 8, 1), num_classes=3, seed=0):
    """No convolutional layer at all: gradient methods only."""
    K = keras_module(flavor)
    K.utils.set_random_seed(seed)
    return K.Sequential([
        K.Input(input_shape),
        K.layers.Flatten(),
        K.layers.Dense(16, activation="tanh"),
        K.layers.Dense(num_classes, activation="softmax"),
    ])


def binary_sigmoid_cnn(flavor, *, input_shape=(16, 16, 3), seed=0):
    """Cats-vs-dogs style: one sigmoid unit."""
    K = keras_module(flavor)
    K.utils.set_random_seed(seed)
    return K.Sequential([
        K.Input(input_shape),
        K.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
        K.layers.GlobalAveragePooling2D(),
        K.layers.Dense(1, activation="sigmoid", name="classifier"),
    ])
