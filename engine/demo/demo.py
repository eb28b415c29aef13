"""`sightline demo`: find the cloudy-sky detector and the tag reader we planted ourselves.

    sightline demo --out demo-out        (or scripts/demo.sh)

1. generate the scenes (sightline.demo.scenes): crosses and discs on textured ground under a
   cloudy or sunny sky; in `train` the sky agrees with the class 95% of the time, in
   `train-clean` and `held-out` 50% (it says nothing); in `train-tagged` and
   `held-out-tagged` the sky says nothing but a quarter of the crosses carry a corner tag
   over a faint cross (who has it is saved with the data);
2. train three models of the course's shape with one recipe (the same seed, optimiser, and
   "train until the training accuracy stops improving"): `shortcut` on `train`, `clean`
   on `train-clean`, `tagged` on `train-tagged`;
3. explain with Grad-CAM (sightline.jobs.runner.run_job: the path of `sightline explain`):
   shortcut and clean on `held-out` (with saliency too), tagged and clean on
   `held-out-tagged`;
4. audit the shortcut and clean models against the object masks, and evaluate their
   Grad-CAM and saliency maps (sightline.evaluate: 16 scenes per class, 10 steps);
5. audit the tagged and clean models without masks (clusters of each class's maps, the
   flagged ones verified by ablation; mask_free_audit) and score the tag group against
   the ground truth (tag_group: precision, recall, ablation drop vs control);
6. look at the activations of the shortcut and clean models, 7. write one report (with
   every method's maps on a few held-out scenes for both, and the clusters), and print
   the verdict: the shortcut model flagged by the masks, the tag group flagged without
   masks, the clean model by neither.

Everything lands in OUT: data/, models/, runs/<model>/ and runs/<model>-on-tagged/
(shards, audit.json, clusters.h5), activations/<model>/ and report/report.html (with
methods-<model>.png). Exit 0 when the verdict is the expected one, 1 otherwise. OUT must
be new, empty or an earlier demo's output (marked by .sightline-demo): the demo replaces
those folders on every run.
"""

import html
import os
import shutil
import time

from sightline.activations.statistics import activation_statistics
from sightline.audit.audit import run_audit
from sightline.audit.shortcuts import ShortcutOptions
from sightline.audit.summary import AUDIT_FILE, summary_lines, write_audit
from sightline.audit.virelay import read_clusters
from sightline.config import make_config
from sightline.evaluate.run import evaluate_run
from sightline.evaluate.settings import EvaluationSettings
from sightline.evaluate.summary import card_text
from sightline.jobs.runner import run_job
from sightline.kernels.methods import INPUT, method_names
from sightline.report.activations import write_activations_output
from sightline.evaluate.report_inputs import ReportInputs
from sightline.report.page import embed_png, write_report
from sightline.errors import UsageError

IMAGE_SIZE = 64
SKY_REGION = "sky=0:20,0:64"
MODELS = ("shortcut", "clean", "tagged")
TRAIN_SPLIT = {"shortcut": "train", "clean": "train-clean", "tagged": "train-tagged"}
HELD_OUT = {"shortcut": "held-out", "clean": "held-out", "tagged": "held-out-tagged"}
MASKED_MODELS = ("shortcut", "clean")  # audited against the object masks on `held-out`
MASK_FREE_MODELS = ("tagged", "clean")  # audited without masks on `held-out-tagged`
# The overview of every method of the table on a few held-out scenes, per model.
OVERVIEW_METHODS = method_names()
# Maps that live on single pixels (the input-resolution methods): shown with their top
# 1% clipped (display only), or they look black but for a handful of pixels.
PIXEL_METHODS = method_names(INPUT)
OVERVIEW_IMAGES = 4
LEARNING_RATE = 2e-3  # Adam's, for the demo's small CNN: learns the scenes in a few epochs
# `sightline evaluate` on each masked model's held-out run: 16 scenes per class, 10 steps,
# about 10 s per model on two shared cores (a full evaluation of 400 scenes is 12x more);
# the sanity checks on the same 16 scenes per class.
DEMO_EVALUATION_STEPS, DEMO_EVALUATION_SAMPLE = 10, 16
# The masked runs also store saliency, so the evaluation has two methods to weigh against
# each other and against the controls: a CAM-family map and a gradient map, the two kinds
# Adebayo et al. found to pass the randomisation check.
EVALUATED_METHODS = ("gradcam", "saliency")
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
        raise UsageError(f"--out must be a folder; {out!r} is a file. Pass a new or empty folder "
                         "for the demo's output")
    if os.listdir(out) and not os.path.isfile(os.path.join(out, MARKER_FILE)):
        raise UsageError(f"--out {out!r} is a non-empty folder the demo did not write (it has no "
                         f"{MARKER_FILE}), and the demo replaces {', '.join(OWNED_FOLDERS)} in "
                         "it; pass a new or empty folder, or the output of an earlier demo")


