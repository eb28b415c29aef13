"""The evaluation's curves in `sightline bench`: images/s of the compiled curves
(sightline.evaluate.curves: MoRF, LeRF and insertion in S steps plus the one-pass image)
for each fill, against the compiled inference timed in alternation.

A curve call needs 3 (S + 1) + 1 forward passes per image, so its ideal rate is the
inference rate over that; `x_per_pass` = x_ceiling x passes says how close it comes
(1.0: the perturbations, the ranking and the imputation cost nothing).
"""

from sightline.bench.timing import measure
from sightline.evaluate.settings import DEFAULT_GRID
from sightline.errors import UsageError

CURVE_FILLS = ("mean", "blur", "road")
CURVE_STEPS = {"full": 20, "tiny": 4}
TARGET_PER_PASS = 0.8  # every fill at >= 0.8 x (inference rate / forward passes)
TARGET_ROAD_OVER_MEAN = 0.5  # road within 2x of mean


def forward_passes(steps):
    return 3 * (steps + 1) + 1


def measure_curves(context, ceiling_call, log=None):
    """[{fill, steps, forward_passes, images_per_second, ceiling_alongside, x_ceiling,
    x_per_pass, startup_seconds}] for every fill, on the context's batch and model."""
    import numpy as np
    import tensorflow as tf

    from sightline.evaluate.curves import CurveSettings, build_curves, build_prepare

    say = log or (lambda *_: None)
    steps = CURVE_STEPS.get(context.size, CURVE_STEPS["full"])
    shape = tuple(int(v) for v in context.image_shape)
    grid = tuple(context.adapter.activation_shape[:2]) if context.adapter.activation_shape \
        else tuple(min(g, s) for g, s in zip(DEFAULT_GRID, shape[:2]))
    rng = np.random.default_rng(0)
    heatmaps = rng.uniform(0, 1, (context.batch, *grid)).astype(np.float32)
    cells, pixel = build_prepare(grid, shape[:2])(heatmaps)
    images = tf.constant(context.images)
    targets = tf.constant(context.targets)
    index = tf.constant(context.sample_index)
    rows = []
    for fill in CURVE_FILLS:
        curves = build_curves(context.adapter, shape, context.batch,
                              CurveSettings(steps=steps, fill=fill, grid=grid))

        def call(curves=curves):
            return curves(images, cells, pixel, targets, index)["auc"].numpy()

        result, startup, median, reps = measure(call, context.seconds, paired=ceiling_call)
        if not np.isfinite(result).all():
            raise UsageError(f"the {fill} curves gave non-finite areas on {context.name}")
        rate = context.batch / median
        ceiling = context.batch / measure.paired_median
        passes = forward_passes(steps)
        entry = {"fill": fill, "steps": steps, "grid": list(grid), "forward_passes": passes,
                 "images_per_second": round(rate, 3), "ceiling_alongside": round(ceiling, 3),
                 "x_ceiling": round(rate / ceiling, 5),
                 "x_per_pass": round(rate / ceiling * passes, 4),
                 "startup_seconds": round(startup, 3), "reps": reps}
        rows.append(entry)
        say(f"  curves {fill:5s} S={steps}: {rate:8.2f} img/s, {passes} passes each, "
            f"{entry['x_per_pass']:.3f} of inference / passes  start-up {startup:6.2f} s")
    return rows


def curve_targets(curves, add):
    """Add the curve targets through `add(name, ratio, threshold, comparison)`."""
    by_fill = {entry["fill"]: entry for entry in curves}
    for fill, entry in by_fill.items():
        add(f"faithfulness curves, fill {fill}, >= {TARGET_PER_PASS}x compiled inference / "
            f"{entry['forward_passes']} forward passes", entry["x_per_pass"], TARGET_PER_PASS, ">=")
    if "road" in by_fill and "mean" in by_fill:
        # Both relative to the inference timed alongside each: load drift cancels.
        add("faithfulness curves: road within 2x of mean (rate ratio)",
            by_fill["road"]["x_ceiling"] / by_fill["mean"]["x_ceiling"],
            TARGET_ROAD_OVER_MEAN, ">=")


def format_curves(curves):
    lines = ["| curves fill | steps | forward passes | images/s | x ceiling | x ceiling x passes |",
             "|---|---:|---:|---:|---:|---:|"]
    for entry in curves:
        lines.append(f"| {entry['fill']} | {entry['steps']} | {entry['forward_passes']} | "
                     f"{entry['images_per_second']:.2f} | {entry['x_ceiling']:.4f} | "
                     f"{entry['x_per_pass']:.3f} |")
    return "\n".join(lines)
