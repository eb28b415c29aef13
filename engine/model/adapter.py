"""Loading a model and adapting it to the one callable the kernels need.

`adapt_model` turns a Keras 3 or tf_keras model (in memory, or a path to `.keras`,
`.h5` or a SavedModel directory) into a `ModelAdapter` whose `forward(images)`
returns `(activations[B,h,w,K], logits[B,classes])`, built once.

Where the layers after the target layer form a sub-graph of their own, the adapter also
exposes `backbone(images) -> activations` and `head(activations) -> logits`, so that
CAM-family methods differentiate only the head: recording the whole forward pass on a
gradient tape halved Grad-CAM throughput on MobileNetV2.
"""

import dataclasses
import json
import os
import zipfile
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from sightline.config import PRECISIONS

# How the model turns its logits into its output.
OUTPUT_KINDS = ("logits", "softmax", "sigmoid", "binary_sigmoid", "served")


@dataclasses.dataclass(frozen=True)
class ModelAdapter:
    """A model reduced to what the explanation step needs.

    forward(images[B,H,W,C]) -> (activations[B,h,w,K] or None, logits[B,classes] float32)
    backbone(images) -> activations; head(activations) -> logits: None where the head
        cannot be separated (the step then records the whole forward pass).
    cam_weights[K,classes]: the dense kernel of a GAP + dense head, None otherwise,
        with `cam_unsupported` saying why. Read from the layer's variable on every
        access, so a compiled step sees the weights as they are when it runs.
    """

    forward: Callable
    backbone: Optional[Callable]
    head: Optional[Callable]
    input_shape: tuple  # (H, W, C); H and W may be None for fully convolutional models
    num_classes: int
    layer_name: Optional[str]
    logits_layer: Optional[str]  # the layer whose output (or pre-activation) is explained
    activation_shape: Optional[tuple]  # (h, w, K)
    cam_kernel: Optional[Callable]  # () -> cam_weights
    cam_unsupported: Optional[str]
    activations_unsupported: Optional[str]
    output_kind: str
    flavor: str  # "keras3", "tf_keras" or "saved_model"
    precision: str
    values_per_image: int  # activation values one image produces in a forward pass
    model: object = dataclasses.field(repr=False, default=None)

    @property
    def cam_weights(self):
        return None if self.cam_kernel is None else self.cam_kernel()

    def probabilities(self, logits):
        """logits[B,classes] float32 -> probabilities[B,classes] as the model outputs them."""
        if self.output_kind == "binary_sigmoid":
            # logits are [-z, z] for a single sigmoid unit: softmax([-z/2, z/2]) = [1-s(z), s(z)].
            return tf.nn.softmax(logits / 2.0, axis=-1)
        if self.output_kind == "sigmoid":
            return tf.sigmoid(logits)
        if self.output_kind == "served":
            return logits
        return tf.nn.softmax(logits, axis=-1)


# ----------------------------------------------------------------------------- loading


def load_model(source, *, unsafe=False):
    """Load a model from a path, or pass an in-memory Keras model through.

    Returns (model, flavor) with flavor "keras3", "tf_keras" or "saved_model".
    Keras safe mode stays on unless unsafe=True: a Lambda layer holding Python code is
    refused for both Keras flavours and both file formats (tf_keras applies no safe
    mode to `.h5` by itself, so the file's config is checked here before loading).
    """
    flavor = model_flavor(source)
    if flavor is not None:
        return source, flavor
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "model must be a Keras model (Keras 3 or tf_keras) or a path to a .keras, .h5 "
            f"or SavedModel directory; got {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.exists(path):
        raise ValueError(f"model file not found: {path!r}; pass the path of a .keras, .h5 "
                         "file or a SavedModel directory")
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"model directory {path!r} holds no saved_model.pb: it is not a "
                             "SavedModel; pass a .keras or .h5 file or a SavedModel directory")
        return tf.saved_model.load(path), "saved_model"
    lowered = path.lower()
    if lowered.endswith(".keras"):
        config, writer = _read_keras_zip(path)
    elif lowered.endswith((".h5", ".hdf5")):
        config, writer = _read_h5_config(path)
    else:
        raise ValueError(f"unrecognised model file {path!r}: expected a .keras or .h5 file "
                         "or a SavedModel directory")
    if not unsafe:
        lambdas = _lambda_layers(config)
        if lambdas:
            raise ValueError(
                f"model {path!r} has Lambda layer(s) {', '.join(lambdas)} holding Python code, "
                "which loading would run; pass unsafe=True (--unsafe) only if you trust the file")
    if writer == "keras3":
        import keras
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    else:
        import tf_keras
        if lowered.endswith(".keras"):
            model = tf_keras.models.load_model(path, compile=False, safe_mode=not unsafe)
        else:
            model = tf_keras.models.load_model(path, compile=False)
    return model, writer