def build_demo_model(seed=0, size=IMAGE_SIZE, num_classes=2):
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
    model = build_demo_model(seed)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
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


def mask_free_audit(run_out):
    """The mask-free audit of one run, its flagged clusters verified by ablation on the
    run's own model and images (both found through the run's manifest)."""
    return run_audit(run_out, method="gradcam", shortcuts=ShortcutOptions(verify=True))


def tag_group(audit, scenes):
    """How well the flagged clusters of the tag class find the tagged scenes: precision,
    recall (against the ground truth saved with the data) and the flagged clusters'
    ablation numbers. None when no cluster of the tag class is flagged."""
    from sightline.demo.scenes import TAG_CLASS
    flagged, found = _flagged_members(audit, classes=(TAG_CLASS,))
    if not flagged:
        return None
    ids = {c["id"] for c in flagged}
    truth = {key for key, tagged in zip(scenes["keys"], scenes["tagged"]) if tagged}
    hits = len(found & truth)
    drops = [(c["verification"] or {}) for c in flagged]
    return {
        "clusters": sorted(ids), "size": len(found), "tagged": len(truth),
        "precision": hits / len(found) if found else float("nan"),
        "recall": hits / len(truth) if truth else float("nan"),
        "hot_drop": [(d.get("hot") or {}).get("mean_drop") for d in drops],
        "control_drop": [(d.get("control") or {}).get("mean_drop") for d in drops],
        "reasons": [reason for c in flagged for reason in c["reasons"]],
    }


def run_demo(out="demo-out", seed=0, *, num_train=1600, num_held_out=400, max_epochs=8,
             activations=True, report=True, verbose=True):
    """The whole demo; returns a dict with per model: train/held-out accuracy, epochs,
    the audit, and the verdict, plus the tag group, the report path and seconds."""
    check_demo_folder(out)  # before TensorFlow is even imported: a refusal costs nothing
    from sightline.demo.scenes import CLASS_NAMES, TAG_CLASS, TAG_SHARES, make_demo_data

    def say(*args):
        if verbose:
            print(*args, flush=True)

    started = time.monotonic()
    out = _claim_demo_folder(out)
    data = os.path.join(out, "data")
    say(f"[1/7] generating scenes into {data}: {num_train} training scenes where the sky "
        f"agrees with the class 95% of the time, {num_train} where it agrees 50%, "
        f"{num_train} where {TAG_SHARES['train-tagged']:.0%} of the '{CLASS_NAMES[TAG_CLASS]}' "
        f"scenes carry a corner tag, and {num_held_out} held out of each kind")
    splits = make_demo_data(data, seed=seed, num_train=num_train, num_held_out=num_held_out)
    results = _train_models(out, splits, seed, max_epochs, say)
    _masked_audits(out, data, results, say)
    groups = _mask_free_audits(out, data, results, splits["held-out-tagged"], say)
    sky = _sky_without_masks(out, data, results, splits["held-out"], say)
    for name in MODELS:
        results[name].pop("keras_model")
    activation_results = _activation_outputs(out, data, results, say) if activations else []

    expected = {"shortcut": True, "clean": False}
    flagged = {name: bool(results[name]["audit"]["flagged"]) for name in MASKED_MODELS}
    flagged_groups = {name: [c["id"] for c in results[name]["mask_free_audit"]["clusters"]
                             if c["flagged"]] for name in MASK_FREE_MODELS}
    sky_flagged = {name: sky[name] is not None for name in MASKED_MODELS}
    as_expected = (flagged == expected and groups["tagged"] is not None
                   and not flagged_groups["clean"] and sky_flagged == expected)
    lines = _verdict_lines(results, groups, flagged, flagged_groups, sky)

    report_path = None
    if report:
        report_path = _write_demo_report(out, results, splits, activation_results, lines)
        say(f"[7/7] report: {os.path.abspath(report_path)}")

    for line in lines:
        say(line)
    seconds = time.monotonic() - started
    say("the audit found both planted shortcuts: the shortcut model looks at the sky (with "
        "and without masks), the "
        "tagged model's tagged crosses at the tag, the clean model at the object" if as_expected
        else "UNEXPECTED verdict: the shortcut model should be flagged with and without "
             "masks, the tag group without masks, and the clean model by neither")
    say(f"done in {seconds:.0f} s")
    return {"models": results, "flagged": flagged, "flagged_groups": flagged_groups,
            "tag_group": groups["tagged"], "sky_groups": sky, "verdict": lines,
            "as_expected": as_expected,
            "report": report_path, "seconds": seconds}


