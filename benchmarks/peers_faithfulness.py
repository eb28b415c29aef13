"""The evaluation's curves side by side with xplique's Deletion and Insertion and
Quantus's PixelFlipping, one run.

The peers are not dependencies (see benchmarks/peers.py for the scratch folder); Quantus
0.6.0's import path needs six light packages besides xplique's:

    .venv/bin/pip install --no-deps --target .peers xplique quantus \\
        deprecated wrapt tensorflow-probability decorator dm-tree einops \\
        pandas scikit-image lazy_loader cachetools opencv-python-headless tqdm
    PYTHONPATH=.peers .venv/bin/python benchmarks/peers_faithfulness.py --json out.json

Where the definitions coincide, both sides compute the same numbers, and that is
checked before anything is timed: pixel-level ranking (sightline's grid set to the
input's size, a map without ties), S steps of n/S pixels (n divisible by S), deletion
towards each image's mean colour and insertion from sightline's blurred copy (given to
xplique as its baseline function), the softmax probability of the target, the trapezoid
area over evenly spaced steps. xplique averages the curve over images before the area,
sightline takes the area per image; with even steps the mean of the areas is the area of
the mean curve.

Quantus's PixelFlipping is sightline's MoRF curve per image when: features_in_step is
n/S pixels, the map has no ties, attributions are neither normalised nor made absolute
(ranking is all that matters), the softmax probability, and the fill is each image's
mean given as an array. Its own "mean" baseline is the mean of the image as already
perturbed at that step, a moving fill that sightline does not compute. Its curve has S
points, the probabilities after 1..S steps (sightline's points 1..S; the unperturbed
point 0 is not in it), and its area is the trapezoid with unit spacing over those S
points, another number than sightline's area over [0, 1]: the curves are compared, not
the areas. Quantus flattens the map broadcast to every channel, so the fill array holds
one value per image: the check runs on a one-channel model (Fashion).

Timing: xplique's Deletion plus Insertion (2 (S + 1) passes) against one sightline
curves call (MoRF, LeRF, insertion and the one-pass image: 3 (S + 1) + 1 passes), each
timed in alternation with compiled inference and reported as images per second.
Quantus's PixelFlipping computes one curve (S passes) against sightline's whole call.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TOLERANCE = 1e-4  # probabilities and areas, float32 on both sides


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def relative_speed(ours, theirs):
    """How many times faster `ours` runs than `theirs`, each row's images per second taken
    relative to the inference timed alongside it, so that the machine's load cancels."""
    return ((ours["images_per_second"] / ours["inference_alongside"])
            / (theirs["images_per_second"] / theirs["inference_alongside"]))


