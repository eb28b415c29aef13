"""The mask-free audit's scores on the generated shortcuts, for the note (not a test: run
it by hand; it trains a model per case and seed, several minutes on two cores).

    .venv/bin/python -m benchmarks.discovery_scores [--cases tint mark rare ten]
        [--methods gradcam saliency] [--seeds 0 1 2] [--clean-seeds 0 1 2] [--out DIR]

For each case of tests/audit/shortcut_scenes.py (a tinted ground, a mark at a random
place, a rare corner tag on 3% of the class, a corner tag on 40% of one of ten classes),
each model seed and each method: the model's accuracy on the cued scenes with and
without their cue (it must use the cue for the row to mean anything), then `sightline
explain` + `sightline audit --verify` on 1,000 other scenes, and one line: precision
and recall of the cue class's flagged groups against the generator's truth, each
flagged group's view/kind/size, and its verification (own hot spot drop vs its control,
feature-space ablation drop vs random channels, in probability and log-odds). Then the
clean twins (2 and 10 classes, trained without any cue, audited on scenes carrying the
corner tag on visible objects): the number of flagged groups per seed and method.

A row passes at precision >= 0.9 and recall >= 0.8 (the issue's bar), marked ok/FAIL.
Runs go to --out (default: discovery-scores under the system's temporary folder) and
are overwritten.
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from tests.audit import shortcut_scenes as scenes


def _verification(entry):
    numbers = entry.get("verification") or {}
    parts = []
    region = numbers.get("hot")
    if region:
        control = numbers.get("control") or {}
        parts.append(f"region {region['mean_drop']:.3f} vs {control.get('mean_drop', float('nan')):.3f}")
    spot = numbers.get("own_spot")
    if spot:
        parts.append(f"own spot {spot['mean_drop']:.3f} vs {spot['control_drop']:.3f}")
    features = numbers.get("features")
    if features:
        parts.append(f"channels {features['mean_drop']:.3f} vs {features['control_drop']:.3f} "
                     f"(log-odds {features['log_odds_drop']:.2f} of {features['excess_log_odds']:.2f}"
                     f" vs {features['control_log_odds_drop']:.2f})")
    parts.append("depends" if numbers.get("depends") else "does not depend")
    return "; ".join(parts)


def shortcut_rows(cases, methods, seeds, out):
    for name in cases:
        for seed in seeds:
            started = time.monotonic()
            model, path = scenes.trained(name, out, seed=seed)
            data = scenes.audited_scenes(name, seed=seed)
            plain = scenes.audited_scenes(name, seed=seed, draw_cue=False)
            cued = data["cued"]
            with_cue = scenes.accuracy(model, data, cued)
            without = scenes.accuracy(model, plain, cued)
            # The class's visible objects: a model that never calls them the cue class
            # makes the whole class its shortcut, with no rest to set a group apart from.
            visible = scenes.accuracy(model, data, ~data["faint"] & (data["labels"] == 0))
            print(f"\n{name} seed {seed}: {cued.sum()} cued scenes; accuracy on them "
                  f"{with_cue:.3f} with the cue, {without:.3f} without; on the cue class's "
                  f"visible objects {visible:.3f} (trained in {time.monotonic() - started:.0f} s)",
                  flush=True)
            for method in methods:
                audit = scenes.explain_and_audit(path, data, os.path.join(out, f"{name}-{seed}-{method}"),
                                                 method=method)
                precision, recall, groups = scenes.precision_recall(audit, cued)
                passed = precision >= scenes.MIN_PRECISION and recall >= scenes.MIN_RECALL
                print(f"  {method:9s} precision {precision:.3f} recall {recall:.3f} "
                      f"{'ok' if passed else 'FAIL'}", flush=True)
                for entry in audit["clusters"]:
                    if entry["flagged"] or entry.get("downgraded"):
                        members = groups.get(entry["id"], np.array([], np.int64))
                        pure = cued[members].mean() if len(members) else float("nan")
                        state = "flagged" if entry["flagged"] else "downgraded"
                        print(f"    {state} class {entry['class']} {entry['view']}/{entry['kind']} "
                              f"size {entry['size']} cued share {pure:.2f}: "
                              f"{_verification(entry)}", flush=True)


def clean_rows(methods, seeds, out):
    print("\nclean twins (trained without a cue; audited on scenes with the corner tag on "
          "visible objects)")
    totals = {method: 0 for method in methods}
    for classes in (2, 10):
        for seed in seeds:
            data = scenes.make_scenes(1600 if classes == 2 else 2000, "none",
                                      num_classes=classes, seed=seed)
            model = scenes.train(data, seed=seed, epochs=8)
            path = os.path.join(out, f"clean{classes}-{seed}.keras")
            model.save(path)
            audited = scenes.make_scenes(scenes.AUDITED, "corner", share=0.4,
                                         num_classes=classes, seed=seed + 100)
            audited["images"][audited["faint"]] = scenes.make_scenes(
                scenes.AUDITED, "none", num_classes=classes, seed=seed + 100
            )["images"][audited["faint"]]
            for method in methods:
                audit = scenes.explain_and_audit(
                    path, audited, os.path.join(out, f"clean{classes}-{seed}-{method}"),
                    method=method)
                flagged = [c for c in audit["clusters"] if c["flagged"]]
                totals[method] += len(flagged)
                print(f"  {classes} classes seed {seed} {method:9s} false flags {len(flagged)}"
                      + "".join(f"\n    class {c['class']} {c['view']}/{c['kind']} size "
                                f"{c['size']}: {'; '.join(c['reasons'])}" for c in flagged),
                      flush=True)
    print("  total false flags: " + ", ".join(f"{m} {n}" for m, n in totals.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(scenes.CASES),
                        choices=list(scenes.CASES))
    parser.add_argument("--methods", nargs="+", default=["gradcam", "saliency"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--clean-seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "discovery-scores"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    started = time.monotonic()
    shortcut_rows(args.cases, args.methods, args.seeds, args.out)
    if args.clean_seeds:
        clean_rows(args.methods, args.clean_seeds, args.out)
    print(f"\n{time.monotonic() - started:.0f} s in all")


if __name__ == "__main__":
    main()
