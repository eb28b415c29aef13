"""Saliency and Grad-CAM side by side with the peers (xplique, tf-keras-vis), one run.

Every row is timed in alternation with compiled inference of the same model on the same
batch (`sightline.bench.timing.measure(..., paired=...)`) and reported as a ratio:
images per second of the row over images per second of inference (1.0 = as fast as
inference). Ratios survive a shared machine; absolute rates do not.

The peers are not dependencies of sightline: install them into a scratch folder and
put it on PYTHONPATH, e.g.

    .venv/bin/pip install --no-deps --target .peers xplique tf-keras-vis \\
        deprecated wrapt tensorflow-probability decorator dm-tree einops \\
        scikit-image lazy_loader opencv-python-headless
    PYTHONPATH=.peers .venv/bin/python benchmarks/peers.py --model mobilenet_v2

Fair play: the peers get a twin of the model whose last layer outputs the logits (the
same weights, the softmax left out), which is what sightline explains; the same images,
batch size and targets (one-hot for xplique, a score function for tf-keras-vis); xplique
compiles its gradient call, tf-keras-vis runs eagerly, as each is used. Before
timing, each peer's map is checked against sightline's (same definition, see
`agreement`): a peer that computes something else is not a fair row.
"""

import argparse
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Same definitions on both sides (saliency: max |dy_c/dx| over channels; Grad-CAM: ReLU
# of the gradient-weighted activations, then the peer's resize to the input, xplique's
# bicubic or tf-keras-vis's linear zoom, applied to sightline's map here too): equal up
# to float32 rounding, measured as the relative L2 difference of the normalised maps.
# On the random-weight MobileNetV2 (logits near 1e-11) a ReLU gate sits within rounding
# of its threshold in one image, so any other summation order moves that image's map:
# sightline's folded normalisations and XLA on the unfolded model both give 1.4e-2 on it
# against a float64 run (4e-3 over the batch), the unfolded graph 1.5e-4. A different
# definition is off by more: softmax instead of logits 2.3e-2, sum instead of max 0.27,
# another class 0.65.
TOLERANCE = 1e-2


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("fashion", "mobilenet_v2"), default="fashion")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: the bench preset, 256 / 16)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of timed calls per row (default: the bench preset)")
    parser.add_argument("--methods", default="saliency,gradcam",
                        help="comma-separated, from saliency and gradcam")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    return parser.parse_args(argv)


def import_peers():
    """{name: module} of the peers that import; xplique is required."""
    peers = {}
    try:
        import xplique.attributions as xplique_attributions
    except ImportError as error:
        raise SystemExit(f"peers.py: xplique is not importable ({error}); install it with "
                         "--no-deps into a scratch folder and put that on PYTHONPATH") from None
    peers["xplique"] = xplique_attributions
    try:
        import tf_keras_vis.gradcam as tf_keras_vis_gradcam
        peers["tf_keras_vis"] = tf_keras_vis_gradcam
    except ImportError as error:
        print(f"tf-keras-vis not importable ({error}): its rows are left out", file=sys.stderr)
    return peers


def logits_twin(model):
    """A copy of `model` with the same weights whose last layer leaves out its softmax."""
    import keras
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    twin.layers[-1].activation = keras.activations.linear
    return twin


def normalised(maps):
    """maps[B,H,W(,1)] -> float64 [B,H,W], each divided by its maximum."""
    import numpy as np
    maps = np.asarray(maps, dtype=np.float64).reshape(np.shape(maps)[:3])
    return maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-30)


def agreement(ours, theirs):
    """Relative L2 difference of the two sets of maps, each normalised to max 1."""
    import numpy as np
    ours, theirs = normalised(ours), normalised(theirs)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(ours), 1e-30))


