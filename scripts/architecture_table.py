"""Print the README's table of architectures and the default target layer each gets.

    .venv/bin/python scripts/architecture_table.py [--quick]

Builds every keras.applications family at a small input with random weights (nothing is
downloaded), in Keras 3 and in tf_keras, plus the model shapes people write by hand, and
prints one Markdown row per model: the layer `adapt_model` picks by default, its map,
and whether CAM runs. --quick builds one application per flavour (a smoke test).
"""

import argparse
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (family, constructor, input side): 139 px where 64 px is refused or leaves a 1x1 map.
APPLICATIONS = [
    ("VGG16", "VGG16", 64), ("VGG19", "VGG19", 64), ("ResNet", "ResNet50", 64),
    ("ResNetV2", "ResNet50V2", 64), ("Xception", "Xception", 139),
    ("InceptionV3", "InceptionV3", 139), ("InceptionResNetV2", "InceptionResNetV2", 139),
    ("MobileNet", "MobileNet", 64), ("MobileNetV2", "MobileNetV2", 64),
    ("MobileNetV3Small", "MobileNetV3Small", 64), ("MobileNetV3Large", "MobileNetV3Large", 64),
    ("DenseNet", "DenseNet121", 64), ("NASNet", "NASNetMobile", 64),
    ("EfficientNet", "EfficientNetB0", 64), ("EfficientNetV2", "EfficientNetV2B0", 64),
    ("ConvNeXt", "ConvNeXtTiny", 64), ("RegNet", "RegNetX002", 64),
]


def shapes(K):
    """(name, model) of the hand-written shapes: Sequential, functional, nested,
    subclassed (traceable and not), a ViT-like patch embedding."""
    layers = K.layers
    sequential = K.Sequential([
        K.Input((32, 32, 3)), layers.Conv2D(8, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(16, 3, activation="relu", name="last_conv"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(5, activation="softmax")])
    inputs = K.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="branch")(x)
    x = layers.Add(name="residual")([x, y])
    functional = K.Model(inputs, layers.Dense(5)(layers.GlobalAveragePooling2D()(x)))
    base = K.applications.MobileNetV2(input_shape=(64, 64, 3), include_top=False,
                                      weights=None, alpha=0.35, pooling="avg")
    inputs = K.Input((64, 64, 3))
    nested = K.Model(inputs, layers.Dense(5, activation="softmax")(base(inputs)))

    class Traceable(K.Model):
        def __init__(self):
            super().__init__()
            self.first = layers.Conv2D(8, 3, activation="relu")
            self.second = layers.Conv2D(16, 3, activation="relu")
            self.pool = layers.GlobalAveragePooling2D()
            self.classifier = layers.Dense(5)

        def call(self, x, training=False):
            return self.classifier(self.pool(self.second(self.first(x))))

    class Opaque(Traceable):
        def call(self, x, training=False):
            import tensorflow as tf
            return self.classifier(self.pool(tf.nn.relu(self.second(self.first(x)))))

    traceable, opaque = Traceable(), Opaque()
    for model in (traceable, opaque):
        model.build((None, 32, 32, 3))
    inputs = K.Input((32, 32, 3))
    patches = layers.Conv2D(16, 8, strides=8, name="patch_embedding")(inputs)  # [B,4,4,16]
    tokens = layers.Reshape((16, 16))(patches)
    attended = layers.MultiHeadAttention(2, 8)(tokens, tokens)
    tokens = layers.LayerNormalization()(layers.Add()([tokens, attended]))
    vit = K.Model(inputs, layers.Dense(5)(layers.GlobalAveragePooling1D()(tokens)))
    return [("Sequential, Flatten head", sequential), ("functional, residual Add", functional),
            ("MobileNetV2 nested, pooling='avg'", nested), ("subclassed, traceable", traceable),
            ("subclassed, tf op in call()", opaque), ("ViT-like, conv patch embedding", vit)]


# What sightline's warnings say, in the table's words.
_SAID = {"first feature map": "first feature map: patch embedding?",
         "explained as a whole": "explained as a whole: gradient methods only",
         "skip connection": "skip connection: whole-model tape"}


def row(name, flavor, model, input_shape):
    from sightline import adapt_model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = adapt_model(model, input_shape=input_shape)
    said = "; ".join(sorted({summary for w in caught for key, summary in _SAID.items()
                             if key in str(w.message)}))
    shape = "x".join(str(d) for d in adapter.activation_shape) if adapter.activation_shape else "-"
    cam = "yes" if adapter.cam_unsupported is None else "no"
    layer = f"`{adapter.layer_name}`" if adapter.layer_name else "none (gradient methods)"
    return f"| {name} | {flavor} | {input_shape[0]} | {layer} | {shape} | {cam} | {said} |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import keras
    import tf_keras
    print("| Model | Keras | Input | Default layer | Map | CAM | Warning |")
    print("|---|---|---|---|---|---|---|")
    for flavor, K in (("3", keras), ("tf_keras", tf_keras)):
        for family, constructor, side in APPLICATIONS[:1] if args.quick else APPLICATIONS:
            build = getattr(K.applications, constructor, None)
            if build is None:
                continue  # Keras 3 has no RegNet
            K.utils.set_random_seed(0)
            model = build(weights=None, input_shape=(side, side, 3), classes=5)
            print(row(f"{family} ({constructor})", flavor, model, (side, side, 3)), flush=True)
            K.backend.clear_session()
        if not args.quick:
            for name, model in shapes(K):
                print(row(name, flavor, model, tuple(model.inputs[0].shape[1:])
                          if getattr(model, "inputs", None) else (32, 32, 3)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