def model_flavor(model):
    """"keras3" or "tf_keras" for an in-memory Keras model, None for anything else."""
    import keras
    if isinstance(model, keras.Model):
        return "keras3"
    try:
        import tf_keras
    except ImportError:  # pragma: no cover - tf-keras is a dependency
        return None
    if isinstance(model, tf_keras.Model):
        return "tf_keras"
    return None


def _writer_from_version(version, path):
    major = str(version).split(".")[0]
    if major == "3":
        return "keras3"
    if major == "2":
        return "tf_keras"
    raise ValueError(f"model file {path!r} was written by Keras {version!r}; sightline reads "
                     "files written by Keras 3 or tf_keras (Keras 2)")


def _read_keras_zip(path):
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read("metadata.json"))
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"model file {path!r} is not a valid .keras archive ({error}); "
                         "re-save the model with model.save('model.keras')") from None
    return config, _writer_from_version(metadata.get("keras_version", ""), path)


def _read_h5_config(path):
    import h5py
    try:
        with h5py.File(path, "r") as handle:
            attributes = dict(handle.attrs)
    except OSError as error:
        raise ValueError(f"model file {path!r} is not a readable HDF5 file ({error})") from None
    raw_config = attributes.get("model_config")
    if raw_config is None:
        raise ValueError(f"model file {path!r} holds no model_config: it stores weights only; "
                         "save the whole model with model.save()")
    if isinstance(raw_config, bytes):
        raw_config = raw_config.decode("utf-8")
    version = attributes.get("keras_version", b"")
    if isinstance(version, bytes):
        version = version.decode("utf-8")
    return json.loads(raw_config), _writer_from_version(version, path)


def _lambda_layers(config):
    """Names of every Lambda layer in a (nested) model config."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                found.append(repr((node.get("config") or {}).get("name", "?")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


# ----------------------------------------------------------------------------- precision


def with_precision(model, flavor, precision):
    """Rebuild a float32 Keras model under a mixed-precision policy, same weights.

    A global policy alone does nothing to a model that already exists: its layers
    carry their dtype in their config. The config is rewritten without layer dtypes,
    rebuilt under the policy and given the original weights.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "float32":
        return model
    if flavor == "saved_model":
        raise ValueError(f"precision {precision!r} needs a Keras model; a SavedModel runs as it "
                         "was saved: use precision='float32' or pass a .keras/.h5 file")
    if flavor == "keras3":
        import keras as K
        set_policy, get_policy = K.config.set_dtype_policy, K.config.dtype_policy
    else:
        import tf_keras as K
        set_policy, get_policy = K.mixed_precision.set_global_policy, K.mixed_precision.global_policy
    config = _without_layer_dtypes(model.get_config())
    previous = get_policy()
    set_policy(precision)
    try:
        if isinstance(model, K.Sequential):
            rebuilt = K.Sequential.from_config(config)
        else:
            rebuilt = K.Model.from_config(config)
    except Exception as error:
        raise ValueError(f"cannot rebuild the model under {precision!r} ({error}); "
                         "use precision='float32'") from None
    finally:
        set_policy(previous)
    copy_weights(model, rebuilt)
    return rebuilt


def copy_weights(source, target):
    """Assign every weight of `source` to the same-shaped variable of `target`, variable
    to variable: no round trip through host memory, which on a GPU would copy the whole
    model out and back in on every call of `explain` on a mixed-precision copy."""
    sources, targets = source.weights, target.weights
    if len(sources) != len(targets):
        raise ValueError(f"cannot copy weights: the source model has {len(sources)} weights "
                         f"and the target {len(targets)}")
    for value, variable in zip(sources, targets):
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"cannot copy weight {value.name!r} of shape {tuple(value.shape)} "
                             f"into one of shape {tuple(variable.shape)}")
        variable.assign(tf.cast(tf.convert_to_tensor(value), variable.dtype))


