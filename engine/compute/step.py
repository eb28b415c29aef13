"""The compiled explanation step: one forward pass, at most one backward pass for the
plain methods, every requested method, for one fixed-shape batch."""

import tensorflow as tf

from sightline import kernels
from sightline.errors import UsageError
from sightline.kernels.methods import (ACTIVATION_GRADS, ACTIVATIONS, CAM_ACTIVATIONS,
                                       CLASS_WEIGHTS, IMAGES, INPUT_GRADIENT, INPUT_GRADS,
                                       LAYER, METHODS, SAMPLE_INDEX, TARGET_PROBABILITY,
                                       TARGETS)

# Bytes a gradient call keeps per image and per activation value: the value itself,
# its gradient, and slack for the backward pass's temporaries.
_GRADIENT_BYTES_PER_VALUE = 4 * 3
# A forward-only call (Score-CAM's masked inputs) keeps the value alone.
_FORWARD_BYTES_PER_VALUE = 4
# Batches per call of a batches function, and at most this many bytes of float32 images
# per call (a large array is never copied into one tensor whole).
CALL_BATCHES = 16
CALL_BYTES = 64 * 2 ** 20


def resolve_xla(xla):
    """True/False as given; "auto" is XLA on GPUs and graph mode elsewhere.

    On a 2-core CPU with TF 2.21 XLA inference ran 1.6x slower than graph mode on the
    Fashion-MNIST CNN and 13x slower on MobileNetV2 (depthwise convolutions).
    """
    if xla == "auto":
        return bool(tf.config.list_logical_devices("GPU"))
    return bool(xla)


def check_methods(adapter, config):
    """Stop, before any work, when the model cannot support a requested method."""
    for method in config.methods:
        row = METHODS[method]
        if row.resolution == LAYER and adapter.activations_unsupported:
            raise UsageError(f"method {method!r} cannot run: {adapter.activations_unsupported}")
        if CLASS_WEIGHTS in row.arguments and adapter.cam_unsupported:
            raise UsageError(f"method {method!r} cannot run: {adapter.cam_unsupported}")


# How the step computes each channel's relevance to the explained score (the audit's
# "what" view): from the activation gradient, or in closed form for a GAP + dense head
# fed by the target layer, where the two are equal (tests/compute/test_relevance.py).
GRADIENT_RELEVANCE, CAM_RELEVANCE = "gradient_x_activation", "cam_weight_x_mean_activation"


def relevance_kind(adapter, wanted=()):
    """GRADIENT_RELEVANCE, CAM_RELEVANCE, or None when the model shows no feature map.

    The closed form needs no gradient, so a CAM-only run stays a forward pass; whenever
    a requested method computes the activation gradient anyway, the gradient form is
    used, which costs a sum."""
    if adapter.activations_unsupported:
        return None
    closed_form = adapter.cam_kernel is not None and adapter.cam_source is None
    if closed_form and ACTIVATION_GRADS not in wanted and INPUT_GRADS not in wanted:
        return CAM_RELEVANCE
    return GRADIENT_RELEVANCE


def run_relevance(adapter, methods):
    """relevance_kind for a run of `methods` (names from the table)."""
    return relevance_kind(adapter, {a for m in methods for a in METHODS[m].arguments})