def build_rows(context, peers, methods):
    """[(name, method, call, check)]: check() -> (difference, tolerance) or None."""
    import numpy as np
    import tensorflow as tf

    from sightline import explain

    images, targets, batch = context.images, context.targets, context.batch
    one_hot = np.eye(context.adapter.num_classes, dtype=np.float32)[targets]
    twin = logits_twin(context.model)
    rows = []
    if "saliency" in methods:
        step = context.step_call("saliency")
        reference = step()

        def explain_saliency():
            return explain(context.model, images, ("saliency",), targets=targets,
                           batch_size=batch, xla=False).heatmaps["saliency"]

        rows.append(("sightline step", "saliency", step, None))
        rows.append(("sightline explain()", "saliency", explain_saliency,
                     lambda: (agreement(reference, explain_saliency()), TOLERANCE)))
        saliency = peers["xplique"].Saliency(twin, batch_size=batch, reducer="max")

        def xplique_saliency():
            return saliency.explain(images, one_hot).numpy()

        rows.append(("xplique Saliency", "saliency", xplique_saliency,
                     lambda: (agreement(reference, xplique_saliency()), TOLERANCE)))
    if "gradcam" in methods:
        step = context.step_call("gradcam")
        native = step()
        # The peers resize to the input bicubically; so does the reference they meet.
        resized = tf.image.resize(native[..., None], images.shape[1:3],
                                  method="bicubic").numpy()
        rows.append(("sightline step", "gradcam", step, None))
        layer = context.adapter.layer_name
        gradcam = peers["xplique"].GradCAM(twin, conv_layer=layer, batch_size=batch)

        def xplique_gradcam():
            return gradcam.explain(images, one_hot).numpy()

        rows.append(("xplique GradCAM", "gradcam", xplique_gradcam,
                     lambda: (agreement(resized, xplique_gradcam()),
                              TOLERANCE)))
        if "tf_keras_vis" in peers:
            from tf_keras_vis.utils.scores import CategoricalScore
            visualizer = peers["tf_keras_vis"].Gradcam(twin, clone=False)
            score = CategoricalScore(targets.tolist())

            def tf_keras_vis_gradcam():
                # Without seek_penultimate_conv_layer=False it would step back from a
                # target that is not a convolution (MobileNetV2's out_relu) to the
                # convolution before it and explain another layer.
                return visualizer(score, images, penultimate_layer=layer,
                                  seek_penultimate_conv_layer=False, normalize_cam=False)

            from scipy.ndimage import zoom
            # tf-keras-vis resizes with scipy's linear zoom; sightline's map meets it so.
            zoomed = zoom(native, [t / f for f, t in zip(native.shape, images.shape)], order=1)
            rows.append(("tf-keras-vis Gradcam", "gradcam", tf_keras_vis_gradcam,
                         lambda: (agreement(zoomed, tf_keras_vis_gradcam()), TOLERANCE)))
    return rows


def measure_rows(context, rows, seconds):
    """Each row timed in alternation with compiled inference -> list of result dicts."""
    from sightline.bench.timing import measure
    inference = context.inference_call()
    inference()
    results = []
    for name, method, call, check in rows:
        difference, tolerance = check() if check is not None else (None, None)
        if difference is not None and difference > tolerance:
            print(f"{name} ({method}) differs from sightline by {difference:.2e} "
                  f"(tolerance {tolerance:.0e}): its row is not comparable", file=sys.stderr)
        _, _, median, reps = measure(call, seconds, paired=inference)
        results.append(dict(row=name, method=method, seconds=median,
                            inference_seconds=measure.paired_median,
                            ratio_to_inference=measure.paired_median / median, reps=reps,
                            max_difference=difference, tolerance=tolerance))
        print(f"{method:<9} {name:<22} {results[-1]['ratio_to_inference']:6.3f}  "
              f"reps {reps}" + ("" if difference is None else f"  diff {difference:.1e}"),
              flush=True)
    return results


def cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return platform.processor(), []
    name = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), "")
    flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
    return name, [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]


def main(argv=None):
    arguments = parse_arguments(argv)
    peers = import_peers()
    import tensorflow as tf

    from sightline.bench.zoo import Context
    context = Context(arguments.model, batch_size=arguments.batch)
    seconds = context.seconds if arguments.seconds is None else arguments.seconds
    methods = [m.strip() for m in arguments.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - {"saliency", "gradcam"})
    if unknown:
        raise SystemExit(f"peers.py: unknown methods {unknown}; choose from saliency, gradcam")
    name, flags = cpu_name()
    print(f"{context.name}, batch {context.batch}, {name} ({' '.join(flags) or 'no bf16/amx'}), "
          f"TF {tf.__version__}; ratio = images/s over compiled inference's, alternating")
    results = measure_rows(context, build_rows(context, peers, methods), seconds)
    if arguments.json:
        with open(arguments.json, "w") as handle:
            json.dump(dict(model=context.name, batch=context.batch, cpu=name, cpu_flags=flags,
                           tensorflow=tf.__version__, rows=results), handle, indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
            sys.exit(2)
        raise
