"""The one flat, frozen configuration of an explanation run, validated on creation.

Imports no TensorFlow: the command line checks a user's options before loading it.
"""

import dataclasses
import numbers
from typing import Optional, Union

from sightline.errors import UsageError
from sightline.kernels.methods import METHODS, OPTIONS, methods_using

# "auto" (opt-in, never the default): float32 or mixed_bfloat16, whichever runs faster on
# the first batch, bfloat16 only when its maps agree (sightline.compute.auto_precision).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
# Where CAM-family maps are stored: at the target layer's resolution, or resized to the input.
MAP_SIZES = ("native", "input")
# "auto": gzip when the step runs on an accelerator, none when it shares the CPU with the
# writer (sightline.store.shards.resolve_compression).
COMPRESSIONS = ("auto", "gzip", "lzf", "none")
TARGET_MODES = ("predicted", "label")
# How an image of another aspect ratio than the model's input is resized to it
# (sightline.data.decode.resize_images): stretched (the default), letterboxed on black,
# or centre-cropped.
RESIZE_MODES = ("stretch", "pad", "crop")

# Preprocessing conventions by every name a user may give, to the one the pipeline applies.
PREPROCESSING = {
    "none": "none", "unit": "unit", "[0,1]": "unit", "0,1": "unit",
    "symmetric": "symmetric", "[-1,1]": "symmetric", "-1,1": "symmetric",
    "caffe": "caffe", "torch": "torch",
}

# Options a caller may pass as **method_options, with the methods that read them.
METHOD_OPTIONS = {name: methods_using(name) for name in OPTIONS}


@dataclasses.dataclass(frozen=True)
class _RunSettings:
    """Every setting but the method options, which ExplainConfig adds from the table."""

    methods: tuple = ("gradcam",)
    layer: Optional[str] = None
    normalize: bool = True
    map_size: str = "native"
    precision: str = "float32"
    batch_size: int = 64
    xla: Union[bool, str] = "auto"
    unsafe: bool = False
    # A dataset job (`sightline explain`); `explain()` on arrays ignores these.
    model: Optional[str] = None
    data: Optional[str] = None
    out: Optional[str] = None
    labels: Optional[str] = None
    # How a folder's class subfolders map to the model's classes: names in class order, a
    # {folder: class index} table, or the --class-names text (a comma list or a .json/.toml
    # path); parsed and checked by sightline.data.labels. None: the folders are groups.
    class_names: Optional[object] = None
    target: Union[str, int] = "predicted"
    shard_size: int = 1024
    image_size: Optional[tuple] = None
    resize: str = "stretch"
    preprocess: str = "none"
    devices: Union[str, int] = "all"
    compression: str = "auto"
    worker: Optional[int] = None
    workers: Optional[int] = None
    overwrite: bool = False
    log_json: bool = False
    quiet: bool = False
    tfrecord_image_key: str = "image/encoded"
    tfrecord_label_key: str = "image/class/label"

    def __post_init__(self):
        methods = self.methods
        if isinstance(methods, str):
            methods = (methods,)
        if not isinstance(methods, (tuple, list)) or not methods:
            raise UsageError(f"methods must be a non-empty sequence of method names; got {self.methods!r}")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise UsageError(f"unknown method(s) {', '.join(map(repr, unknown))}; "
                             f"choose from {', '.join(METHODS)}")
        if len(set(methods)) != len(methods):
            raise UsageError(f"methods must not repeat; got {list(methods)}")
        object.__setattr__(self, "methods", tuple(methods))
        if self.layer is not None and not isinstance(self.layer, str):
            raise UsageError(f"layer must be a layer name or None; got {self.layer!r}")
        _check_bool("normalize", self.normalize)
        _check_bool("unsafe", self.unsafe)
        _check_choice("map_size", self.map_size, MAP_SIZES)
        _check_choice("precision", self.precision, PRECISIONS)
        if not (self.xla is True or self.xla is False or self.xla == "auto"):
            raise UsageError(f"xla must be True, False or 'auto'; got {self.xla!r}")
        _check_int("batch_size", self.batch_size, 1)
        for option in OPTIONS.values():
            option.check(getattr(self, option.name))
        _check_int("shard_size", self.shard_size, 1)
        _check_choice("compression", self.compression, COMPRESSIONS)
        _check_choice("resize", self.resize, RESIZE_MODES)
        _check_bool("overwrite", self.overwrite)
        _check_bool("log_json", self.log_json)
        _check_bool("quiet", self.quiet)
        if not (self.target in TARGET_MODES or (isinstance(self.target, numbers.Integral)
                                                and not isinstance(self.target, bool)
                                                and self.target >= 0)):
            raise UsageError(f"target must be 'predicted', 'label' or a class index >= 0; "
                             f"got {self.target!r}")
        if self.image_size is not None:
            size = tuple(self.image_size)
            if len(size) != 2 or not all(isinstance(v, numbers.Integral) and v > 0 for v in size):
                raise UsageError(f"image_size must be two positive integers (height, width); "
                                 f"got {self.image_size!r}")
            object.__setattr__(self, "image_size", tuple(int(v) for v in size))
        object.__setattr__(self, "preprocess", preprocessing_name(self.preprocess))
        object.__setattr__(self, "devices", parse_devices(self.devices))
        for name in ("worker", "workers"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 0 if name == "worker" else 1)