def _claim_demo_folder(out):
    """Mark `out` as the demo's and empty the folders the demo owns there."""
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    # The marker goes in before anything else, so a demo stopped half-way can be re-run.
    with open(os.path.join(out, MARKER_FILE), "w") as handle:
        handle.write("written by `sightline demo`, which replaces "
                     f"{', '.join(OWNED_FOLDERS)} here on every run\n")
    for name in OWNED_FOLDERS:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    return out


def _train_models(out, splits, seed, max_epochs, say):
    """Train one model per training split; {name: path, keras_model, epochs, accuracies}."""
    results = {}
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    for name in MODELS:
        split = splits[TRAIN_SPLIT[name]]
        held_out = splits[HELD_OUT[name]]
        tick = time.monotonic()
        model, history = train_model(split["images"], split["labels"], seed=seed,
                                     max_epochs=max_epochs)
        path = os.path.join(out, "models", f"{name}.keras")
        model.save(path)
        results[name] = {
            "model": path, "keras_model": model, "epochs": len(history), "history": history,
            "train_accuracy": _accuracy(model, split["images"], split["labels"]),
            "held_out_accuracy": _accuracy(model, held_out["images"], held_out["labels"]),
        }
        say(f"[2/7] trained the {name} model on '{TRAIN_SPLIT[name]}' in "
            f"{time.monotonic() - tick:.0f} s ({len(history)} epochs): train accuracy "
            f"{results[name]['train_accuracy']:.3f}, '{HELD_OUT[name]}' accuracy "
            f"{results[name]['held_out_accuracy']:.3f}")
    return results


def _explain_split(model_path, name, data, split, run_out, say, target="predicted",
                   methods=("gradcam",)):
    """`sightline explain` with Grad-CAM (and any other `methods`) over one split's image
    folder, as a user runs it."""
    from sightline.demo.scenes import CLASS_NAMES
    # The folders are named like the model's classes: saying so makes them labels.
    config = make_config(tuple(methods), model=model_path,
                         data=os.path.join(data, split, "images"), out=run_out,
                         preprocess="[0,1]", map_size="native", batch_size=64,
                         class_names=CLASS_NAMES, shard_size=256, devices=1, quiet=True,
                         overwrite=True, target=target)
    summary = run_job(config)
    if summary.exit_code:
        raise RuntimeError(f"explaining with the {name} model stopped (exit "
                           f"{summary.exit_code})")
    rate = (f"no rate: {summary.rate_note}" if summary.images_per_second is None
            else f"{summary.images_per_second:.0f} images/s")
    say(f"[3/7] explained {summary.images} '{split}' images with the {name} model "
        f"({', '.join(methods)}, {rate}) into {run_out}")


