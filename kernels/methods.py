"""The table of methods: one row per method, and the options the rows share.

Everything that lists methods asks this table: the step's dispatch, the configuration's
checks, the command line, the benchmark, the demo and the cross-kernel tests. Adding a
method means one kernel, one row here, one reference test.

This module imports no TensorFlow (rows name their kernel as a string and load it on
first use), so the command line can check a user's options in well under a second.
"""

import dataclasses
import importlib
import numbers
from typing import Callable, Dict, Optional, Tuple, Union

from sightline.errors import UsageError

# What a kernel can ask the step for, by argument name. The step computes each value
# only when a requested method asks for it.
ACTIVATIONS = "activations"  # [B,h,w,K] at the target layer
ACTIVATION_GRADS = "activation_grads"  # [B,h,w,K], d y_c / d A
INPUT_GRADS = "input_grads"  # [B,H,W,C], d y_c / d x
CAM_ACTIVATIONS = "cam_activations"  # [B,h,w,K'], the map the CAM head weighs
CLASS_WEIGHTS = "class_weights"  # [B,K'], the CAM head's column of the explained class
IMAGES = "images"  # [B,H,W,C]
TARGETS = "targets"  # [B], the explained class
SAMPLE_INDEX = "sample_index"  # [B], the position in the source
INPUT_GRADIENT = "input_gradient"  # (images[n,...], targets[n]) -> grads: one backward pass per copy
TARGET_PROBABILITY = "target_probability"  # (images[n,...], targets[n]) -> scores: one forward pass per channel
STEP_VALUES = (ACTIVATIONS, ACTIVATION_GRADS, INPUT_GRADS, CAM_ACTIVATIONS, CLASS_WEIGHTS,
               IMAGES, TARGETS, SAMPLE_INDEX, INPUT_GRADIENT, TARGET_PROBABILITY)

# Where a method's maps live before any resizing.
LAYER, INPUT = "layer", "input"


@dataclasses.dataclass(frozen=True)
class Option:
    """A method option: its default, what it accepts, and the line the CLI shows."""

    name: str
    kind: type  # int, float or str
    default: Union[int, float, str]
    help: str
    minimum: Optional[float] = None
    below: Optional[int] = None  # exclusive upper bound
    choices: Tuple[str, ...] = ()

    def check(self, value: object) -> None:
        """Raise UsageError with one line when `value` is not acceptable."""
        if self.choices:
            if value not in self.choices:
                raise UsageError(f"{self.name} must be one of {', '.join(map(repr, self.choices))}; "
                                 f"got {value!r}; the default is {self.default!r}")
            return
        wanted = numbers.Integral if self.kind is int else numbers.Real
        if not isinstance(value, wanted) or isinstance(value, bool):
            what = "an integer" if self.kind is int else "a number"
            raise UsageError(f"{self.name} must be {what}{self._range()} ({self.help}); got "
                             f"{value!r}; the default is {self.default!r}")
        if ((self.minimum is not None and value < self.minimum)
                or (self.below is not None and value >= self.below)):
            what = "an integer" if self.kind is int else "a number"
            raise UsageError(f"{self.name} must be {what}{self._range()} ({self.help}); got "
                             f"{value!r}; the default is {self.default!r}")

    def _range(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f" >= {self.minimum}")
        if self.below is not None:
            parts.append(f" below {self.below}")
        return " and".join(parts)


OPTIONS: Dict[str, Option] = {option.name: option for option in (
    Option("channel_reduce", str, "max", "how input gradients are reduced over colour "
           "channels: max or sum", choices=("max", "sum")),
    Option("num_copies", int, 25, "SmoothGrad's noisy copies per image", minimum=1),
    Option("noise_sigma", float, 0.15, "SmoothGrad's noise, a fraction of each image's "
           "value range", minimum=0),
    Option("noise_seed", int, 0, "SmoothGrad's noise seed", minimum=0, below=2 ** 32),
    Option("num_steps", int, 32, "Integrated Gradients' path steps", minimum=1),
    Option("baseline", float, 0.0, "the constant image Integrated Gradients starts from"),
    Option("memory_budget_mb", int, 1024, "MiB one call over copies, steps or masked "
           "inputs may hold", minimum=1),
)}