def copies_per_call(adapter, config, batch_size, *, gradients=True, on_gpu=None):
    """How many noisy copies, path steps or masked inputs go into one call.

    On a GPU: as many as fit in memory_budget_mb, since a bigger call fills more of
    the device. On a CPU: one batch per gradient call. A batch already keeps every
    core busy, and a call over several copies only works on activations that no
    longer fit in the caches: SmoothGrad (8 copies) and Integrated Gradients (16
    steps) on the Fashion-MNIST CNN ran 2 to 4 times faster with one copy per
    call than with 2, 4 or 8, at batch 64 and 256 (2-core Xeon, TF 2.21).
    on_gpu: None asks TensorFlow whether a GPU is visible.
    """
    if on_gpu is None:
        on_gpu = bool(tf.config.list_logical_devices("GPU"))
    if gradients and not on_gpu:
        return 1
    bytes_per_value = _GRADIENT_BYTES_PER_VALUE if gradients else _FORWARD_BYTES_PER_VALUE
    per_image = max(1, adapter.values_per_image) * bytes_per_value
    budget = config.memory_budget_mb * 2 ** 20
    return max(1, budget // (per_image * batch_size))


def build_step(adapter, config, batch_size, image_shape):
    """A tf.function `step(images[B,H,W,C], targets[B], sample_index[B]) -> dict`.

    targets: int32, -1 = the predicted class. Returns heatmaps/<method> float32
    [B,h,w] (scaled to [0, 1] when config.normalize), scales/<method> float32 [B],
    targets (the explained class), predictions and scores (probability of the
    predicted class), and relevance float32 [B,K] (each target-layer channel's
    contribution to the explained score, see relevance_kind; absent when the model
    shows no feature map). One trace per (methods, batch size, precision): the batch shape
    is fixed, the caller pads the last batch.
    """
    check_methods(adapter, config)
    rows = [METHODS[method] for method in config.methods]
    wanted = {argument for row in rows for argument in row.arguments}
    relevance = relevance_kind(adapter, wanted)
    if relevance == CAM_RELEVANCE:
        wanted |= {ACTIVATIONS, CLASS_WEIGHTS}
    wants_activation_grads = ACTIVATION_GRADS in wanted or relevance == GRADIENT_RELEVANCE
    wants_input_grads = INPUT_GRADS in wanted
    input_size = tuple(image_shape[:2])
    kernel_of = {row.name: row.load_kernel() for row in rows}
    # Copies, path steps or masked inputs per call: a method that only runs forward
    # passes keeps no gradients, so more of its copies fit in the budget.
    chunk_of = {row.name: copies_per_call(adapter, config, batch_size,
                                          gradients=row.needs_gradients)
                for row in rows if row.chunk_keyword}

    def input_gradient(images, targets):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)
            _, logits = adapter.forward(images)
            score = tf.gather(logits, targets, batch_dims=1)
        return tape.gradient(score, images)

    def target_probability(images, targets):
        _, logits = adapter.forward(images)
        return tf.gather(adapter.probabilities(logits), targets, batch_dims=1)

    def step(images, targets, sample_index):
        (activations, activation_grads, input_grads, logits, chosen,
         predictions) = _forward_and_gradients(adapter, images, targets, wants_input_grads,
                                               wants_activation_grads)
        values = {ACTIVATIONS: activations, ACTIVATION_GRADS: activation_grads,
                  INPUT_GRADS: input_grads, IMAGES: images, TARGETS: chosen,
                  SAMPLE_INDEX: sample_index, INPUT_GRADIENT: input_gradient,
                  TARGET_PROBABILITY: target_probability}
        if CLASS_WEIGHTS in wanted:
            values[CLASS_WEIGHTS] = tf.gather(tf.transpose(adapter.cam_weights), chosen)  # [B,K']
        if CAM_ACTIVATIONS in wanted:
            values[CAM_ACTIVATIONS] = adapter.cam_activations(activations)
        raw = {}
        for row in rows:
            keywords = {option: getattr(config, option) for option in row.options}
            if row.chunk_keyword:
                keywords[row.chunk_keyword] = chunk_of[row.name]
            raw[row.name] = kernel_of[row.name](*(values[a] for a in row.arguments), **keywords)

        outputs = _finished_maps(raw, config, input_size)
        if relevance == GRADIENT_RELEVANCE:
            outputs["relevance"] = kernels.channel_relevance(activations, activation_grads)
        elif relevance == CAM_RELEVANCE:
            outputs["relevance"] = kernels.cam_channel_relevance(activations,
                                                                 values[CLASS_WEIGHTS])
        probabilities = adapter.probabilities(logits)
        outputs["targets"] = chosen
        outputs["predictions"] = predictions
        outputs["scores"] = tf.gather(probabilities, predictions, batch_dims=1)
        return outputs

    signature = [
        tf.TensorSpec([batch_size, *image_shape], tf.float32, name="images"),
        tf.TensorSpec([batch_size], tf.int32, name="targets"),
        tf.TensorSpec([batch_size], tf.int64, name="sample_index"),
    ]
    function = tf.function(step, input_signature=signature, jit_compile=resolve_xla(config.xla),
                           reduce_retracing=False)
    function.get_concrete_function()  # traced now, not in a call (build_batches_function)
    return function


def _explained_scores(logits, targets):
    """(score of the explained class [B], the explained class [B], the predicted [B]);
    targets -1 = the predicted class."""
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    chosen = tf.where(targets < 0, predictions, targets)
    return tf.gather(logits, chosen, batch_dims=1), chosen, predictions  # [B]