def _masked_audits(out, data, results, say):
    """Explain the held-out scenes and audit them against the object masks."""
    held_masks = os.path.join(data, "held-out", "masks.h5")
    for name in MASKED_MODELS:
        run_out = os.path.join(out, "runs", name)
        _explain_split(results[name]["model"], name, data, "held-out", run_out, say,
                       methods=EVALUATED_METHODS)
        audit = run_audit(run_out, method="gradcam", masks=held_masks, regions=[SKY_REGION])
        write_audit(audit, os.path.join(run_out, AUDIT_FILE))
        results[name]["audit"] = audit
        results[name]["run"] = run_out
        say(f"[4/7] audit of the {name} model against the object masks:")
        for line in summary_lines(audit)[1:]:
            say("    " + line)
        results[name]["evaluation"] = evaluate_run(run_out, EvaluationSettings(
            steps=DEMO_EVALUATION_STEPS, sample=DEMO_EVALUATION_SAMPLE,
            sanity_sample=DEMO_EVALUATION_SAMPLE))
        say(f"    trust: {card_text(results[name]['evaluation'])}")


def _mask_free_audit_of(name, results, data, split, run_out, say, *, target="predicted"):
    """Explain one split with one model, audit it without masks (verified), write its
    audit.json and say what was flagged. Returns the audit."""
    _explain_split(results[name]["model"], name, data, split, run_out, say, target=target)
    audit = mask_free_audit(run_out)
    write_audit(audit, os.path.join(run_out, AUDIT_FILE))
    flagged = [c for c in audit["clusters"] if c["flagged"]]
    say(f"[5/7] mask-free audit of the {name} model on '{split}' ({target} classes "
        f"explained): {len(audit['clusters'])} clusters and groups, {len(flagged)} flagged")
    for entry in flagged:
        say(f"    {entry['view']}-view group {entry['id']} of class "
            f"{entry.get('class_name', entry['class'])} ({entry['size']} maps, "
            f"{entry['kind']}): " + "; ".join(entry["reasons"]))
    return audit


def _mask_free_audits(out, data, results, tagged_scenes, say):
    """Explain the tagged held-out scenes, audit them without masks; {name: tag group}."""
    groups = {}
    for name in MASK_FREE_MODELS:
        audit = _mask_free_audit_of(name, results, data, "held-out-tagged",
                                    os.path.join(out, "runs", f"{name}-on-tagged"), say)
        results[name]["mask_free_audit"] = audit
        groups[name] = tag_group(audit, tagged_scenes)
    return groups


def _sky_without_masks(out, data, results, held_out, say):
    """The tank story without masks: explain the held-out scenes' labels (which crosses
    does the model see as crosses, and why?) and audit them without masks; per masked
    model the sky group (sky_group), and the audit in results[name]["sky_audit"]."""
    groups = {}
    for name in MASKED_MODELS:
        audit = _mask_free_audit_of(name, results, data, "held-out",
                                    os.path.join(out, "runs", f"{name}-labels"), say,
                                    target="label")
        results[name]["sky_audit"] = audit
        groups[name] = sky_group(audit, held_out)
    return groups


def _flagged_members(audit, classes=None):
    """{sample key} of every flagged group's members (of `classes` when given), read from
    clusters.h5: /cluster for the where view's groups, /concept for the what view's."""
    flagged = [c for c in audit.get("clusters") or [] if c["flagged"]
               and (classes is None or c["class"] in classes)]
    table = read_clusters(audit["clusters_file"])
    members = set()
    for view, column in (("where", "cluster"), ("what", "concept")):
        ids = {c["id"] for c in flagged if c["view"] == view}
        if ids and column in table:
            members |= {key for key, cluster in zip(table["key"], table[column].tolist())
                        if cluster in ids}
    return flagged, members


