"""`sightline evaluate OUT`: which of a finished run's methods to trust (faithfulness
curves, one-pass scores, controls), then (--report) draw it."""

import os

from sightline.cli.checks import check_run_folder
from sightline.evaluate.run import evaluate_run
from sightline.evaluate.settings import (DEFAULT_SANITY_SAMPLE, DEFAULT_STEPS, FILLS,
                                         EvaluationSettings)
from sightline.evaluate.summary import EVALUATION_FILE, H5_FILE, card_text
from sightline.evaluate.report_inputs import ReportInputs
from sightline.report.evaluation import write_evaluation_report
from sightline.store.layout import MANIFEST_FILE
from sightline.errors import UsageError


def add_arguments(parser):
    parser.add_argument("out", help="the output folder of a finished `sightline explain` run")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"steps per curve (default {DEFAULT_STEPS}): cells are hidden "
                             "or shown in this many equal steps")
    parser.add_argument("--fill", default="mean",
                        help=f"what hidden cells show: {', '.join(FILLS)} (each image's mean "
                             "colour, a blurred copy, or ROAD's noisy linear imputation; "
                             "default mean)")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="evaluate N images per explained class, chosen by a hash of the "
                             "sample index (default: every image)")
    parser.add_argument("--sanity-sample", type=int, default=DEFAULT_SANITY_SAMPLE,
                        metavar="N",
                        help="images per explained class for the sanity checks (cascading "
                             "randomisation of a copy of the model, random logit; default "
                             f"{DEFAULT_SANITY_SAMPLE}); 0 skips them")
    parser.add_argument("--methods", help="comma-separated stored methods to evaluate "
                                          "(default: every method the run stored)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the tie jitter, the random control, ROAD's noise and "
                             "the bootstrap (default 0)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per compiled call (default 32); the numbers do not "
                             "depend on it")
    parser.add_argument("--memory-budget-mb", type=int, default=1024,
                        help="MiB one model call over the perturbed images may hold "
                             "(default 1024)")
    parser.add_argument("--unsafe", action="store_true",
                        help="load a model holding Python code (Lambda layers); only if you "
                             "trust the file. Recorded, so a resumed evaluation needs it not again")
    parser.add_argument("--report", metavar="DIR",
                        help="also write evaluation.html and its PNGs into DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _settings(args):
    methods = None
    if args.methods is not None:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return EvaluationSettings(steps=args.steps, fill=args.fill, sample=args.sample,
                              seed=args.seed, batch_size=args.batch_size,
                              memory_budget_mb=args.memory_budget_mb, unsafe=args.unsafe,
                              methods=methods, sanity_sample=args.sanity_sample).checked()


def check(args):
    check_run_folder(args.out)
    if not os.path.isfile(os.path.join(args.out, MANIFEST_FILE)):
        raise UsageError(f"run folder {args.out!r} holds no {MANIFEST_FILE}; pass the --out "
                         "folder of a finished `sightline explain` run")
    _settings(args)
    if args.report is not None and os.path.isfile(args.report):
        raise UsageError(f"--report {args.report!r} is a file; pass a folder (it is created "
                         "when missing)")


def run(args):
    import sys


    def progress(done, total):
        if not args.quiet:
            print(f"evaluated part {done} of {total}", file=sys.stderr)

    evaluation = evaluate_run(args.out, _settings(args), progress=progress)
    for name, entry in {**evaluation["methods"], **evaluation["controls"]}.items():
        low, high = entry["srg_ci95"]
        kind = "control" if name in evaluation["controls"] else "method"
        print(f"{kind} {name}: SRG {entry['srg']:.3f} [{low:.3f}, {high:.3f}], deletion "
              f"{entry['deletion_auc']:.3f}, insertion {entry['insertion_auc']:.3f}, "
              f"average drop {entry['average_drop']:.1f}%{_sanity_words(entry['sanity'])}")
    print(f"recommendation: {card_text(evaluation)}")
    print(f"wrote {os.path.join(args.out, EVALUATION_FILE)} and {os.path.join(args.out, H5_FILE)}")
    if args.report:
        report = write_evaluation_report(args.report, args.out, evaluation,
                                         inputs=ReportInputs())
        print(f"report: {report}")
    return 0


def _sanity_words(sanity):
    if sanity is None:
        return ""
    # The step the verdict reads: the target layer's for CAM-family maps, the last for
    # gradients of the input (older files: the last).
    layer = sanity.get("verdict_layer") or sanity["spearman_by_layer"][-1]["layer"]
    final = next(step["mean"] for step in sanity["spearman_by_layer"] if step["layer"] == layer)
    verdict = "passes" if sanity["passes"] else "FAILS"
    return (f", sanity check {verdict} (Spearman {final:.2f} with every layer down to "
            f"{layer} random; unrelated maps {sanity['floor']['spearman']:.2f})")
