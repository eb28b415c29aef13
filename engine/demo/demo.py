"""`sightline demo`: find the cloudy-sky detector we planted ourselves.

    sightline demo --out demo-out        (or scripts/demo.sh)

1. generate the scenes (sightline.demo.scenes): crosses and discs on textured ground under a
   cloudy or sunny sky; in `train` the sky agrees with the class 95% of the time, in
   `train-clean` and `held-out` 50% (it says nothing);
2. train two models of the course's shape with one recipe (the same seed, optimiser, and
   "train until the training accuracy stops improving"): `shortcut` on `train`, `clean`
   on `train-clean`;
3. explain both on `held-out` with Grad-CAM (sightline.jobs.runner.run_job: the path of
   `sightline explain`), 4. audit both against the object masks, 5. look at their
   activations, 6. write one report (with every method's maps on a few held-out scenes
   for both models), and print the verdict: the shortcut model flagged, the clean one
   not.

Everything lands in OUT: data/, models/, runs/<model>/ (shards, audit.json),
activations/<model>/ and report/report.html (with methods-<model>.png). Exit 0 when the verdict is the expected
one, 1 otherwise. OUT must be new, empty or an earlier demo's output (marked by
.sightline-demo): the demo replaces those folders on every run.
"""

import html
import os
import shutil
import time

from sightline.kernels.methods import INPUT, method_names

IMAGE_SIZE = 64
SKY_REGION = "sky=0:20,0:64"
MODELS = ("shortcut", "clean")
TRAIN_SPLIT = {"shortcut": "train", "clean": "train-clean"}
# The overview of every method of the table on a few held-out scenes, per model.
OVERVIEW_METHODS = method_names()
# Maps that live on single pixels (the input-resolution methods): shown with their top
# 1% clipped (display only), or they look black but for a handful of pixels.
PIXEL_METHODS = method_names(INPUT)
OVERVIEW_IMAGES = 4
TILE_ZOOM = 2
# What the demo replaces in OUT on every run, and the file that says OUT is the demo's:
# without it, `--out .` in a project would wipe the project's own data/ and models/.
OWNED_FOLDERS = ("data", "models", "runs", "activations", "report")
MARKER_FILE = ".sightline-demo"


def check_demo_folder(out):
    """Refuse an OUT the demo may not replace parts of: an existing non-empty folder with
    no MARKER_FILE (one a previous demo did not write), or something that is not a folder."""
    out = os.fspath(out)
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise ValueError(f"--out must be a folder; {out!r} is a file. Pass a new or empty folder "
                         "for the demo's output")
    if os.listdir(out) and not os.path.isfile(os.path.join(out, MARKER_FILE)):
        raise ValueError(f"--out {out!r} is a non-empty folder the demo did not write (it has no "
                         f"{MARKER_FILE}), and the demo replaces {', '.join(OWNED_FOLDERS)} in "
                         "it; pass a new or empty folder, or the output of an earlier demo")


def build_model(seed=0, size=IMAGE_SIZE, num_classes=2):
    """The course's CNN: conv/pool blocks, a last conv, global average pooling, softmax."""
    import keras
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((size, size, 3)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(48, 3, padding="same", activation="relu", name="last_conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(num_classes, activation="softmax", name="classifier"),
    ], name="course_cnn")


def train_model(images, labels, *, seed=0, max_epochs=8, min_delta=0.01, batch_size=16):
    """Train until the training accuracy stops improving (by min_delta) or max_epochs.

    The recipe of the tank story: train until it fits, with nothing but the training
    data to judge by. A model still at chance (below 0.6 for two classes) has not
    started learning yet (the loss often plateaus for an epoch or two first), so it is
    not stopped. Returns (model, per-epoch training accuracies).
    """
    started_learning = 1.0 / 2 + 0.1
    import keras
    model = build_model(seed)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class StopWhenFlat(keras.callbacks.Callback):
        best = -1.0

        def on_epoch_end(self, epoch, logs=None):
            accuracy = (logs or {}).get("accuracy", 0.0)
            if accuracy >= started_learning and accuracy < self.best + min_delta:
                self.model.stop_training = True
            self.best = max(self.best, accuracy)

    x = images.astype("float32") / 255.0
    history = model.fit(x, labels, batch_size=batch_size, epochs=max_epochs, shuffle=True,
                        verbose=0, callbacks=[StopWhenFlat()])
    return model, [float(a) for a in history.history["accuracy"]]