def _without_layer_dtypes(config):
    def walk(node):
        if isinstance(node, dict):
            node = {key: walk(value) for key, value in node.items()}
            inner = node.get("config")
            if ("class_name" in node and isinstance(inner, dict)
                    and node["class_name"] != "InputLayer" and "dtype" in inner):
                inner = dict(inner)
                inner.pop("dtype")
                node["config"] = inner
            return node
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(config)


# ----------------------------------------------------------------------------- adapting


def adapt_model(source, *, layer=None, precision="float32", unsafe=False):
    """Load (when given a path) and adapt a model; see `ModelAdapter`."""
    model, flavor = load_model(source, unsafe=unsafe)
    model = with_precision(model, flavor, precision)
    if flavor == "saved_model":
        return _adapt_saved_model(model, layer)
    return _adapt_keras(model, flavor, layer, precision)


def _adapt_saved_model(loaded, layer):
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise ValueError("the SavedModel has no 'serving_default' signature to call; export it "
                         "with model.export() (Keras 3) or model.save(dir) (tf_keras)")
    serve = signatures["serving_default"]
    input_specs = tf.nest.flatten(serve.structured_input_signature)
    if len(input_specs) != 1 or input_specs[0].shape.rank != 4:
        raise ValueError("the SavedModel's serving signature must take one image batch "
                         f"[B,H,W,C]; it takes {input_specs}")
    output_specs = serve.structured_outputs
    if len(output_specs) != 1:
        raise ValueError("the SavedModel's serving signature must return one output (the "
                         f"class scores); it returns {sorted(output_specs)}")
    (output_name, output_spec), = output_specs.items()
    argument = list(serve.structured_input_signature[1].keys())[0]
    input_dtype = input_specs[0].dtype
    reason = ("a SavedModel exposes no layers, so CAM-family methods (which need the target "
              "layer's activations) cannot run on it; save the model as .keras or .h5, or "
              "use saliency, smoothgrad or integrated_gradients")
    if layer is not None:
        raise ValueError(f"layer={layer!r} cannot be used with a SavedModel: {reason}")

    def forward(images):
        outputs = serve(**{argument: tf.cast(images, input_dtype)})
        return None, tf.cast(outputs[output_name], tf.float32)

    return ModelAdapter(
        forward=forward, backbone=None, head=None,
        input_shape=tuple(input_specs[0].shape[1:]),
        num_classes=int(output_spec.shape[-1]), layer_name=None, logits_layer=None,
        activation_shape=None,
        cam_kernel=None, cam_unsupported=reason, activations_unsupported=reason,
        output_kind="served", flavor="saved_model", precision="float32",
        # No layers to count: assume a network of typical depth for its input size.
        values_per_image=int(np.prod([d or 224 for d in input_specs[0].shape[1:]])) * 64,
        model=loaded)


