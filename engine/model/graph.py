"""A Keras model's own graph of tensors, for both Keras flavours: what produces each
tensor and what it reads, Keras 3 operations (`x + y`) included; nested models opened
on request; subclassed models traced into a graph of their layers.

`layer.output` will not do: for a nested model it is the inner graph's output, and
building a sub-model from an intermediate tensor adds nodes to the layers, so "the last
inbound node" changes with every sub-model built. The graph is found by walking back
from the model's outputs instead.
"""

import inspect

import tensorflow as tf

from sightline.errors import UsageError


def flatten(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def functional_inputs(model):
    """The input tensors of a functional (or Sequential) model, or None for a layer, a
    subclassed model or a model that was never given an input."""
    try:
        inputs = getattr(model, "inputs", None)
    except (AttributeError, ValueError):
        return None
    return flatten(inputs) if inputs else None


def is_nested_model(producer):
    return hasattr(producer, "layers") and functional_inputs(producer) is not None


class Graph:
    """For each producer (layer or Keras 3 operation) of the model: the tensor it
    produces and the tensors it reads, and the producers in order (inputs first)."""

    def __init__(self, model):
        self.model = model
        self.outputs = {}  # id(producer) -> tensor (None for a producer of several)
        self.inputs = {}  # id(producer) -> [tensor]
        self.nodes = {}  # id(producer) -> the node that produced its tensor here
        self.order = []  # producers, every one after those it reads from
        self.input_ids = {id(tensor) for tensor in functional_inputs(model) or ()}
        # Depth-first from the outputs, without recursion: deep models (DenseNet201,
        # ResNet152) have more producers than Python's recursion limit.
        pending = [(tensor, False) for tensor in reversed(flatten(model.outputs))]
        while pending:
            tensor, finished = pending.pop()
            producer, node_index, _ = tensor._keras_history
            if finished:
                self.order.append(producer)
                continue
            if id(producer) in self.outputs:
                continue
            node = producer._inbound_nodes[node_index]
            outputs = flatten(node.output_tensors)
            self.outputs[id(producer)] = outputs[0] if len(outputs) == 1 else None
            self.inputs[id(producer)] = flatten(node.input_tensors)
            self.nodes[id(producer)] = node
            pending.append((tensor, True))
            pending.extend((read, False) for read in reversed(self.inputs[id(producer)]))

    def output_of(self, producer):
        return self.outputs.get(id(producer))

    def input_of(self, producer):
        inputs = self.inputs[id(producer)]
        if len(inputs) != 1:
            raise UsageError(f"layer {producer.name!r} reads {len(inputs)} tensors, expected one")
        return inputs[0]

    @staticmethod
    def producer(tensor):
        return tensor._keras_history[0]

    def is_input(self, tensor):
        return id(tensor) in self.input_ids


def open_nested(K, graph, path, tensor):
    """(a model computing what `graph.model` computes with the nested models of `path`
    (outermost first) opened into its own graph, `tensor` of the innermost as a tensor
    of that graph).

    The layers are the user's, called again on the outer tensors: nothing is copied,
    and the producers before the first opened model keep their tensors.
    """
    opened = {}  # id(nested model) -> its mapping

    def replay(current, mapping, depth):
        for producer in current.order:
            if id(producer) not in current.nodes or current.is_input(current.outputs[id(producer)]):
                continue
            node = current.nodes[id(producer)]
            reads = current.inputs[id(producer)]
            new_reads = [_mapped(mapping, tensor) for tensor in reads]
            to_open = depth < len(path) and producer is path[depth]
            if not to_open and all(new is old for new, old in zip(new_reads, reads)):
                continue
            if to_open:
                inner = Graph(producer)
                inner_mapping = {id(old): (old, new) for old, new in
                                 zip(functional_inputs(producer), new_reads)}
                replay(inner, inner_mapping, depth + 1)
                opened[id(producer)] = inner_mapping
                results = [_mapped(inner_mapping, t) for t in flatten(producer.outputs)]
            else:
                args, kwargs = tf.nest.map_structure(lambda value: _mapped(mapping, value),
                                                     _call_arguments(node))
                results = flatten(producer(*args, **kwargs))
            for old, new in zip(flatten(node.output_tensors), results):
                mapping[id(old)] = (old, new)

    mapping = {}
    replay(graph, mapping, 0)
    outputs = [_mapped(mapping, tensor) for tensor in flatten(graph.model.outputs)]
    try:
        model = K.Model(functional_inputs(graph.model), outputs)
    except ValueError as error:
        raise UsageError(f"layers inside nested model {path[0].name!r} cannot be reached "
                         f"({_first_line(error)}); rename the clashing layers or explain the "
                         "nested model's output") from None
    return model, _mapped(opened[id(path[-1])], tensor)


def _mapped(mapping, value):
    found = mapping.get(id(value))
    return found[1] if found is not None and found[0] is value else value


def _call_arguments(node):
    """(args, kwargs) the node's producer was called with: Keras 3 keeps them in
    `node.arguments`, tf_keras in `node.call_args` and `node.call_kwargs`."""
    arguments = getattr(node, "arguments", None)
    if arguments is not None and hasattr(arguments, "args"):
        return tuple(arguments.args), dict(arguments.kwargs)
    return tuple(node.call_args), dict(node.call_kwargs)


def trace_subclassed(K, model, input_shape):
    """(a functional model computing what the subclassed `model` computes, None) when
    its `call` runs on symbolic Keras tensors (the layers inside become nodes of a graph,
    so their feature maps can be explained); otherwise (a functional model wrapping it
    as one layer, why it could not be traced)."""
    inputs = K.Input(tuple(input_shape))
    try:
        keywords = {"training": False} if _takes_training(model.call) else {}
        outputs = model.call(inputs, **keywords)
        if len(flatten(outputs)) == 1:
            return K.Model(inputs, outputs), None
        reason = f"its call() returns {len(flatten(outputs))} tensors"
    except Exception as error:  # noqa: BLE001 - a user's call() can raise anything
        reason = f"its call() does not run on symbolic Keras tensors ({_first_line(error)})"
    inputs = K.Input(tuple(input_shape))
    return K.Model(inputs, model(inputs)), reason


def built_input_shape(model):
    """(None, H, W, C) a subclassed model was built or first called with, else None."""
    shape = getattr(model, "_build_input_shape", None)  # tf_keras
    if shape is None:
        shapes = getattr(model, "_build_shapes_dict", None) or {}  # Keras 3
        shape = next(iter(shapes.values()), None)
    if shape is None:
        return None
    shape = tuple(tf.TensorShape(shape).as_list())
    return shape if len(shape) == 4 else None


def _takes_training(call):
    try:
        return "training" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


def _first_line(error):
    text = " ".join(str(error).split())
    return text[:160] + ("..." if len(text) > 160 else "")