# The option that sizes the chunks of methods that fold copies or channels into the batch.
MEMORY_BUDGET = "memory_budget_mb"


@dataclasses.dataclass(frozen=True)
class Method:
    """One explanation method.

    kernel: "module:function" under sightline.kernels, loaded on first use.
    arguments: the step values the kernel takes, positionally, in order (STEP_VALUES).
    options: the options the kernel takes as keywords of the same name.
    chunk_keyword: the kernel's keyword for how many copies or channels go into one
        call, which the step sizes from memory_budget_mb; None for single-pass methods.
    resolution: LAYER (the target layer's, resized on request) or INPUT.
    """

    name: str
    kernel: str
    arguments: Tuple[str, ...]
    resolution: str
    summary: str
    options: Tuple[str, ...] = ()
    chunk_keyword: Optional[str] = None

    @property
    def option_names(self) -> Tuple[str, ...]:
        """Every option a user may set for this method."""
        return self.options + ((MEMORY_BUDGET,) if self.chunk_keyword else ())

    @property
    def needs_gradients(self) -> bool:
        return bool({ACTIVATION_GRADS, INPUT_GRADS, INPUT_GRADIENT} & set(self.arguments))

    def load_kernel(self) -> Callable[..., object]:
        module, function = self.kernel.split(":")
        return getattr(importlib.import_module(f"sightline.kernels.{module}"), function)


METHODS: Dict[str, Method] = {method.name: method for method in (
    Method("cam", "activation_maps:cam", (CAM_ACTIVATIONS, CLASS_WEIGHTS), LAYER,
           "class activation map (GAP + dense, or one convolution channel per class)"),
    Method("gradcam", "activation_maps:gradcam", (ACTIVATIONS, ACTIVATION_GRADS), LAYER,
           "Grad-CAM: channels weighed by their mean gradient"),
    Method("gradcam_plus_plus", "activation_maps:gradcam_plus_plus",
           (ACTIVATIONS, ACTIVATION_GRADS), LAYER, "Grad-CAM++: closed-form weights"),
    Method("layercam", "activation_maps:layercam", (ACTIVATIONS, ACTIVATION_GRADS), LAYER,
           "LayerCAM: positive gradients weigh each position"),
    Method("hirescam", "activation_maps:hirescam", (ACTIVATIONS, ACTIVATION_GRADS), LAYER,
           "HiResCAM: gradients times activations, element-wise"),
    Method("xgradcam", "activation_maps:xgradcam", (ACTIVATIONS, ACTIVATION_GRADS), LAYER,
           "XGrad-CAM: gradients averaged with the activations as weights"),
    Method("eigencam", "activation_maps:eigencam", (ACTIVATIONS,), LAYER,
           "Eigen-CAM: first principal component of the activations, class-agnostic"),
    Method("scorecam", "activation_maps:scorecam",
           (TARGET_PROBABILITY, IMAGES, TARGETS, ACTIVATIONS), LAYER,
           "Score-CAM: channels weighed by the score of the masked input",
           chunk_keyword="channels_per_call"),
    Method("saliency", "gradient_maps:saliency", (INPUT_GRADS,), INPUT,
           "vanilla gradient |dy/dx|", options=("channel_reduce",)),
    Method("smoothgrad", "gradient_maps:smoothgrad",
           (INPUT_GRADIENT, IMAGES, TARGETS, SAMPLE_INDEX), INPUT,
           "SmoothGrad: mean gradient over noisy copies",
           options=("num_copies", "noise_sigma", "noise_seed", "channel_reduce"),
           chunk_keyword="copies_per_call"),
    Method("integrated_gradients", "gradient_maps:integrated_gradients",
           (INPUT_GRADIENT, IMAGES, TARGETS), INPUT,
           "Integrated Gradients from a constant baseline",
           options=("baseline", "num_steps"), chunk_keyword="copies_per_call"),
)}


def method_names(resolution: Optional[str] = None) -> Tuple[str, ...]:
    """Method names in table order, all of them or those of one resolution."""
    return tuple(name for name, method in METHODS.items()
                 if resolution is None or method.resolution == resolution)


def methods_using(option: str) -> Tuple[str, ...]:
    """The methods that read `option`."""
    return tuple(name for name, method in METHODS.items() if option in method.option_names)
