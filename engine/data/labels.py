"""What a folder source's subfolders mean to the model.

Class subfolders are numbered 0, 1, ... in sorted order, and nothing says that folder
0 is the model's class 0: faces/ and non-faces/ under a 7-class emotion model are two
groups of images, not two of its classes. So subfolders are **groups** unless the user
says how they map to the model's classes (`--class-names`):

- names in class order (`angry,disgust,fear,...`, or a JSON list, or a TOML `names =
  [...]`): a folder named like a class gets that class as its label; when no folder
  has a class's name the folders stay groups, and the names still name the predicted
  classes; some folders named and others not is an error (a typo, most likely);
- a mapping folder -> class index (a JSON object, or a TOML table `faces = 3`): every
  folder must be in it and every key must be a folder.

Nothing here imports TensorFlow: the command line parses and checks the option before
loading it; indices against the model's number of classes are checked once it is
loaded, before any work (`check_class_count`).
"""

import dataclasses
import json
import os
from typing import Optional

import numpy as np

from sightline.errors import UsageError

CLASS_NAME_FILES = (".json", ".toml")


@dataclasses.dataclass(frozen=True)
class ClassNames:
    """What the user said about the model's classes.

    names: class names in class order (empty when given as a mapping); folders: {folder
    name: class index} (None when given as names); given: the option as received, for
    messages."""

    names: tuple = ()
    folders: Optional[dict] = None
    given: str = ""

    def names_for(self, num_classes):
        """Every class's name, [num_classes] str: a mapping names a class by its
        folder(s) and leaves the others as 'class k'."""
        if self.folders is None:
            return tuple(self.names)
        names = [[] for _ in range(num_classes)]
        for folder, index in sorted(self.folders.items()):
            names[index].append(folder)
        return tuple("+".join(found) if found else f"class {i}" for i, found in enumerate(names))


def parse_class_names(value):
    """--class-names as given (a comma list, a .json/.toml path, or from a config file a
    list of names or a table folder -> index) -> ClassNames; ValueError with one line."""
    if value is None or isinstance(value, ClassNames):
        return value
    given = value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower().endswith(CLASS_NAME_FILES) and "," not in text:
            value = _read_file(text)
        else:
            value = [name.strip() for name in text.split(",")]
    if isinstance(value, (list, tuple)):
        return _from_names(value, given)
    if isinstance(value, dict):
        return _from_mapping(value, given)
    raise UsageError(f"--class-names must be names in class order (a,b,c), or a .json/.toml file "
                     f"of names or of folder -> class index; got {given!r}")


def _read_file(path):
    if not os.path.isfile(path):
        raise UsageError(f"--class-names file not found: {path!r}; pass an existing .json or "
                         ".toml file, or the names themselves (a,b,c)")
    try:
        if path.lower().endswith(".json"):
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        import tomllib
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except (OSError, ValueError) as error:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise UsageError(f"--class-names file {path!r} is unreadable ({error}); write a list of "
                         "names or an object folder -> class index") from None
    # TOML's top level is a table: names = [...] is the list form, anything else a mapping.
    if set(table) == {"names"}:
        return table["names"]
    return table


def _from_names(names, given):
    names = list(names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise UsageError(f"--class-names needs one non-empty name per class, in class order; "
                         f"got {given!r}")
    names = [n.strip() for n in names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--class-names names a class twice ({', '.join(repeated)}); got {given!r}")
    return ClassNames(names=tuple(names), given=given)


def _from_mapping(mapping, given):
    if not mapping:
        raise UsageError(f"--class-names maps no folder; got {given!r}")
    for folder, index in mapping.items():
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise UsageError(f"--class-names maps folder {folder!r} to {index!r}; a folder maps "
                             "to a class index >= 0 of the model")
    return ClassNames(folders={str(k): int(v) for k, v in mapping.items()}, given=given)


def folder_labels(class_names, group_names, groups):
    """labels int32 [N] (the model's class of each sample, -1 unknown) of a folder source
    whose samples are in `groups` int32 [N] (index into group_names, -1 at the top
    level). Without class names every label is unknown: folders are groups."""
    groups = np.asarray(groups, np.int32)
    unknown = np.full(groups.shape, -1, np.int32)
    if class_names is None or not group_names:
        return unknown
    if class_names.folders is not None:
        mapping = class_names.folders
        missing = [g for g in group_names if g not in mapping]
        extra = sorted(set(mapping) - set(group_names))
        if missing or extra:
            problem = (f"has no class for folder(s) {', '.join(missing)}" if missing else
                       f"maps folder(s) {', '.join(extra)} that the data does not have")
            raise UsageError(f"--class-names {problem}; the data's class folders are "
                             f"{', '.join(group_names)}; map each of them to a class index")
        table = np.array([mapping[g] for g in group_names], np.int32)
    else:
        named = [g for g in group_names if g in class_names.names]
        if not named:
            return unknown  # names for the model's classes; the folders are groups
        if len(named) != len(group_names):
            others = [g for g in group_names if g not in class_names.names]
            raise UsageError(f"class folder(s) {', '.join(others)} are not among --class-names "
                             f"({', '.join(class_names.names)}) while {', '.join(named)} are; "
                             "rename the folders or map them with a JSON/TOML file "
                             "{folder: class index}")
        table = np.array([class_names.names.index(g) for g in group_names], np.int32)
    return np.where(groups >= 0, table[np.maximum(groups, 0)], -1).astype(np.int32)


def check_class_count(class_names, num_classes):
    """After the model is loaded, before any work: the names or indices fit its classes."""
    if class_names is None:
        return
    if class_names.folders is not None:
        beyond = {f: i for f, i in class_names.folders.items() if i >= num_classes}
        if beyond:
            folder, index = sorted(beyond.items())[0]
            raise UsageError(f"--class-names maps folder {folder!r} to class {index}, but the "
                             f"model has {num_classes} classes (0 to {num_classes - 1})")
    elif len(class_names.names) != num_classes:
        raise UsageError(f"--class-names gives {len(class_names.names)} name(s) but the model has "
                         f"{num_classes} classes; give one name per class, in class order")