# The method options are fields generated from the table: a new option in the table is a
# new setting here, with its default, and checked by its own rule in __post_init__.
ExplainConfig = dataclasses.make_dataclass(
    "ExplainConfig",
    [(option.name, option.kind, dataclasses.field(default=option.default))
     for option in OPTIONS.values()],
    bases=(_RunSettings,), frozen=True)
ExplainConfig.__module__ = __name__
ExplainConfig.__doc__ = ("The settings of one explanation run: _RunSettings plus one field "
                         "per method option of the table (sightline.kernels.methods.OPTIONS).")


def method_options(config, method):
    """{option: value} of the options that shape `method`'s maps (the memory budget
    changes only how the work is split, never the maps)."""
    return {name: getattr(config, name) for name in METHODS[method].options}


def add_method_arguments(parser):
    """One --flag per method option of the table, on an argparse parser (default None:
    a flag not given leaves the option to the TOML file or the default)."""
    for option in OPTIONS.values():
        flag = "--" + option.name.replace("_", "-")
        users = ", ".join(methods_using(option.name))
        choices = f" ({'/'.join(option.choices)})" if option.choices else ""
        parser.add_argument(flag, type=option.kind, default=None,
                            help=f"{users}: {option.help}{choices} (default {option.default})")


def make_config(methods=("gradcam",), **options):
    """ExplainConfig from keyword options, with one clear line for an unknown option."""
    known = {field.name for field in dataclasses.fields(ExplainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)}; method options are "
                         f"{', '.join(METHOD_OPTIONS)}")
    return ExplainConfig(methods=methods, **options)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be True or False; got {value!r}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_int(name, value, minimum):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise UsageError(f"{name} must be an integer >= {minimum}; got {value!r}; pass a whole "
                         f"number such as {max(minimum, 1)}")
    if value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}; got {value!r}; pass a whole "
                         f"number such as {max(minimum, 1)}")


def preprocessing_name(name):
    """The canonical name of a preprocessing convention, or a ValueError."""
    if name not in PREPROCESSING:
        raise UsageError(f"unknown preprocessing {name!r}; choose from none, [0,1], [-1,1], "
                         "caffe, torch")
    return PREPROCESSING[name]


def parse_devices(devices):
    """None/"all" or an int >= 1 (also from a string)."""
    if devices is None or devices == "all":
        return "all"
    try:
        count = int(devices)
    except (TypeError, ValueError):
        raise UsageError(f"devices must be a number >= 1 or 'all'; got {devices!r}") from None
    if count < 1:
        raise UsageError(f"devices must be a number >= 1 or 'all'; got {devices!r}")
    return count