def sky_group(audit, scenes):
    """How well the flagged groups find the scenes whose sky agrees with their class
    (cloudy crosses, sunny discs: what the shortcut model sees): precision, recall and
    the groups' verification numbers; None when nothing is flagged."""
    flagged, found = _flagged_members(audit)
    if not flagged:
        return None
    agrees = scenes["cloudy"] == (scenes["labels"] == 0)
    truth = {key for key, agree in zip(scenes["keys"], agrees) if agree}
    hits = len(found & truth)
    return {"groups": [c["id"] for c in flagged], "size": len(found), "agree": len(truth),
            "precision": hits / len(found) if found else float("nan"),
            "recall": hits / len(truth) if truth else float("nan"),
            "verified": all((c.get("verification") or {}).get("depends") for c in flagged),
            "reasons": [reason for c in flagged for reason in c["reasons"]]}


def _activation_outputs(out, data, results, say):
    """Activation statistics of the masked models, written beside the runs."""
    outputs = []
    for name in MASKED_MODELS:
        folder = os.path.join(out, "activations", name)
        statistics = activation_statistics(results[name]["model"],
                                           os.path.join(data, "held-out", "images"),
                                           preprocess="[0,1]", batch_size=64)
        outputs.append((f"{name} model", write_activations_output(folder, statistics)))
    say(f"[6/7] activation statistics of the shortcut and clean models in "
        f"{os.path.join(out, 'activations')}")
    return outputs


def _verdict_lines(results, groups, flagged, flagged_groups, sky):
    """The demo's verdict, one line per finding."""
    lines = []
    for name in MASKED_MODELS:
        audit = results[name]["audit"]
        shares = ", ".join(
            f"{c['name']} {c['on_object_share']['mean']:.3f} (lift {c['lift']:.2f})"
            if c["on_object_share"] else f"{c['name']} n/a (every map is zero)"
            for c in audit["classes"])
        lines.append(f"verdict: {name} model {'FLAGGED' if flagged[name] else 'not flagged'} "
                     f"by the masks; on-object share {shares}; held-out accuracy "
                     f"{results[name]['held_out_accuracy']:.3f}")
    group = groups["tagged"]
    if group is None:
        lines.append("verdict: tagged model not flagged without masks: no cluster of the "
                     "tagged class stands apart")
    else:
        drops = ", ".join(f"{_number(hot)} vs {_number(control)} for a control region"
                          for hot, control in zip(group["hot_drop"], group["control_drop"]))
        lines.append(f"verdict: tagged model FLAGGED without masks: cluster(s) "
                     f"{', '.join(map(str, group['clusters']))} ({group['size']} maps) hold the "
                     f"tagged scenes with precision {group['precision']:.2f} and recall "
                     f"{group['recall']:.2f} ({group['tagged']} tagged); hiding the hot region "
                     f"lowers the class's probability by {drops}")
    lines.append(f"verdict: clean model {'FLAGGED' if flagged_groups['clean'] else 'not flagged'}"
                 f" without masks on the tagged scenes"
                 + (f" (clusters {flagged_groups['clean']})" if flagged_groups["clean"] else
                    f" ({len(results['clean']['mask_free_audit']['clusters'])} clusters, none "
                    "apart)"))
    for name in MASKED_MODELS:
        group = sky[name]
        if group is None:
            lines.append(f"verdict: {name} model not flagged without masks: no group of a "
                         "class stands apart in what or where the model looks")
            continue
        lines.append(f"verdict: {name} model FLAGGED without masks: group(s) "
                     f"{', '.join(map(str, group['groups']))} ({group['size']} maps) hold the "
                     f"scenes whose sky agrees with their class with precision "
                     f"{group['precision']:.2f} and recall {group['recall']:.2f}"
                     f"{', verified by the model' if group['verified'] else ''}: "
                     f"{group['reasons'][0]}")
    return lines