def _flatten(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


class _Graph:
    """The model's own graph: for each layer, the tensor it produces and the tensors it
    reads in this model, found by walking back from the output.

    `layer.output` will not do: for a nested model it is the inner graph's output, and
    building a sub-model from an intermediate tensor adds nodes to the layers, so "the
    last inbound node" changes with every sub-model built.
    """

    def __init__(self, model):
        self.outputs = {}  # id(layer) -> tensor
        self.inputs = {}  # id(layer) -> [tensor]
        pending = list(_flatten(model.outputs))
        while pending:
            tensor = pending.pop()
            layer, node_index, _ = tensor._keras_history
            if id(layer) in self.outputs:
                continue
            node = layer._inbound_nodes[node_index]
            outputs = _flatten(node.output_tensors)
            if len(outputs) != 1:
                raise ValueError(f"layer {layer.name!r} has {len(outputs)} outputs; sightline "
                                 "explains models whose layers each produce one tensor")
            self.outputs[id(layer)] = outputs[0]
            self.inputs[id(layer)] = _flatten(node.input_tensors)
            pending.extend(self.inputs[id(layer)])

    def output_of(self, layer):
        return self.outputs.get(id(layer))

    def input_of(self, layer):
        inputs = self.inputs[id(layer)]
        if len(inputs) != 1:
            raise ValueError(f"layer {layer.name!r} reads {len(inputs)} tensors, expected one")
        return inputs[0]

    @staticmethod
    def producer(tensor):
        return tensor._keras_history[0]


def _activation_name(layer):
    function = getattr(layer, "activation", None)
    return getattr(function, "__name__", None)


def _is_dense(layer):
    return type(layer).__name__ in ("Dense",) and hasattr(layer, "kernel")


def _rank(tensor):
    return len(tensor.shape)


def _adapt_keras(model, flavor, layer, precision):
    if flavor == "keras3":
        import keras as K
    else:
        import tf_keras as K
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError("the model has no defined input: build it with an Input layer (or call "
                         "model.build((None, H, W, C))) before explaining it")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"sightline explains models with one image input and one output; this "
                         f"model has {len(model.inputs)} inputs and {len(model.outputs)} outputs")
    inputs = model.inputs[0]
    if _rank(inputs) != 4:
        raise ValueError(f"the model's input must be an image batch [B,H,W,C]; it is {tuple(inputs.shape)}")
    output = model.outputs[0]
    if _rank(output) != 2:
        raise ValueError(f"the model's output must be class scores [B,classes]; it is {tuple(output.shape)}")

    graph = _Graph(model)
    # --- logits: the pre-softmax scores, never the probabilities.
    final = graph.producer(output)
    final_activation = _activation_name(final)
    dense_with_activation = None
    if type(final).__name__ == "Softmax" or (type(final).__name__ == "Activation"
                                             and final_activation in ("softmax", "sigmoid")):
        output_kind = "softmax" if final_activation != "sigmoid" else "sigmoid"
        logits_tensor = graph.input_of(final)
    elif _is_dense(final) and final_activation in ("softmax", "sigmoid"):
        output_kind = final_activation
        logits_tensor = graph.input_of(final)  # the dense layer's input; its pre-activation is computed below
        dense_with_activation = final
    else:
        output_kind = "logits"
        logits_tensor = output
    num_classes = int(output.shape[-1])
    logits_layer = (dense_with_activation or graph.producer(logits_tensor)).name
    if output_kind == "sigmoid" and num_classes == 1:
        output_kind = "binary_sigmoid"
        num_classes = 2  # class 0 is explained by -z, class 1 by z

    def to_logits(values):  # values: the logits tensor's value [B, classes or features]
        values = tf.cast(values, tf.float32)
        if dense_with_activation is not None:
            kernel = tf.cast(tf.convert_to_tensor(dense_with_activation.kernel), tf.float32)
            values = tf.matmul(values, kernel)
            if dense_with_activation.use_bias:
                values = values + tf.cast(tf.convert_to_tensor(dense_with_activation.bias), tf.float32)
        if output_kind == "binary_sigmoid":
            values = tf.concat([-values, values], axis=-1)  # [B,2]: class 0 is explained by -z
        return values

    # --- target layer.
    candidates = [l for l in model.layers
                  if type(l).__name__ != "InputLayer" and graph.output_of(l) is not None
                  and _rank(graph.output_of(l)) == 4]
    target = None
    activations_unsupported = None
    if layer is None:
        # A head that pools with keepdims (MobileNetV3, MobileNet v1) leaves 4-D layers of
        # 1x1 after the last feature map, which say nothing about where: the default is
        # the last 4-D output before a global pooling. (A feature map that is 1x1 only
        # because the input is small stays the default: its CAM head is still there.)
        first_pool = next((i for i, l in enumerate(candidates)
                           if type(l).__name__.startswith("Global")), len(candidates))
        default_candidates = candidates[:first_pool] or candidates
        if default_candidates:
            target = default_candidates[-1]
        else:
            activations_unsupported = (
                "the model has no layer with a 4-D output (no convolutional feature maps), so "
                "CAM-family methods cannot run on it; use saliency, smoothgrad or "
                "integrated_gradients")
    else:
        names = [l.name for l in model.layers]
        if layer not in names:
            raise ValueError(f"layer {layer!r} is not in the model; layers with 4-D outputs: "
                             f"{', '.join(l.name for l in candidates) or 'none'}")
        target = model.get_layer(layer)
        if target not in candidates:
            shape = graph.output_of(target)
            shape = "unknown" if shape is None else tuple(shape.shape)
            raise ValueError(f"layer {layer!r} has output shape {shape}, "
                             "not a 4-D feature map [B,h,w,K]; layers with 4-D outputs: "
                             f"{', '.join(l.name for l in candidates) or 'none'}")

    if target is None:
        whole = K.Model(inputs, logits_tensor)

        def forward(images):
            return None, to_logits(whole(images, training=False))

        return ModelAdapter(
            forward=forward, backbone=None, head=None, input_shape=tuple(inputs.shape[1:]),
            num_classes=num_classes, layer_name=None, logits_layer=logits_layer,
            activation_shape=None, cam_kernel=None,
            cam_unsupported=activations_unsupported,
            activations_unsupported=activations_unsupported, output_kind=output_kind,
            flavor=flavor, precision=precision, values_per_image=_values_per_image(model),
            model=model)

    activations_tensor = graph.output_of(target)
    # Read the graph before building sub-models: building them adds nodes to the layers.
    cam_kernel, cam_unsupported = _cam_kernel(
        graph, activations_tensor, logits_tensor, dense_with_activation, output_kind)
    backbone_model = K.Model(inputs, activations_tensor)
    try:
        head_model = K.Model(activations_tensor, logits_tensor)
    except Exception:
        # The layers after the target also read tensors from before it (a skip
        # connection): no separate head, the step records the whole forward pass.
        head_model = None

    if head_model is not None:
        def backbone(images):
            return backbone_model(images, training=False)

        def head(activations):
            return to_logits(head_model(activations, training=False))

        def forward(images):
            activations = backbone(images)
            return activations, head(activations)
    else:
        backbone = head = None
        whole = K.Model(inputs, [activations_tensor, logits_tensor])

        def forward(images):
            activations, values = whole(images, training=False)
            return activations, to_logits(values)

    return ModelAdapter(
        forward=forward, backbone=backbone, head=head, input_shape=tuple(inputs.shape[1:]),
        num_classes=num_classes, layer_name=target.name, logits_layer=logits_layer,
        activation_shape=tuple(activations_tensor.shape[1:]), cam_kernel=cam_kernel,
        cam_unsupported=cam_unsupported, activations_unsupported=None,
        output_kind=output_kind, flavor=flavor, precision=precision,
        values_per_image=_values_per_image(model), model=model)