def method_overview(model, images, path):
    """Every method's map over `images` (uint8 [N,H,W,3]): one row per image, the input
    then one column per method of OVERVIEW_METHODS, written as a PNG at `path`."""
    from sightline.compute.explain import explain
    from sightline.report.overlay import clip_percentile, grid, overlay, to_display_rgb, upscale, write_png
    result = explain(model, images.astype("float32") / 255.0, methods=OVERVIEW_METHODS,
                     batch_size=len(images), map_size="input")
    rows = []
    for i, image in enumerate(images):
        row = [upscale(to_display_rgb(image), TILE_ZOOM)]
        for method in OVERVIEW_METHODS:
            heatmap = result.heatmaps[method][i]
            if method in PIXEL_METHODS:
                heatmap = clip_percentile(heatmap)
            row.append(upscale(overlay(image, heatmap), TILE_ZOOM))
        rows.append(row)
    return write_png(path, grid(rows))


def _accuracy(model, images, labels):
    import numpy as np
    probabilities = model.predict(images.astype("float32") / 255.0, batch_size=256, verbose=0)
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def run_demo(out="demo-out", seed=0, *, num_train=1600, num_held_out=400, max_epochs=8,
             activations=True, report=True, verbose=True):
    """The whole demo; returns a dict with per model: train/held-out accuracy, epochs,
    the audit, and the verdict, plus the report path and seconds."""
    check_demo_folder(out)  # before TensorFlow is even imported: a refusal costs nothing
    from sightline.audit.audit import run_audit
    from sightline.audit.summary import AUDIT_FILE, summary_lines, write_audit
    from sightline.config import make_config
    from sightline.demo.scenes import CLASS_NAMES, make_demo_data
    from sightline.jobs.runner import run_job

    def say(*args):
        if verbose:
            print(*args, flush=True)

    started = time.monotonic()
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    # The marker goes in before anything else, so a demo stopped half-way can be re-run.
    with open(os.path.join(out, MARKER_FILE), "w") as handle:
        handle.write("written by `sightline demo`, which replaces "
                     f"{', '.join(OWNED_FOLDERS)} here on every run\n")
    for name in OWNED_FOLDERS:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    data = os.path.join(out, "data")
    say(f"[1/6] generating scenes into {data}: {num_train} training scenes where the sky "
        f"agrees with the class 95% of the time, {num_train} where it agrees 50%, "
        f"{num_held_out} held out (50%)")
    splits = make_demo_data(data, seed=seed, num_train=num_train, num_held_out=num_held_out)
    held_out = splits["held-out"]
    held_images = os.path.join(data, "held-out", "images")
    held_masks = os.path.join(data, "held-out", "masks.h5")

    results = {}
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    for number, name in enumerate(MODELS):
        split = splits[TRAIN_SPLIT[name]]
        tick = time.monotonic()
        model, history = train_model(split["images"], split["labels"], seed=seed,
                                     max_epochs=max_epochs)
        path = os.path.join(out, "models", f"{name}.keras")
        model.save(path)
        results[name] = {
            "model": path, "epochs": len(history), "history": history,
            "train_accuracy": _accuracy(model, split["images"], split["labels"]),
            "held_out_accuracy": _accuracy(model, held_out["images"], held_out["labels"]),
        }
        say(f"[2/6] trained the {name} model on '{TRAIN_SPLIT[name]}' in "
            f"{time.monotonic() - tick:.0f} s ({len(history)} epochs): train accuracy "
            f"{results[name]['train_accuracy']:.3f}, held-out accuracy "
            f"{results[name]['held_out_accuracy']:.3f}")

    for name in MODELS:
        run_out = os.path.join(out, "runs", name)
        config = make_config(("gradcam",), model=results[name]["model"], data=held_images,
                             out=run_out, preprocess="[0,1]", map_size="native", batch_size=64,
                             shard_size=256, devices=1, quiet=True, overwrite=True)
        summary = run_job(config)
        if summary.exit_code:
            raise RuntimeError(f"explaining with the {name} model stopped (exit "
                               f"{summary.exit_code})")
        say(f"[3/6] explained {summary.images} held-out images with the {name} model "
            f"(Grad-CAM, {summary.images_per_second:.0f} images/s) into {run_out}")
        audit = run_audit(run_out, method="gradcam", masks=held_masks, regions=[SKY_REGION])
        write_audit(audit, os.path.join(run_out, AUDIT_FILE))
        results[name]["audit"] = audit
        results[name]["run"] = run_out
        say(f"[4/6] audit of the {name} model:")
        for line in summary_lines(audit)[1:]:
            say("    " + line)

    activation_results = []
    if activations:
        from sightline.audit.activations import activation_statistics
        from sightline.report.activations import write_activations_output
        for name in MODELS:
            folder = os.path.join(out, "activations", name)
            statistics = activation_statistics(results[name]["model"], held_images,
                                               preprocess="[0,1]", batch_size=64)
            activation_results.append((f"{name} model",
                                       write_activations_output(folder, statistics)))
        say(f"[5/6] activation statistics of both models in {os.path.join(out, 'activations')}")

    report_path = None
    if report:
        from sightline.report.page import embed_png, write_report
        folder = os.path.join(out, "report")
        os.makedirs(folder, exist_ok=True)
        shown = held_out["images"][:OVERVIEW_IMAGES]
        overviews = "".join(
            embed_png(method_overview(results[name]["model"], shown,
                                      os.path.join(folder, f"methods-{name}.png")),
                      f"{name} model: every method on {OVERVIEW_IMAGES} held-out scenes")
            for name in MODELS)
        intro = _intro(results, CLASS_NAMES) + (
            "<h2>Every method, both models</h2><p class='note'>Columns: the scene, then "
            + ", ".join(OVERVIEW_METHODS) + " (" + ", ".join(PIXEL_METHODS)
            + " clipped at their 99th percentile for display). The CAM family puts the shortcut model's evidence in the "
            "sky and the clean model's on the object; the pixel-gradient maps are noisier and "
            "also trace the object's edges, where a small change of the input still moves "
            "the score.</p>" + overviews)
        report_path = write_report(
            folder, [(f"{name} model", results[name]["audit"]) for name in MODELS],
            activations=activation_results, title="sightline demo: find the cloudy-sky detector",
            intro=intro)
        say(f"[6/6] report: {os.path.abspath(report_path)}")

    expected = {"shortcut": True, "clean": False}
    flagged = {name: bool(results[name]["audit"]["flagged"]) for name in MODELS}
    as_expected = flagged == expected
    for name in MODELS:
        audit = results[name]["audit"]
        shares = ", ".join(
            f"{c['name']} {c['on_object_share']['mean']:.3f} (lift {c['lift']:.2f})"
            if c["on_object_share"] else f"{c['name']} n/a (every map is zero)"
            for c in audit["classes"])
        say(f"verdict: {name} model {'FLAGGED' if flagged[name] else 'not flagged'}; on-object "
            f"share {shares}; held-out accuracy {results[name]['held_out_accuracy']:.3f}")
    seconds = time.monotonic() - started
    say("the audit found the planted shortcut: the shortcut model looks at the sky, the clean "
        "model at the object" if as_expected else
        "UNEXPECTED verdict: the shortcut model should be flagged and the clean one not")
    say(f"done in {seconds:.0f} s")
    return {"models": results, "flagged": flagged, "as_expected": as_expected,
            "report": report_path, "seconds": seconds}


