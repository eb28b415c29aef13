"""Adapting a model to the one callable the kernels need (loading: `loading.py`;
mixed precision: `precision.py`).

`adapt_model` turns a Keras 3 or tf_keras model (in memory, or a path to `.keras`,
`.h5` or a SavedModel directory) into a `ModelAdapter` whose `forward(images)`
returns `(activations[B,h,w,K], logits[B,classes])`, built once.

The default target layer (`DEFAULT_LAYER_RULE`) is the last feature map that the head
reads, through nested models, squeeze-excite blocks and residual adds; never a pooling
that only shrinks it. Found by walking back from the logits through the head (dense,
dropout, flatten, activations, global pooling, the 1x1 maps after a pooling with
keepdims) to the first 4-D tensor with more than one position, or to what a global
pooling reads; a squeeze-excite branch's 4-D tensors are 1x1 and sit before that map, a
residual written `x + y` (a Keras 3 operation, not a layer) is a tensor like any other,
and a window pooling (VGG's block5_pool before its Flatten) is stepped back to the map
it reads. Any tensor of the graph can be named instead: a layer, an operation
(`add_17`), a layer inside a nested model (`base/layer`). A subclassed model is traced
through its `call` into a graph of its layers when that runs on symbolic tensors, and
explained as a whole (gradient methods only) when it does not.

Where the layers after the target layer form a sub-graph of their own, the adapter also
exposes `backbone(images) -> activations` and `head(activations) -> logits`, so that
CAM-family methods differentiate only the head: recording the whole forward pass on a
gradient tape halved Grad-CAM throughput on MobileNetV2.
"""

import dataclasses
import difflib
import os
import sys
import warnings
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from sightline.errors import UsageError
from sightline.model.folding import fold_batch_normalization
from sightline.model.graph import (Graph, built_input_shape, flatten, functional_inputs,
                                   is_nested_model, open_nested, trace_subclassed)
from sightline.model.loading import ModelSource, load_model, model_flavor
from sightline.model.precision import copy_weights, with_precision

__all__ = ["ModelAdapter", "adapt_model", "load_model", "model_flavor", "copy_weights",
           "with_precision"]

# Memory estimates (values_per_image) count an unknown spatial or channel dimension as
# this, the usual ImageNet side, so that a model built on [None, None, 3] is not
# estimated at one pixel.
UNKNOWN_DIMENSION = 224
# A served model has no layers to count: its activations are estimated as this many
# copies of its input, the order of a typical convolutional network's depth.
SERVED_ACTIVATION_COPIES = 64