def main(argv=None):
    args = parse_arguments(argv)
    import numpy as np
    import tensorflow as tf
    import quantus
    from xplique.metrics import Deletion, Insertion

    from sightline.bench.timing import measure
    from sightline.bench.zoo import Context
    from sightline.evaluate.curves import CurveSettings, build_curves, build_prepare
    from sightline.kernels import faithfulness as F

    context = Context("fashion", batch_size=args.images)
    shape = tuple(context.image_shape)
    if (shape[0] * shape[1]) % args.steps:
        raise SystemExit(f"--steps must divide {shape[0] * shape[1]} pixels")
    rng = np.random.default_rng(0)
    images = context.images
    heatmaps = rng.uniform(0, 1, (len(images), *shape[:2])).astype(np.float32)  # no ties
    targets = context.targets
    one_hot = np.eye(context.adapter.num_classes, dtype=np.float32)[targets]
    sigma = F.blur_sigma(shape[:2])

    def mean_colour(inputs):
        return np.broadcast_to(inputs.mean(axis=(1, 2), keepdims=True), inputs.shape).copy()

    def blurred(inputs):
        return F.gaussian_blur(inputs.astype(np.float32), sigma).numpy()

    deletion = Deletion(context.model, images, one_hot, batch_size=len(images),
                        baseline_mode=mean_colour, steps=args.steps)
    insertion = Insertion(context.model, images, one_hot, batch_size=len(images),
                          baseline_mode=blurred, steps=args.steps)
    curves = build_curves(context.adapter, shape, len(images),
                          CurveSettings(steps=args.steps, fill="mean", grid=shape[:2]))
    cells, pixel = build_prepare(shape[:2], shape[:2])(heatmaps)
    inputs = [tf.constant(images), cells, pixel, tf.constant(targets),
              tf.constant(context.sample_index)]

    pixels_in_step = shape[0] * shape[1] // args.steps
    if shape[2] != 1:
        raise SystemExit("Quantus's fill array holds one value per image: a one-channel model")
    pixel_flipping = quantus.PixelFlipping(
        features_in_step=pixels_in_step, abs=False, normalise=False,
        perturb_baseline=np.repeat(images.mean(axis=(1, 2, 3))[:, None], pixels_in_step, 1),
        disable_warnings=True, display_progressbar=False)

    def quantus_curves():
        return np.array(pixel_flipping(model=context.model, x_batch=images, y_batch=targets,
                                       a_batch=heatmaps[:, None], channel_first=False,
                                       softmax=True, batch_size=len(images)))

    ours = {k: v.numpy() for k, v in curves(*inputs).items()}
    theirs_deletion = np.array(list(deletion.detailed_evaluate(heatmaps).values()))
    theirs_insertion = np.array(list(insertion.detailed_evaluate(heatmaps).values()))
    agreement = {
        "deletion_curve": float(np.abs(ours["probabilities"][:, F.MORF].mean(0)
                                       - theirs_deletion).max()),
        "insertion_curve": float(np.abs(ours["probabilities"][:, F.INSERTION].mean(0)
                                        - theirs_insertion).max()),
        "deletion_auc": float(abs(ours["auc"][:, F.MORF].mean() - deletion.evaluate(heatmaps))),
        "insertion_auc": float(abs(ours["auc"][:, F.INSERTION].mean()
                                   - insertion.evaluate(heatmaps))),
        # per image, sightline's points 1..S (Quantus has no unperturbed point)
        "quantus_pixel_flipping_curves": float(np.abs(ours["probabilities"][:, F.MORF, 1:]
                                                      - quantus_curves()).max()),
    }
    print("agreement (max abs difference):", json.dumps(agreement))
    if max(agreement.values()) > TOLERANCE:
        raise SystemExit(f"the peers disagree by more than {TOLERANCE}: not a fair comparison")

    inference = context.inference_call()
    inference()

    def ours_call():
        return curves(*inputs)["auc"].numpy()

    def xplique_call():
        return deletion.evaluate(heatmaps), insertion.evaluate(heatmaps)

    rows = {}
    for name, call in (("sightline curves (3 curves + one-pass)", ours_call),
                       ("xplique Deletion + Insertion", xplique_call),
                       ("Quantus PixelFlipping", quantus_curves)):
        _, startup, median, reps = measure(call, context.seconds, paired=inference)
        rows[name] = {"images_per_second": len(images) / median,
                      "inference_alongside": len(images) / measure.paired_median,
                      "startup_seconds": startup, "reps": reps}
    ours_row, xplique_row, quantus_row = rows.values()
    speedup = {"xplique": relative_speed(ours_row, xplique_row),
               "quantus": relative_speed(ours_row, quantus_row)}
    for name, row in rows.items():
        print(f"{name:42s} {row['images_per_second']:9.2f} img/s "
              f"(inference alongside {row['inference_alongside']:.1f} img/s)")
    passes = 3 * (args.steps + 1) + 1
    print(f"sightline over xplique: {speedup['xplique']:.1f}x "
          f"(sightline computes {passes}/{2 * (args.steps + 1)} the passes)")
    print(f"sightline over Quantus: {speedup['quantus']:.1f}x "
          f"(sightline computes {passes}/{args.steps} the passes)")
    from benchmarks.peers import cpu_name
    result = {"cpu": cpu_name(), "images": len(images), "steps": args.steps,
              "agreement": agreement, "rows": rows, "speedup": speedup,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
