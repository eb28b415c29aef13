"""What input range a model's own preprocessing layers expect.

Some models scale their input themselves (Keras' EfficientNet and ConvNeXt begin with a
Rescaling layer, many user models with `Rescaling(1/255)`): they expect raw 0..255
pixels, and `--preprocess [0,1]` on top scales the images twice, into a range the
model never saw, where its predictions tend to collapse onto one class.
"""

# Layers that only shape pixels on the way in: the walk from the input passes them.
_PASS_THROUGH = ("InputLayer", "Resizing", "CenterCrop", "Normalization", "Rescaling")


def input_rescaling(model):
    """[(layer name, scale, offset)] of the Rescaling layers a model applies to its input
    before any other work (through nested models at the start); [] when it has none
    or its layers cannot be read (a SavedModel)."""
    found = []
    for layer in _leading_layers(model):
        if type(layer).__name__ == "Rescaling":
            found.append((layer.name, float(_scalar(layer.scale)), float(_scalar(layer.offset))))
    return found


def _leading_layers(model):
    for layer in getattr(model, "layers", None) or ():
        kind = type(layer).__name__
        if getattr(layer, "layers", None) is not None and kind not in _PASS_THROUGH:
            yield from _leading_layers(layer)  # a nested model: its own start
            return
        if kind not in _PASS_THROUGH:
            return
        yield layer


def _scalar(value):
    import numpy as np
    values = np.ravel(np.asarray(value, np.float64))
    return values[0] if values.size else 1.0


def rescaling_warning(rescalings, preprocess_flag):
    """One line when the model rescales its input itself and --preprocess scales it too;
    None otherwise."""
    if not rescalings or preprocess_flag == "none":
        return None
    name, scale, offset = rescalings[0]
    low, high = offset, 255.0 * scale + offset
    return (f"the model scales its input itself (layer {name!r}: 0..255 to [{low:g}, {high:g}]), "
            f"and --preprocess {preprocess_flag} scales the images before it: the model sees "
            "a range it was not made for; use --preprocess none")