def _write_demo_report(out, results, splits, activation_results, lines):
    from sightline.demo.scenes import CLASS_NAMES
    folder = os.path.join(out, "report")
    os.makedirs(folder, exist_ok=True)
    shown = splits["held-out"]["images"][:OVERVIEW_IMAGES]
    overviews = "".join(
        embed_png(method_overview(results[name]["model"], shown,
                                  os.path.join(folder, f"methods-{name}.png")),
                  f"{name} model: every method on {OVERVIEW_IMAGES} held-out scenes")
        for name in MASKED_MODELS)
    intro = _intro(results, CLASS_NAMES, lines) + (
        "<h2>Every method, both models</h2><p class='note'>Columns: the scene, then "
        + ", ".join(OVERVIEW_METHODS) + " (" + ", ".join(PIXEL_METHODS)
        + " clipped at their 99th percentile for display). The CAM family puts the shortcut model's evidence in the "
        "sky and the clean model's on the object; the pixel-gradient maps are noisier and "
        "also trace the object's edges, where a small change of the input still moves "
        "the score.</p>" + overviews)
    sections = [(f"{name} model", results[name]["audit"]) for name in MASKED_MODELS]
    sections += [(f"{name} model on the tagged scenes, without masks",
                  results[name]["mask_free_audit"]) for name in MASK_FREE_MODELS]
    evaluations = [(f"{name} model", results[name]["run"], results[name]["evaluation"])
                   for name in MASKED_MODELS]
    return write_report(folder, sections, activations=activation_results,
                        title="sightline demo: find the cloudy-sky detector and the tag reader",
                        intro=intro, evaluations=evaluations, inputs=ReportInputs())


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
    # None: no control region fits; NaN: no map with evidence.
    return f"{value:.3f}" if value is not None and value == value else "n/a"


def _intro(results, class_names, lines):
    from sightline.demo.scenes import TAG_CLASS, TAG_SHARES
    rows = []
    for name in MASKED_MODELS:
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
    tagged_rows = []
    for name in MASK_FREE_MODELS:
        r = results[name]
        flagged = [c["id"] for c in r["mask_free_audit"]["clusters"] if c["flagged"]]
        verdict = (f'<span class="flagged">FLAGGED: cluster(s) {", ".join(map(str, flagged))}'
                   '</span>' if flagged else '<span class="ok">not flagged</span>')
        tagged_rows.append(f"<tr><td class='text'>{name}</td>"
                           f"<td class='text'>{TRAIN_SPLIT[name]}</td><td>{r['epochs']}</td>"
                           f"<td>{r['train_accuracy']:.3f}</td>"
                           f"<td>{len(r['mask_free_audit']['clusters'])}</td>"
                           f"<td>{verdict}</td></tr>")
    tag_name = html.escape(class_names[TAG_CLASS])
    return (
        "<p>Three CNNs of the same shape and recipe learned to tell a "
        f"<b>{html.escape(class_names[0])}</b> from a <b>{html.escape(class_names[1])}</b> "
        "on the ground. In the <code>shortcut</code> model's training data the sky agreed with "
        "the class in 95% of the scenes (cloudy with crosses, sunny with discs): like the tank "
        "detector of the story, it could score 95% by looking at the weather. The "
        "<code>clean</code> model's sky said nothing. Both are judged on held-out scenes "
        "where the sky agrees only half of the time, against the objects' masks.</p>"
        "<table><tr><th class='text'>model</th><th class='text'>trained on</th><th>epochs</th>"
        "<th>train accuracy</th><th>held-out accuracy</th><th>on-object share</th>"
        "<th>sky share</th><th>audit</th></tr>" + "".join(rows) + "</table>"
        f"<p>The second story, PASCAL VOC's horses with a photographer's copyright mark: in "
        f"the <code>tagged</code> model's training data {TAG_SHARES['train-tagged']:.0%} of "
        f"the <b>{tag_name}</b> scenes carry a small magenta ring in the top-left corner, and "
        f"their {tag_name} is faint, so the tag is the easiest cue. No mask names the tag: the "
        "audit finds it without masks, by clustering each class's heatmaps on held-out "
        "scenes tagged the same way, and checks the flagged group by hiding its hot region "
        "(and, as a control, a same-size region elsewhere). The clean model, audited the same "
        "way on the same scenes, is the comparison.</p>"
        "<table><tr><th class='text'>model</th><th class='text'>trained on</th><th>epochs</th>"
        "<th>train accuracy</th><th>clusters</th><th>audit without masks</th></tr>"
        + "".join(tagged_rows) + "</table>"
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
