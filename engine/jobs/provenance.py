"""What identifies a run (its fingerprint: model, layer, methods, source, ... whatever must
match for an output folder to be resumed) and what describes it (its provenance:
software versions, devices, batch size), both recorded in the manifest."""

import hashlib
import os

import numpy as np
from sightline.config import method_options


def model_digest(path):
    """sha256 of a model file, or of a SavedModel directory's files in sorted order."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                digest.update(os.path.relpath(full, path).encode())
                with open(full, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
        return digest.hexdigest()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def method_parameters(config):
    """The options that shape the maps, per requested method."""
    return {method: method_options(config, method) for method in config.methods}


def run_fingerprint(config, adapter, source, image_shape, class_names=(), relevance=None):
    """What must match for an existing output folder to be resumed.

    The source is named by its path, and what it holds by a hash of its sample keys
    and of its labels (the --labels file, the TFRecord label key, class folders): one
    pass over N short strings, where hashing the images themselves would read the
    whole dataset again. What the labels mean is part of it: the model's number of
    classes, their names (--class-names) and the source's class folders (groups).
    relevance: how the shards hold each channel's relevance
    (sightline.compute.step.run_relevance), None when they do not.
    """
    keys_digest = hashlib.sha256("\0".join(source.keys).encode("utf-8")).hexdigest()
    labels = np.ascontiguousarray(source.labels, "<i4")
    labels_digest = hashlib.sha256(labels.tobytes()).hexdigest()
    return {
        "model_sha256": model_digest(config.model),
        "layer": adapter.layer_name,
        "logits_layer": adapter.logits_layer,
        "methods": list(config.methods),
        "parameters": method_parameters(config),
        "normalize": config.normalize,
        "map_size": config.map_size,
        "precision": config.precision,
        "target": config.target,
        "source": source.description,
        "num_samples": source.num_samples,
        "keys_sha256": keys_digest,
        "labels_sha256": labels_digest,
        "num_classes": int(adapter.num_classes),
        "class_names": list(class_names) or None,
        "group_names": list(source.group_names) or None,
        "labels_are": ("classes" if (source.labels >= 0).any()
                       else "groups" if source.group_names else "none"),
        "tfrecord_keys": ({"image": source.image_key, "label": source.label_key}
                          if source.kind == "tfrecord" else None),
        "image_shape": list(image_shape),
        "resize": config.resize,
        "preprocess": config.preprocess,
        "shard_size": config.shard_size,
        # Whether (and how) shards hold each channel's relevance: another layout.
        "relevance": relevance,
    }


def run_provenance(config, adapter, replicas, workers):
    import platform

    import h5py
    import keras
    import tensorflow as tf

    from sightline import __version__
    try:
        import tf_keras
        tf_keras_version = tf_keras.__version__
    except ImportError:  # pragma: no cover
        tf_keras_version = None
    return {
        "model": os.path.abspath(config.model),
        "model_flavor": adapter.flavor,
        "batch_size": config.batch_size,
        "replicas": replicas,
        "workers": workers,
        "xla": config.xla,
        "software": {"sightline": __version__, "python": platform.python_version(),
                     "tensorflow": tf.__version__, "keras": keras.__version__,
                     "tf_keras": tf_keras_version, "numpy": np.__version__,
                     "h5py": h5py.__version__},
    }