def _mean_over_images(audit, summary_of):
    """The per-class means of a summary, weighted by the images they average over: the
    empty maps of a class have no share and are not in its mean."""
    total = weight = 0.0
    for c in audit["classes"]:
        summary = summary_of(c)
        if summary:
            images = c["count"] - c.get("empty_maps", 0)
            total += summary["mean"] * images
            weight += images
    return total / weight if weight else float("nan")


def _number(value):
    return f"{value:.3f}" if value == value else "n/a"  # NaN: no map with evidence


def _intro(results, class_names):
    rows = []
    for name in MODELS:
        r = results[name]
        audit = r["audit"]
        share = _mean_over_images(audit, lambda c: c["on_object_share"])
        sky = _mean_over_images(audit, lambda c: c["regions"]["sky"])
        verdict = ('<span class="flagged">FLAGGED</span>' if audit["flagged"]
                   else '<span class="ok">not flagged</span>')
        rows.append(f"<tr><td class='text'>{name}</td><td class='text'>{TRAIN_SPLIT[name]}</td>"
                    f"<td>{r['epochs']}</td><td>{r['train_accuracy']:.3f}</td>"
                    f"<td>{r['held_out_accuracy']:.3f}</td><td>{_number(share)}</td>"
                    f"<td>{_number(sky)}</td>"
                    f"<td>{verdict}</td></tr>")
    return (
        "<p>Two CNNs of the same shape and recipe learned to tell a "
        f"<b>{html.escape(class_names[0])}</b> from a <b>{html.escape(class_names[1])}</b> "
        "on the ground. In the <code>shortcut</code> model's training data the sky agreed with "
        "the class in 95% of the scenes (cloudy with crosses, sunny with discs): like the tank "
        "detector of the story, it could score 95% by looking at the weather. The "
        "<code>clean</code> model's sky said nothing. Both are judged on held-out scenes "
        "where the sky agrees only half of the time.</p>"
        "<table><tr><th class='text'>model</th><th class='text'>trained on</th><th>epochs</th>"
        "<th>train accuracy</th><th>held-out accuracy</th><th>on-object share</th>"
        "<th>sky share</th><th>audit</th></tr>" + "".join(rows) + "</table>")