def _forward_and_gradients(adapter, images, targets, wants_input_grads, wants_activation_grads):
    """(activations, activation_grads, input_grads, logits, chosen, predictions) from one
    forward pass and at most one gradient call, recording only what must be recorded."""
    activations = activation_grads = input_grads = None
    if wants_input_grads or (wants_activation_grads and adapter.head is None):
        # One tape over the whole forward pass; one gradient call gives both the
        # input gradient (saliency) and the activation gradient (Grad-CAM).
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)
            activations, logits = adapter.forward(images)
            score, chosen, predictions = _explained_scores(logits, targets)
        # Only the sources asked for: the input as a source makes the backward pass
        # run through the whole backbone, which Grad-CAM alone does not need.
        sources = {}
        if wants_input_grads:
            sources["input"] = images
        if wants_activation_grads:
            sources["activations"] = activations
        gradients = tape.gradient(score, sources)
        input_grads = gradients.get("input")
        activation_grads = gradients.get("activations")
    elif wants_activation_grads:
        # The backbone runs outside the tape: only the head is differentiated.
        activations = adapter.backbone(images)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(activations)
            logits = adapter.head(activations)
            score, chosen, predictions = _explained_scores(logits, targets)
        activation_grads = tape.gradient(score, activations)
    else:
        activations, logits = adapter.forward(images)
        _, chosen, predictions = _explained_scores(logits, targets)
    return activations, activation_grads, input_grads, logits, chosen, predictions


def _finished_maps(raw, config, input_size):
    """heatmaps/<method> (resized to the input on request, scaled to [0, 1] unless
    config.normalize is off) and scales/<method> [B] from the kernels' raw maps."""
    outputs = {}
    for method, heatmaps in raw.items():
        if METHODS[method].resolution == LAYER and config.map_size == "input":
            heatmaps = kernels.resize_heatmaps(heatmaps, input_size)
        scaled, scales = kernels.scale_heatmaps(heatmaps)
        outputs[f"heatmaps/{method}"] = scaled if config.normalize else tf.cast(heatmaps, tf.float32)
        outputs[f"scales/{method}"] = scales
    return outputs


def batches_per_call(batch_size, bytes_per_image):
    """How many batches one call of a batches function takes: up to CALL_BATCHES, as
    many as CALL_BYTES of float32 images allow, at least one.

    One call per batch left the CPU idle between batches while Python bound arguments
    and copied results: explain() with its defaults ran at 0.85 of compiled inference on
    the Fashion-MNIST CNN against 0.93 for the step alone (2-core Xeon, TF 2.21).
    """
    return int(max(1, min(CALL_BATCHES, CALL_BYTES // max(1, batch_size * bytes_per_image))))


def build_batches_function(step, batch_size, image_shape, dtype=tf.float32):
    """A tf.function `(images[n,H,W,C], targets[n], sample_index[n]) -> outputs[n,...]`
    that runs `step` (images[B,H,W,C] of `dtype`, targets[B], sample_index[B] -> dict of
    [B,...]) over the n images in batches of B inside one graph: the last batch is
    padded (targets -1, sample index -1) and its padding dropped. One trace for any n."""
    specs = [tf.TensorSpec([batch_size, *image_shape], dtype), tf.TensorSpec([batch_size], tf.int32),
             tf.TensorSpec([batch_size], tf.int64)]
    if not isinstance(step, tf.types.experimental.PolymorphicFunction):
        step = tf.function(step)
    outputs = step.get_concrete_function(*specs).structured_outputs
    signature = {name: tf.TensorSpec(value.shape, value.dtype) for name, value in outputs.items()}

    def run(images, targets, sample_index):
        count = tf.shape(images)[0]
        num_batches = (count + batch_size - 1) // batch_size
        missing = num_batches * batch_size - count
        # Padding copies the images: only for a short last batch (a copy of every call's
        # 64 MiB of 128x128x3 images cost explain() a tenth of its time).
        images = tf.cond(missing > 0,
                         lambda: tf.pad(images, [[0, missing]] + [[0, 0]] * len(image_shape)),
                         lambda: images)
        images = tf.reshape(images, [num_batches, batch_size, *image_shape])  # [n/B,B,H,W,C]
        targets = tf.reshape(tf.pad(targets, [[0, missing]], constant_values=-1),
                             [num_batches, batch_size])  # [n/B,B]
        sample_index = tf.reshape(tf.pad(sample_index, [[0, missing]], constant_values=-1),
                                  [num_batches, batch_size])  # [n/B,B]
        # One batch at a time (parallel_iterations=1): memory stays that of one batch.
        results = tf.map_fn(lambda inputs: step(*inputs), (images, targets, sample_index),
                            fn_output_signature=signature, parallel_iterations=1)
        return {name: tf.reshape(value, [-1, *value.shape[2:]])[:count]  # [n,...]
                for name, value in results.items()}

    function = tf.function(run, input_signature=[
        tf.TensorSpec([None, *image_shape], dtype), tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.int64)])
    # Traced here, where the caller decided to build it, never inside a call: TensorFlow
    # counts traces inside calls per Python code object, so the one trace of each batch
    # size's function (explain() builds one per power of two below batch_size) added up
    # to "5 out of the last 8 calls ... triggered tf.function retracing" warnings.
    function.get_concrete_function()
    return function
