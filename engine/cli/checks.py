"""Checks of paths that need no TensorFlow: run before anything imports it, so that a
typo in a path fails at once, with one line, and leaves nothing behind."""

import glob
import os

from sightline.errors import UsageError
from sightline.store.files import check_writable_folder

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def check_model_path(path, flag="--model"):
    if path is None:
        raise UsageError(f"{flag} is required: pass a .keras or .h5 file or a SavedModel folder")
    if not os.path.exists(path):
        raise UsageError(f"model file not found: {path!r}; pass an existing .keras or .h5 file or "
                         f"SavedModel folder to {flag}")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise UsageError(f"model folder {path!r} holds no saved_model.pb, so it is not a "
                             f"SavedModel; pass a .keras or .h5 file or a SavedModel folder")
    elif not path.lower().endswith(MODEL_SUFFIXES):
        raise UsageError(f"model {path!r} is neither a .keras nor an .h5 file; pass a .keras "
                         "or .h5 file or a SavedModel folder")


def check_source_path(spec, flag):
    """A data or labels source: a path, a glob of TFRecord files, or file.h5:/dataset."""
    if spec is None:
        raise UsageError(f"{flag} is required")
    lowered = spec.lower()
    for suffix in (".h5:", ".hdf5:"):
        if suffix in lowered:
            spec = spec[:lowered.index(suffix) + len(suffix) - 1]
            break
    if os.path.exists(spec) or (glob.has_magic(spec) and glob.glob(spec)):
        return
    what = "data source" if flag == "--data" else f"{flag} source"
    raise UsageError(f"{what} not found: {spec!r}; check the path given to {flag}")


def check_out_path(path, flag="--out"):
    if path is None:
        raise UsageError(f"{flag} is required: pass the output folder")
    check_writable_folder(path, flag)


def check_run_folder(path):
    """The output folder of a `sightline explain` run, for the commands that read one."""
    if not os.path.isdir(path):
        what = "is a file" if os.path.exists(path) else "does not exist"
        raise UsageError(f"run folder {path!r} {what}; pass the --out folder of a "
                         "`sightline explain` run")