@dataclasses.dataclass(frozen=True)
class ModelAdapter:
    """A model reduced to what the explanation step needs.

    forward(images[B,H,W,C]) -> (activations[B,h,w,K] or None, logits[B,classes] float32)
    backbone(images) -> activations; head(activations) -> logits: None where the head
        cannot be separated (the step then records the whole forward pass).
    cam_weights[K',classes]: what CAM weighs the CAM map source with: the dense kernel
        of a GAP + dense head, the identity for a fully convolutional head (one channel
        per class, then GAP); None otherwise, with `cam_unsupported` saying why. Read
        from the layer's variable on every access, so a compiled step sees the weights
        as they are when it runs.
    cam_activations(activations[B,h,w,K]) -> [B,h,w,K']: the CAM map source, which is
        the target layer's activations for a GAP + dense head and the class
        convolution's output for a fully convolutional head.
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
    cam_source: Optional[Callable] = None  # activations -> CAM map source; None: themselves
    # Batch normalisations folded into their convolutions for the forward pass (folding.py).
    folded_normalizations: tuple = ()

    @property
    def cam_weights(self):
        return None if self.cam_kernel is None else self.cam_kernel()

    def cam_activations(self, activations):
        return activations if self.cam_source is None else self.cam_source(activations)

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



def adapt_model(source: ModelSource, *, layer: Optional[str] = None, precision: str = "float32",
                unsafe: bool = False,
                input_shape: Optional[Tuple[int, int, int]] = None) -> ModelAdapter:
    """Load (when given a path) and adapt a model; see `ModelAdapter`.

    layer: the name of any tensor of the model's graph with a 4-D output: a layer, a
    Keras 3 operation (`add_17` for a residual written `x + y`), or a layer inside a
    nested model as `base/layer`; None picks the default, `DEFAULT_LAYER_RULE`.
    input_shape: (H, W, C) of the images, for a subclassed model never built or called.
    """
    model, flavor = load_model(source, unsafe=unsafe)
    model = with_precision(model, flavor, precision)
    if flavor == "saved_model":
        return _adapt_saved_model(model, layer)
    return _adapt_keras(model, flavor, layer, precision, input_shape)


def _adapt_saved_model(loaded, layer):
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise UsageError("the SavedModel has no 'serving_default' signature to call; export it "
                         "with model.export() (Keras 3) or model.save(dir) (tf_keras)")
    serve = signatures["serving_default"]
    input_specs = tf.nest.flatten(serve.structured_input_signature)
    if len(input_specs) != 1 or input_specs[0].shape.rank != 4:
        raise UsageError("the SavedModel's serving signature must take one image batch "
                         f"[B,H,W,C]; it takes {input_specs}")
    output_specs = serve.structured_outputs
    if len(output_specs) != 1:
        raise UsageError("the SavedModel's serving signature must return one output (the "
                         f"class scores); it returns {sorted(output_specs)}")
    (output_name, output_spec), = output_specs.items()
    argument = list(serve.structured_input_signature[1].keys())[0]
    input_dtype = input_specs[0].dtype
    reason = ("a SavedModel exposes no layers, so CAM-family methods (which need the target "
              "layer's activations) cannot run on it; save the model as .keras or .h5, or "
              "use saliency, smoothgrad or integrated_gradients")
    if layer is not None:
        raise UsageError(f"layer={layer!r} cannot be used with a SavedModel: {reason}")
    if _serves_probabilities(serve, argument, output_name, input_specs[0]):
        _warn_at_caller(
            "the SavedModel serves probabilities (its outputs are non-negative and sum to 1), "
            "so the explained score is a probability, not the logit feeding the softmax: "
            "export the logits, or pass the .keras/.h5 model")

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
        values_per_image=int(np.prod([d or UNKNOWN_DIMENSION
                                      for d in input_specs[0].shape[1:]]))
        * SERVED_ACTIVATION_COPIES,
        model=loaded)


def _serves_probabilities(serve, argument, output_name, spec):
    """Whether the served outputs of two probe images (zeros and uniform noise in
    [0, 1]) look like probabilities: rows that sum to 1, no negative value."""
    shape = [2] + [d if d is not None else 32 for d in spec.shape[1:]]
    images = np.stack([np.zeros(shape[1:]), np.random.default_rng(0).uniform(0, 1, shape[1:])])
    if spec.dtype.is_integer:
        images = images * 255
    try:
        outputs = serve(**{argument: tf.cast(images, spec.dtype)})[output_name].numpy()
    except (ValueError, TypeError, tf.errors.OpError):
        return False  # a probe the model cannot take says nothing
    outputs = outputs.astype(np.float64)
    return bool(outputs.ndim == 2 and outputs.shape[-1] > 1 and outputs.min() >= 0
                and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


def _activation_name(layer):
    function = getattr(layer, "activation", None)
    return getattr(function, "__name__", None)


def _is_dense(layer):
    return type(layer).__name__ in ("Dense",) and hasattr(layer, "kernel")


def _rank(tensor):
    return len(tensor.shape)


def _adapt_keras(model, flavor, layer, precision, input_shape=None):
    K = _keras_module(flavor)
    whole_reason = None
    user_model = model
    if functional_inputs(model) is None:
        model, whole_reason = _traced(K, model, input_shape)
    _image_input_and_scores(model)
    graph = Graph(model)
    logits = _Logits.find(graph, model.outputs[0])
    target, activations_unsupported = _target(graph, logits, layer, whole_reason)
    if target is not None and target.path:
        # A layer inside a nested model: the nested model is opened into the outer
        # graph, so that the layer's output is a tensor the sub-models can start from.
        model, tensor = open_nested(K, graph, target.path, target.tensor)
        graph = Graph(model)
        target = dataclasses.replace(target, tensor=tensor, path=())
    # The explanation runs a twin with batch normalisations folded into their
    # convolutions (the user's layers, shared); the target keeps its output.
    keep = None if target is None else graph.producer(target.tensor)
    explained, folded = fold_batch_normalization(K, model, Graph, keep=keep)
    if folded:
        graph = Graph(explained)
        if target is not None:
            twin = {producer.name: producer for producer in graph.order}[keep.name]
            target = dataclasses.replace(target, tensor=graph.output_of(twin))
    inputs, output = _image_input_and_scores(explained)
    logits = _Logits.find(graph, output)
    common = dict(input_shape=tuple(inputs.shape[1:]), num_classes=logits.num_classes,
                  logits_layer=logits.layer_name, output_kind=logits.output_kind,
                  flavor=flavor, precision=precision,
                  values_per_image=_values_per_image(model), model=user_model,
                  folded_normalizations=folded)
    if target is None:
        whole = K.Model(inputs, logits.tensor)

        def forward(images):
            return None, logits.from_values(whole(images, training=False))

        return ModelAdapter(
            forward=forward, backbone=None, head=None, layer_name=None,
            activation_shape=None, cam_kernel=None, cam_unsupported=activations_unsupported,
            activations_unsupported=activations_unsupported, **common)

    activations_tensor = target.tensor
    # Read the graph before building sub-models: building them adds nodes to the layers.
    cam_kernel, cam_map_tensor, cam_unsupported = _cam_head(
        graph, activations_tensor, logits.tensor, logits.dense_with_activation,
        logits.output_kind, logits.num_classes)
    cam_source = None
    if cam_kernel is not None and cam_map_tensor is not activations_tensor:
        cam_source, cam_unsupported = _class_map_source(K, graph, target.name,
                                                        activations_tensor, cam_map_tensor)
        if cam_source is None:
            cam_kernel = None
    forward, backbone, head = _forward_functions(K, target.name, inputs, activations_tensor,
                                                 logits)
    return ModelAdapter(
        forward=forward, backbone=backbone, head=head, layer_name=target.name,
        activation_shape=tuple(activations_tensor.shape[1:]), cam_kernel=cam_kernel,
        cam_unsupported=cam_unsupported, activations_unsupported=None,
        cam_source=cam_source, **common)


def _traced(K, model, input_shape):
    """A subclassed model (or one never given an input) as a functional model: (the
    model, None) traced through its layers, or (a wrapper of it as one layer, why no
    feature map can be reached), said once at the caller."""
    shape = built_input_shape(model)
    if shape is None and input_shape is not None:
        shape = (None, *input_shape)
    if shape is None:
        raise UsageError("the model has no defined input and was never built or called: call "
                         "it once on a batch of images (model(images[:1])) before explaining "
                         "it, or pass it to explain(), which builds it from the images")
    if not model.built:
        model(np.zeros((1, *shape[1:]), np.float32))  # creates the weights, as Keras would
    traced, reason = trace_subclassed(K, model, shape[1:])
    if reason is None:
        return traced, None
    reason = (f"the subclassed model {model.name!r} is explained as a whole: {reason}, so no "
              "feature map can be reached and CAM-family methods cannot run on it; saliency, "
              "smoothgrad and integrated_gradients can (or build it as a functional model)")
    _warn_at_caller(reason)
    return traced, reason


def _keras_module(flavor):
    if flavor == "keras3":
        import keras
        return keras
    import tf_keras
    return tf_keras


def _image_input_and_scores(model):
    """(input tensor [B,H,W,C], output tensor [B,classes]), or one clear error."""
    if not model.built or not getattr(model, "inputs", None):
        raise UsageError("the model has no defined input: build it with an Input layer (or call "
                         "model.build((None, H, W, C))) before explaining it")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UsageError(f"sightline explains models with one image input and one output; this "
                         f"model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                         "save a model of the image branch alone (keras.Model(image_input, "
                         "class_output)) and explain that")
    inputs, output = model.inputs[0], model.outputs[0]
    if _rank(inputs) != 4:
        raise UsageError(f"the model's input must be an image batch [B,H,W,C]; it is {tuple(inputs.shape)}")
    if _rank(output) != 2:
        raise UsageError(f"the model's output must be class scores [B,classes]; it is {tuple(output.shape)}")
    return inputs, output


@dataclasses.dataclass
class _Logits:
    """Where the pre-softmax scores are, never the probabilities.

    tensor: the graph tensor the logits are computed from (the logits themselves, or the
    input of a final dense layer whose softmax/sigmoid is left out).
    """

    tensor: object
    output_kind: str
    num_classes: int
    layer_name: str
    dense_with_activation: object = None

    @classmethod
    def find(cls, graph, output):
        final = graph.producer(output)
        activation = _activation_name(final)
        dense_with_activation = None
        if type(final).__name__ == "Softmax" or (type(final).__name__ == "Activation"
                                                 and activation in ("softmax", "sigmoid")):
            output_kind = "softmax" if activation != "sigmoid" else "sigmoid"
            tensor = graph.input_of(final)
        elif _is_dense(final) and activation in ("softmax", "sigmoid"):
            output_kind = activation
            tensor = graph.input_of(final)  # the pre-activation is computed in from_values
            dense_with_activation = final
        else:
            output_kind, tensor = "logits", output
        num_classes = int(output.shape[-1])
        layer_name = (dense_with_activation or graph.producer(tensor)).name
        if output_kind == "sigmoid" and num_classes == 1:
            output_kind, num_classes = "binary_sigmoid", 2  # class 0 is explained by -z
        return cls(tensor, output_kind, num_classes, layer_name, dense_with_activation)

    def from_values(self, values):
        """values of `tensor` [B, classes or features] -> logits float32 [B, classes]."""
        values = tf.cast(values, tf.float32)
        dense = self.dense_with_activation
        if dense is not None:
            values = tf.matmul(values, tf.cast(tf.convert_to_tensor(dense.kernel), tf.float32))
            if dense.use_bias:
                values = values + tf.cast(tf.convert_to_tensor(dense.bias), tf.float32)
        if self.output_kind == "binary_sigmoid":
            values = tf.concat([-values, values], axis=-1)  # [B,2]: class 0 is explained by -z
        return values


DEFAULT_LAYER_RULE = (
    "the last feature map that the head reads, through nested models, squeeze-excite "
    "blocks and residual adds; never a pooling that only shrinks it")

# Poolings over a window: a map they read is the same evidence at a finer resolution.
_WINDOW_POOLINGS = ("MaxPooling2D", "AveragePooling2D")


@dataclasses.dataclass(frozen=True)
class _Target:
    """A tensor of the graph with a 4-D output, as the user names it."""

    tensor: object
    name: str  # "conv", "add_17" (a Keras 3 operation), "base/block_13_expand_relu"
    path: tuple = ()  # the nested models holding it, outermost first
    positions: tuple = ()  # its producer's position in each graph's order: later is deeper


def _target(graph, logits, layer, whole_reason=None):
    """(the target or None, why CAM-family methods cannot run or None)."""
    named = _named_tensors(graph)
    candidates = [t for t in named if _rank(t.tensor) == 4]
    if layer is not None and whole_reason and not candidates:
        raise UsageError(f"layer={layer!r} cannot be used: {whole_reason}")
    if layer is not None:
        return _named_target(layer, named, candidates), None
    if not candidates:
        return None, whole_reason or (
            "the model has no layer with a 4-D output (no convolutional feature maps), so "
            "CAM-family methods cannot run on it; use saliency, smoothgrad or "
            "integrated_gradients")
    read, through_sequences = _head_reads(graph, logits.tensor)
    if read:
        # Several maps read (a head that concatenates two poolings): the deepest.
        target = max(read, key=lambda t: t.positions)
    else:
        # No map reached from the logits: the last 4-D output before a global pooling.
        first_pool = next((i for i, t in enumerate(candidates)
                           if type(graph.producer(t.tensor)).__name__.startswith("Global")
                           and not t.path), len(candidates))
        target = [t for t in (candidates[:first_pool] or candidates) if not t.path][-1]
    target = _before_window_pooling(graph, target)
    if (through_sequences or not read) and _is_first_feature_map(graph, target):
        _warn_at_caller(
            f"the default target layer {target.name!r} is the model's first feature map "
            "(a patch embedding?): no later 4-D feature map reaches the head, so "
            "CAM-family maps there show the input's patches, not what the later layers "
            "look at; use saliency, or name a layer with layer=...")
    return target, None


def _named_tensors(graph, prefix="", path=(), positions=()):
    """Every producer's single output in the graph, nested models' included (after
    their model, named `model/layer`), as `_Target`s in order."""
    found = []
    for position, producer in enumerate(graph.order):
        tensor = graph.output_of(producer)
        if tensor is None or graph.is_input(tensor) or type(producer).__name__ == "InputLayer":
            continue
        where = (*positions, position)
        found.append(_Target(tensor, prefix + producer.name, path, where))
        if is_nested_model(producer):
            found.extend(_named_tensors(Graph(producer), f"{prefix}{producer.name}/",
                                        (*path, producer), where))
    return found


def _named_target(layer, named, candidates):
    by_name = {t.name: t for t in named}
    if layer not in by_name:
        inside = [t for t in named if t.name.endswith("/" + layer)]
        if len(inside) == 1:  # a nested layer named without its model: unambiguous
            layer = inside[0].name
    if layer not in by_name:
        names = [t.name for t in candidates]
        if len(names) <= 12:
            listed = f"layers with 4-D outputs: {', '.join(names) or 'none'}"
        else:
            near = [name for name in names if name.split("/")[-1] == layer.split("/")[-1]]
            near += [name for name in difflib.get_close_matches(layer, names, n=6, cutoff=0.5)
                     if name not in near]
            listed = (f"nearest layers with 4-D outputs: {', '.join(near[:6]) or 'none'} "
                      f"(of {len(names)}; layers inside a nested model are named "
                      "model/layer)")
        raise UsageError(f"layer {layer!r} is not in the model; {listed}")
    target = by_name[layer]
    if _rank(target.tensor) != 4:
        raise UsageError(f"layer {layer!r} has output shape {tuple(target.tensor.shape)}, not a "
                         "4-D feature map [B,h,w,K]; layers with 4-D outputs: "
                         f"{', '.join(t.name for t in candidates[-12:]) or 'none'}")
    return target


def _is_spatial_map(tensor):
    if _rank(tensor) != 4:
        return False
    height, width = tensor.shape[1], tensor.shape[2]
    return height is None or width is None or height * width > 1


def _head_reads(graph, logits_tensor):
    """([the feature maps the head reads], whether the walk crossed sequences [B,n,d]).

    Walks back from the logits through every tensor that is not a feature map: dense
    layers, dropout, flatten, activations, the 1x1 maps after a pooling with keepdims
    (MobileNetV3's head), into a nested model whose output is pooled. It stops at the
    first 4-D tensor with more than one position on each path, and at what a global
    pooling reads (a map that is 1x1 only because the input is small is still the map
    the head pools). Squeeze-excite branches are never entered: they sit before the map
    the head reads.
    """
    read, seen, through_sequences = {}, set(), False
    pending = [(logits_tensor, graph, (), ())]
    while pending:
        tensor, current, path, outer_positions = pending.pop()
        if id(tensor) in seen or current.is_input(tensor):
            continue
        seen.add(id(tensor))
        producer = current.producer(tensor)
        if type(producer).__name__ == "InputLayer":
            continue
        position = (*outer_positions, current.order.index(producer))
        if _is_spatial_map(tensor):
            read[id(tensor)] = _target_in(current, tensor, path, position)
            continue
        through_sequences = through_sequences or _rank(tensor) == 3
        if is_nested_model(producer) and len(flatten(producer.outputs)) == 1:
            pending.append((flatten(producer.outputs)[0], Graph(producer), (*path, producer),
                            position))
            continue
        reads = current.inputs[id(producer)]
        if (type(producer).__name__.startswith("Global") and len(reads) == 1
                and _rank(reads[0]) == 4 and not current.is_input(reads[0])):
            before = current.producer(reads[0])
            read[id(reads[0])] = _target_in(current, reads[0], path,
                                            (*outer_positions, current.order.index(before)))
            continue
        pending.extend((tensor, current, path, outer_positions) for tensor in reads)
    return list(read.values()), through_sequences


def _target_in(graph, tensor, path, positions):
    prefix = "".join(f"{model.name}/" for model in path)
    return _Target(tensor, prefix + graph.producer(tensor).name, path, positions)


def _before_window_pooling(graph, target):
    """A map a window pooling only shrinks: the map it reads (VGG's block5_pool before
    a Flatten head: block5_conv3, at twice the resolution)."""
    if target.path:
        return target
    tensor = target.tensor
    while (type(graph.producer(tensor)).__name__ in _WINDOW_POOLINGS
           and len(graph.inputs[id(graph.producer(tensor))]) == 1):
        before = graph.input_of(graph.producer(tensor))
        if _rank(before) != 4 or graph.is_input(before):
            break
        tensor = before
    if tensor is target.tensor:
        return target
    return _Target(tensor, graph.producer(tensor).name)


def _is_first_feature_map(graph, target):
    """Whether no 4-D tensor computed by a layer with weights comes before the target."""
    if target.path:
        return False
    pending, seen = list(graph.inputs.get(id(graph.producer(target.tensor)), ())), set()
    while pending:
        tensor = pending.pop()
        if id(tensor) in seen or graph.is_input(tensor):
            continue
        seen.add(id(tensor))
        producer = graph.producer(tensor)
        if _rank(tensor) == 4 and getattr(producer, "trainable_weights", None):
            return False
        pending.extend(graph.inputs.get(id(producer), ()))
    return True


def _class_map_source(K, graph, target, activations_tensor, cam_map_tensor):
    """A fully convolutional head whose class convolution is not the target layer: CAM
    reads the class maps, computed from the target's activations. Returns
    (cam_source or None, why CAM cannot run or None)."""
    source_name = graph.producer(cam_map_tensor).name
    same_size = tuple(cam_map_tensor.shape[1:3]) == tuple(activations_tensor.shape[1:3])
    cam_model = _sub_model(K, activations_tensor, cam_map_tensor) if same_size else None
    if cam_model is None:
        return None, (f"CAM reads the class convolution {source_name!r}, which cannot "
                      f"be computed at the resolution of target layer {target!r}; "
                      f"use layer={source_name!r} or gradcam")

    def cam_source(activations):
        return cam_model(activations, training=False)
    return cam_source, None


def _forward_functions(K, target, inputs, activations_tensor, logits):
    """(forward, backbone, head): backbone and head are None when the head cannot be cut
    off the backbone (a skip connection), and the step then records the whole forward
    pass for the activations' gradient."""
    backbone_model = K.Model(inputs, activations_tensor)
    head_model = _sub_model(K, activations_tensor, logits.tensor)
    if head_model is None:
        _warn_at_caller(
            f"the layers after target layer {target!r} also read tensors from before "
            "it (a skip connection), so its gradient comes from recording the whole forward "
            "pass, which is slower; a layer after the connection joins gets the fast path")
        whole = K.Model(inputs, [activations_tensor, logits.tensor])

        def forward(images):
            activations, values = whole(images, training=False)
            return activations, logits.from_values(values)
        return forward, None, None

    def backbone(images):
        return backbone_model(images, training=False)

    def head(activations):
        return logits.from_values(head_model(activations, training=False))

    def forward(images):
        activations = backbone(images)
        return activations, head(activations)
    return forward, backbone, head


def _warn_at_caller(message):
    """Warn at the first frame outside sightline: the user's own line, whichever entry
    point (explain, the job runner, the bench) built the adapter, and Python's default
    filter then shows it once per line."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, stacklevel=level)


# How Keras refuses a sub-model whose outputs need tensors from before its inputs:
# Keras 3 says "Output ... is not connected to `inputs`"; tf_keras, from intermediate
# tensors, "Found input tensor cannot be reached given provided output tensors", and
# from model inputs "Graph disconnected".
_DISCONNECTED = ("is not connected to", "cannot be reached", "graph disconnected")


def _sub_model(K, inputs, outputs):
    """The model from `inputs` to `outputs`, or None when `outputs` also depends on
    tensors computed before `inputs`. Any other failure is a real error and propagates."""
    try:
        return K.Model(inputs, outputs)
    except ValueError as error:
        if not any(phrase in str(error).lower() for phrase in _DISCONNECTED):
            raise
        return None


def _values_per_image(model):
    """Activation values per image over every layer, nested models included."""
    total = 0
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            total += _values_per_image(layer)
            continue
        try:
            shape = flatten(layer._inbound_nodes[0].output_tensors)[0].shape[1:]
        except (AttributeError, IndexError, ValueError):
            continue
        total += int(np.prod([d if d is not None else UNKNOWN_DIMENSION for d in shape]))
    return total


def _cam_head(graph, activations_tensor, logits_tensor, dense_with_activation, output_kind,
              num_classes):
    """(read_weights, cam_map_tensor, None) when the head supports CAM, else
    (None, None, a reason).

    GAP -> (Dropout) -> Dense, the pooling fed by the target layer: the map source is the
    target's activations, the weights the dense kernel [K, classes]. Conv(one channel
    per class) -> GAP, the fully convolutional
    head: the logit is the spatial mean of the class's channel, so that channel is the
    map: the source is the convolution's output and the weights the identity.
    The reader reads the variable on each call rather than copying it: a copy taken here
    would go stale when the model trains on, while the step (cached per model by
    `explain`) lives on.
    """
    reason = ("CAM needs a head of global average pooling then one dense layer, or a "
              "convolution with one channel per class then global average pooling; this "
              "model's head is {}; use gradcam instead")
    dense = dense_with_activation
    producer = graph.producer(logits_tensor)
    if dense is None and _is_global_average_pooling(producer):
        return _fully_convolutional_head(graph, producer, output_kind, num_classes, reason)
    if dense is None:
        if not (_is_dense(producer) and _activation_name(producer) in (None, "linear")):
            return None, None, reason.format(f"'{type(producer).__name__}' before the logits")
        dense = producer
    tensor = graph.input_of(dense)
    while type(graph.producer(tensor)).__name__ == "Dropout":
        tensor = graph.input_of(graph.producer(tensor))
    pooling = graph.producer(tensor)
    if type(pooling).__name__ != "GlobalAveragePooling2D":
        return None, None, reason.format(f"'{type(pooling).__name__}' before the dense layer")
    if not _is_global_average_pooling(pooling):
        return None, None, reason.format("a pooling layer that is not channels_last without keepdims")
    if graph.input_of(pooling) is not activations_tensor:
        return None, None, reason.format("not fed by the target layer")

    def read():
        kernel = tf.cast(tf.convert_to_tensor(dense.kernel), tf.float32)  # [K,classes]
        if output_kind == "binary_sigmoid":
            kernel = tf.concat([-kernel, kernel], axis=-1)  # [K,2]
        return kernel

    return read, graph.input_of(pooling), None


def _fully_convolutional_head(graph, pooling, output_kind, num_classes, reason):
    class_maps = graph.input_of(pooling)
    convolution = graph.producer(class_maps)
    channels = int(class_maps.shape[-1])
    # A single sigmoid unit explains two classes (-z, z) from its one channel.
    expected = 1 if output_kind == "binary_sigmoid" else num_classes
    if not (type(convolution).__name__ == "Conv2D" and channels == expected
            and _activation_name(convolution) in (None, "linear")):
        return None, None, reason.format(
            f"'{type(convolution).__name__}' with {channels} channel(s) before the global "
            f"pooling (a class convolution needs {expected} channels and no activation)")

    def read():
        identity = tf.eye(channels, dtype=tf.float32)  # [classes,classes]
        if output_kind == "binary_sigmoid":
            identity = tf.concat([-identity, identity], axis=-1)  # [1,2]
        return identity

    return read, class_maps, None


def _is_global_average_pooling(layer):
    return (type(layer).__name__ == "GlobalAveragePooling2D"
            and getattr(layer, "data_format", "channels_last") == "channels_last"
            and not getattr(layer, "keepdims", False))
