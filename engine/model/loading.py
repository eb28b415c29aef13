"""Loading a model: Keras 3 or tf_keras, from memory or from a .keras, .h5 or SavedModel
path, with Keras safe mode on unless the caller trusts the file."""

import json
import os
import zipfile
from typing import Any, List, Protocol, Tuple, Union, runtime_checkable

import tensorflow as tf

from sightline.errors import UsageError


@runtime_checkable
class KerasModel(Protocol):
    """A Keras model in memory, Keras 3 (`tf.keras.Model`) or tf_keras: what sightline
    reads of it. Structural, so that the annotations resolve (`typing.get_type_hints`)
    without importing tf_keras, which costs most of a second that a user of Keras 3 alone
    should not pay."""

    @property
    def layers(self) -> List[Any]: ...

    @property
    def inputs(self) -> List[Any]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


# What `explain`, `load_model` and `adapt_model` take as a model: a Keras model in
# memory, or the path of a .keras or .h5 file or of a SavedModel directory.
ModelSource = Union[KerasModel, str, os.PathLike]


def load_model(source: ModelSource, *, unsafe: bool = False) -> Tuple[Any, str]:
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
        raise UsageError(
            "model must be a Keras model (Keras 3 or tf_keras) or a path to a .keras, .h5 "
            f"or SavedModel directory; got {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.exists(path):
        raise UsageError(f"model file not found: {path!r}; pass the path of a .keras, .h5 "
                         "file or a SavedModel directory")
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise UsageError(f"model directory {path!r} holds no saved_model.pb: it is not a "
                             "SavedModel; pass a .keras or .h5 file or a SavedModel directory")
        return tf.saved_model.load(path), "saved_model"
    lowered = path.lower()
    if lowered.endswith(".keras"):
        config, writer = _read_keras_zip(path)
    elif lowered.endswith((".h5", ".hdf5")):
        config, writer = _read_h5_config(path)
    else:
        raise UsageError(f"unrecognised model file {path!r}: expected a .keras or .h5 file "
                         "or a SavedModel directory")
    if not unsafe:
        lambdas = _lambda_layers(config)
        if lambdas:
            raise UsageError(
                f"model {path!r} has Lambda layer(s) {', '.join(lambdas)} holding Python code, "
                "which loading would run; pass unsafe=True (--unsafe) only if you trust the file")
    try:
        model = _load_keras_file(path, writer, unsafe)
    except Exception as error:  # noqa: BLE001 - Keras and h5py raise anything on bad bytes
        raise UsageError(f"model file {path!r} could not be loaded ({type(error).__name__}: "
                         f"{_first_line(error)}); it may be damaged, or need layers that are "
                         "not registered; re-save it or check the file") from None
    return model, writer


def _load_keras_file(path, writer, unsafe):
    if writer == "keras3":
        import keras
        return keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    import tf_keras
    if path.lower().endswith(".keras"):
        return tf_keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    return tf_keras.models.load_model(path, compile=False)


def _first_line(error):
    text = " ".join(str(error).split())
    return text[:160] + ("..." if len(text) > 160 else "")


def _damaged(path, part, error):
    """The one line for a file whose bytes are not what its writer left."""
    kind = error.kind if isinstance(error, _ProbeError) else type(error).__name__
    return UsageError(f"model file {path!r} is damaged or not a model: its {part} could not be "
                      f"read ({kind}: {_first_line(error)}); re-save the model or copy the "
                      "file again")


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
    raise UsageError(f"model file {path!r} was written by Keras {version!r}; sightline reads "
                     "files written by Keras 3 or tf_keras (Keras 2)")


def _read_keras_zip(path):
    # Reading untrusted bytes: zipfile, zlib and json raise many kinds of error on them.
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read("metadata.json"))
            config = json.loads(archive.read("config.json"))
            version = metadata.get("keras_version", "")
    except Exception as error:  # noqa: BLE001
        raise _damaged(path, "config (config.json in the .keras archive)", error) from None
    try:
        # Every member's CRC: flipped bytes in the weights fail here, not inside Keras.
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except Exception as error:  # noqa: BLE001
        raise _damaged(path, "weights (model.weights.h5 in the .keras archive)", error) from None
    if bad_member is not None:
        raise _damaged(path, f"weights ({bad_member} in the .keras archive)",
                       ValueError("checksum differs")) from None
    return config, _writer_from_version(version, path)


def _read_h5_config(path):
    _probe_h5(path)
    import h5py
    with h5py.File(path, "r") as handle:
        attributes = dict(handle.attrs)
    raw_config = attributes.get("model_config")
    if raw_config is None:
        raise UsageError(f"model file {path!r} holds no model_config: it stores weights only; "
                         "save the whole model with model.save()")
    if isinstance(raw_config, bytes):
        raw_config = raw_config.decode("utf-8")
    version = attributes.get("keras_version", b"")
    if isinstance(version, bytes):
        version = version.decode("utf-8")
    return json.loads(raw_config), _writer_from_version(version, path)


# Reads the config and every dataset and attribute of an HDF5 file, in a child process:
# on some damaged files the HDF5 C library does not raise but crashes its process.
# Prints the part that failed and the error, or nothing.
_H5_PROBE = """
import json, sys
import h5py
part = "config (the HDF5 file's model_config)"
try:
    with h5py.File(sys.argv[1], "r") as handle:
        attributes = dict(handle.attrs)
        raw = attributes.get("model_config")
        if raw is not None:
            json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        part = "weights (the HDF5 file's model_weights)"
        def read(name, item):
            dict(item.attrs)
            if isinstance(item, h5py.Dataset):
                item[()]
        handle.visititems(read)
except Exception as error:
    print(json.dumps({"part": part, "error": type(error).__name__, "message": str(error)}))
"""


class _ProbeError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def _probe_h5(path):
    """Raise the one-line UsageError of a damaged HDF5 model file, or return."""
    import subprocess
    import sys
    try:
        done = subprocess.run([sys.executable, "-c", _H5_PROBE, path], capture_output=True,
                              text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise _damaged(path, "structure", TimeoutError("reading it did not end")) from None
    if done.returncode != 0:
        raise _damaged(path, "structure", _ProbeError(
            "crash", f"the HDF5 library crashed reading it (exit {done.returncode})")) from None
    if done.stdout.strip():
        found = json.loads(done.stdout.strip().splitlines()[-1])
        raise _damaged(path, found["part"], _ProbeError(found["error"], found["message"])) \
            from None


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
