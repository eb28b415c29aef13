"""Loading a model: Keras 3 or tf_keras, from memory or from a .keras, .h5 or SavedModel
path, with Keras safe mode on unless the caller trusts the file."""

import json
import os
import zipfile

import tensorflow as tf

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
