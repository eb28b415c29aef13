"""Mixed-precision copies of a float32 Keras model, and copying weights between them."""

import tensorflow as tf

from sightline.config import PRECISIONS
from sightline.errors import UsageError


def with_precision(model, flavor, precision):
    """Rebuild a float32 Keras model under a mixed-precision policy, same weights.

    A global policy alone does nothing to a model that already exists: its layers
    carry their dtype in their config. The config is rewritten without layer dtypes,
    rebuilt under the policy and given the original weights.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "float32":
        return model
    if flavor == "saved_model":
        raise UsageError(f"precision {precision!r} needs a Keras model; a SavedModel runs as it "
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
        raise UsageError(f"cannot rebuild the model under {precision!r} ({error}); "
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