def _values_per_image(model):
    """Activation values per image over every layer, nested models included."""
    total = 0
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            total += _values_per_image(layer)
            continue
        try:
            shape = _flatten(layer._inbound_nodes[0].output_tensors)[0].shape[1:]
        except (AttributeError, IndexError, ValueError):
            continue
        total += int(np.prod([d if d is not None else 224 for d in shape]))
    return total


def _cam_kernel(graph, activations_tensor, logits_tensor, dense_with_activation, output_kind):
    """A reader of the dense kernel [K, classes] when the head is GAP -> (Dropout) -> Dense,
    else (None, a reason). A reader, not a copy: a copy taken here would go stale when
    the model trains on, while the step (cached per model by `explain`) lives on."""
    reason = ("CAM needs a head of global average pooling then one dense layer right after "
              "the target layer; this model's head is {}; use gradcam instead")
    dense = dense_with_activation
    if dense is None:
        producer = graph.producer(logits_tensor)
        if not (_is_dense(producer) and _activation_name(producer) in (None, "linear")):
            return None, reason.format(f"'{type(producer).__name__}' before the logits")
        dense = producer
    tensor = graph.input_of(dense)
    while type(graph.producer(tensor)).__name__ == "Dropout":
        tensor = graph.input_of(graph.producer(tensor))
    pooling = graph.producer(tensor)
    if type(pooling).__name__ != "GlobalAveragePooling2D":
        return None, reason.format(f"'{type(pooling).__name__}' before the dense layer")
    if getattr(pooling, "data_format", "channels_last") != "channels_last" or getattr(pooling, "keepdims", False):
        return None, reason.format("a pooling layer that is not channels_last without keepdims")
    if graph.input_of(pooling) is not activations_tensor:
        return None, reason.format("not fed by the target layer")
    def read():
        kernel = tf.cast(tf.convert_to_tensor(dense.kernel), tf.float32)  # [K,classes]
        if output_kind == "binary_sigmoid":
            kernel = tf.concat([-kernel, kernel], axis=-1)  # [K,2]
        return kernel

    return read, None
