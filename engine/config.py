"""The one flat, frozen configuration of an explanation run, validated on creation."""

import dataclasses
import numbers
from typing import Optional, Union

from sightline.kernels import CHANNEL_REDUCTIONS, KERNELS

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
SIZES = ("input", "native")
COMPRESSIONS = ("gzip", "lzf", "none")
TARGET_MODES = ("predicted", "label")

# Preprocessing conventions by every name a user may give, to the one the pipeline applies.
PREPROCESSING = {
    "none": "none", "unit": "unit", "[0,1]": "unit", "0,1": "unit",
    "symmetric": "symmetric", "[-1,1]": "symmetric", "-1,1": "symmetric",
    "caffe": "caffe", "torch": "torch",
}

# Options a caller may pass as **method_options, with the methods that read them.
METHOD_OPTIONS = {
    "channel_reduce": ("saliency", "smoothgrad"),
    "num_samples": ("smoothgrad",),
    "noise_sigma": ("smoothgrad",),
    "noise_seed": ("smoothgrad",),
    "num_steps": ("integrated_gradients",),
    "baseline": ("integrated_gradients",),
    "memory_budget_mb": ("smoothgrad", "integrated_gradients", "scorecam"),
}


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
    methods: tuple = ("gradcam",)
    layer: Optional[str] = None
    normalize: bool = True
    size: str = "input"
    precision: str = "float32"
    batch_size: int = 64
    xla: Union[bool, str] = "auto"
    unsafe: bool = False
    channel_reduce: str = "max"
    num_samples: int = 25
    noise_sigma: float = 0.15
    noise_seed: int = 0
    num_steps: int = 32
    baseline: float = 0.0
    memory_budget_mb: int = 1024
    # A dataset job (`sightline explain`); `explain()` on arrays ignores these.
    model: Optional[str] = None
    data: Optional[str] = None
    out: Optional[str] = None
    labels: Optional[str] = None
    target: Union[str, int] = "predicted"
    shard_size: int = 1024
    image_size: Optional[tuple] = None
    preprocess: str = "none"
    devices: Union[str, int] = "all"
    compression: str = "gzip"
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
            raise TypeError(f"methods must be a non-empty sequence of method names; got {self.methods!r}")
        unknown = [m for m in methods if m not in KERNELS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; "
                             f"choose from {', '.join(KERNELS)}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods must not repeat; got {list(methods)}")
        object.__setattr__(self, "methods", tuple(methods))
        if self.layer is not None and not isinstance(self.layer, str):
            raise TypeError(f"layer must be a layer name or None; got {self.layer!r}")
        _check_bool("normalize", self.normalize)
        _check_bool("unsafe", self.unsafe)
        _check_choice("size", self.size, SIZES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("channel_reduce", self.channel_reduce, CHANNEL_REDUCTIONS)
        if not (self.xla is True or self.xla is False or self.xla == "auto"):
            raise ValueError(f"xla must be True, False or 'auto'; got {self.xla!r}")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("num_samples", self.num_samples, 1)
        _check_int("num_steps", self.num_steps, 1)
        _check_int("noise_seed", self.noise_seed, 0)
        _check_int("memory_budget_mb", self.memory_budget_mb, 1)
        if self.noise_seed >= 2 ** 32:
            raise ValueError(f"noise_seed must be below 2**32; got {self.noise_seed}")
        if (not isinstance(self.noise_sigma, numbers.Real) or isinstance(self.noise_sigma, bool)
                or not 0 <= self.noise_sigma):
            raise ValueError(f"noise_sigma must be a number >= 0 (a fraction of each image's "
                             f"value range); got {self.noise_sigma!r}")
        if not isinstance(self.baseline, numbers.Real) or isinstance(self.baseline, bool):
            raise TypeError(f"baseline must be a number (the constant image Integrated Gradients "
                            f"starts from); got {self.baseline!r}")
        _check_int("shard_size", self.shard_size, 1)
        _check_choice("compression", self.compression, COMPRESSIONS)
        _check_bool("overwrite", self.overwrite)
        _check_bool("log_json", self.log_json)
        _check_bool("quiet", self.quiet)
        if not (self.target in TARGET_MODES or (isinstance(self.target, numbers.Integral)
                                                and not isinstance(self.target, bool)
                                                and self.target >= 0)):
            raise ValueError(f"target must be 'predicted', 'label' or a class index >= 0; "
                             f"got {self.target!r}")
        if self.image_size is not None:
            size = tuple(self.image_size)
            if len(size) != 2 or not all(isinstance(v, numbers.Integral) and v > 0 for v in size):
                raise ValueError(f"image_size must be two positive integers (height, width); "
                                 f"got {self.image_size!r}")
            object.__setattr__(self, "image_size", tuple(int(v) for v in size))
        object.__setattr__(self, "preprocess", preprocessing_name(self.preprocess))
        object.__setattr__(self, "devices", parse_devices(self.devices))
        for name in ("worker", "workers"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 0 if name == "worker" else 1)


def make_config(methods=("gradcam",), **options):
    """ExplainConfig from keyword options, with one clear line for an unknown option."""
    known = {field.name for field in dataclasses.fields(ExplainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; method options are "
                        f"{', '.join(METHOD_OPTIONS)}")
    return ExplainConfig(methods=methods, **options)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_int(name, value, minimum):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def preprocessing_name(name):
    """The canonical name of a preprocessing convention, or a ValueError."""
    if name not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {name!r}; choose from none, [0,1], [-1,1], "
                         "caffe, torch")
    return PREPROCESSING[name]


def parse_devices(devices):
    """None/"all" or an int >= 1 (also from a string)."""
    if devices is None or devices == "all":
        return "all"
    try:
        count = int(devices)
    except (TypeError, ValueError):
        raise ValueError(f"devices must be a number >= 1 or 'all'; got {devices!r}") from None
    if count < 1:
        raise ValueError(f"devices must be a number >= 1 or 'all'; got {devices!r}")
    return count
