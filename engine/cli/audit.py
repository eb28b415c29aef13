"""`sightline audit OUT`: audit a complete run for shortcuts, then (--report) draw it."""

import os

from sightline.activations.statistics import read_activations
from sightline.audit.audit import (DEFAULT_DIFFUSE, DEFAULT_THRESHOLD, DEFAULT_WORST, EXIT_FLAGGED,
                                   run_audit)
from sightline.audit.clusters import DEFAULT_RULE, SAMPLE_SIZE
from sightline.audit.shortcuts import VERIFY_THRESHOLDS, ShortcutOptions
from sightline.audit.virelay import PROJECT_FILE
from sightline.audit.summary import AUDIT_FILE, summary_lines, write_audit
from sightline.cli.checks import check_run_folder
from sightline.errors import UsageError
from sightline.evaluate.summary import EVALUATION_FILE, card_text, read_evaluation
from sightline.evaluate.report_inputs import ReportInputs
from sightline.report.page import write_report


def add_arguments(parser):
    parser.add_argument("out", help="the output folder of a finished `sightline explain` run")
    parser.add_argument("--masks", help="object masks: file.h5 with /keys and /masks, or a folder "
                                        "of PNGs mirroring the image keys")
    parser.add_argument("--boxes", help="object boxes: CSV with header key,y0,x0,y1,x1 (pixels)")
    # One region per flag: a flag taking several values would swallow the run folder
    # written after it (`--regions sky=0:0.3,0:1 OUT`).
    parser.add_argument("--regions", action="append", default=None, metavar="NAME=y0:y1,x0:x1",
                        help="a named region to report the evidence share of (pixels, or "
                             "fractions of the side: sky=0:0.3,0:1); repeat the flag for "
                             "several regions")
    parser.add_argument("--method", help="which stored maps to audit (default gradcam, else the "
                                         "first method of the run)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="flag a class when its lift (on-object share / object area "
                             f"fraction) is below this (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--diffuse", type=float, default=DEFAULT_DIFFUSE,
                        help="a class whose maps cover at least this fraction of the image "
                             "(median coverage) is DIFFUSE, not flagged (default "
                             f"{DEFAULT_DIFFUSE})")
    parser.add_argument("--flag-diffuse", action="store_true",
                        help="flag diffuse classes too (whole-image cues give flat maps)")
    parser.add_argument("--worst", type=int, default=DEFAULT_WORST,
                        help=f"how many of the most off-object images to rank per class "
                             f"(default {DEFAULT_WORST})")
    parser.add_argument("--json", help=f"where to write the audit (default OUT/{AUDIT_FILE})")
    parser.add_argument("--report", help="also write report.html and its PNGs into this folder")
    parser.add_argument("--activations", help="include the output folder of "
                                              "`sightline activations` in the report")
    parser.add_argument("--fail-on-flag", action="store_true",
                        help=f"exit with {EXIT_FLAGGED} when any class or cluster is flagged, "
                             "or the predictions collapsed onto one class")
    shortcuts = parser.add_argument_group(
        "finding shortcuts without masks", "the maps of each explained class are clustered; "
        "a group is flagged when it is a separate group, matters, and its evidence sits "
        "apart from the rest of its class (OUT/clusters.h5, \"clusters\" in audit.json)")
    shortcuts.add_argument("--clusters", type=int, metavar="K",
                           help="clusters per explained class (default: the eigengap chooses)")
    shortcuts.add_argument("--cluster-min-share", type=float, metavar="FRACTION",
                           help="flag only groups holding at least this share of their class "
                                f"(default {DEFAULT_RULE.min_share})")
    shortcuts.add_argument("--cluster-min-size", type=int, metavar="MAPS",
                           help="... and at least this many maps (default "
                                f"{DEFAULT_RULE.min_size})")
    shortcuts.add_argument("--cluster-min-distance", type=float, metavar="FRACTION",
                           help="... whose evidence sits at least this far (fraction of the "
                                "image side) from where the rest of the class looks (default "
                                f"{DEFAULT_RULE.min_distance})")
    shortcuts.add_argument("--cluster-threshold", action="append", default=None,
                           metavar="NAME=VALUE",
                           help="any threshold of the flag rules, repeatable: "
                                + ", ".join(f"{name} ({value})"
                                            for name, value in DEFAULT_RULE.as_dict().items()))
    shortcuts.add_argument("--cluster-sample-size", type=int, default=SAMPLE_SIZE, metavar="MAPS",
                           help="fit the clusters on this many maps per class, chosen by a hash "
                                "of the sample index, and assign the rest (default "
                                f"{SAMPLE_SIZE}; memory and time grow with its square)")
    shortcuts.add_argument("--verify", action="store_true",
                           help="check every flagged group by hiding its region on its images: "
                                "the run's model and data are read again from its manifest; "
                                "a flag stays only when the model depends on the region")
    shortcuts.add_argument("--verify-min-drop", type=float, metavar="PROBABILITY",
                           help="the model depends on a region when hiding it lowers the "
                                "explained class's probability by at least this much (default "
                                f"{VERIFY_THRESHOLDS['min_drop']}) and by "
                                f"{VERIFY_THRESHOLDS['min_ratio']}x a control region's")
    shortcuts.add_argument("--unsafe", action="store_true",
                           help="--verify, --export-virelay: load a model holding Python code "
                                "(Lambda layers); "
                                "only if you trust the file, as for `sightline explain --unsafe`")
    shortcuts.add_argument("--export-virelay", metavar="DIR",
                           help="also write a ViRelAy project (images, heatmaps, clusters) "
                                "into DIR; the images are read again from the run's source "
                                "and the class probabilities from its model")


def cluster_thresholds(items):
    """--cluster-threshold NAME=VALUE items -> {name: float}; one line for a bad item."""
    thresholds, known = {}, DEFAULT_RULE.as_dict()
    for item in items or ():
        name, _, value = item.partition("=")
        if name not in known:
            raise UsageError(f"--cluster-threshold {item!r}: unknown threshold {name!r}; known: "
                             f"{', '.join(known)}")
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise UsageError(f"--cluster-threshold {item!r}: the value must be a number, as in "
                             f"{name}={known[name]}") from None
    return thresholds


def _evaluation(out):
    """The run's evaluation (`sightline evaluate`), when one was written."""
    path = os.path.join(out, EVALUATION_FILE)
    return read_evaluation(path) if os.path.exists(path) else None


def check(args):
    check_run_folder(args.out)
    cluster_thresholds(args.cluster_threshold)


def run(args):
    audit = run_audit(args.out, method=args.method, masks=args.masks, boxes=args.boxes,
                      regions=args.regions or (), threshold=args.threshold, diffuse=args.diffuse,
                      flag_diffuse=args.flag_diffuse, worst=args.worst,
                      shortcuts=ShortcutOptions(
                          cluster_count=args.clusters,
                          thresholds={**cluster_thresholds(args.cluster_threshold),
                                      "min_share": args.cluster_min_share,
                                      "min_size": args.cluster_min_size,
                                      "min_distance": args.cluster_min_distance},
                          verify=args.verify, verify_thresholds={"min_drop": args.verify_min_drop},
                          export_virelay=args.export_virelay, unsafe=args.unsafe,
                          sample_size=args.cluster_sample_size))
    path = write_audit(audit, args.json or os.path.join(args.out, AUDIT_FILE))
    for line in summary_lines(audit):
        print(line)
    evaluation = _evaluation(args.out)
    if evaluation is not None:
        print(f"trust: {card_text(evaluation)}")
    print(f"wrote {path}")
    if args.report:
        activations = None
        if args.activations:
            activations = [("model", read_activations(args.activations))]
        report = write_report(args.report, [("run", audit)], activations=activations,
                              evaluations=evaluation and [("run", args.out, evaluation)],
                              inputs=ReportInputs())
        print(f"report: {report}")
    print(f"wrote {audit['clusters_file']}")
    if args.export_virelay:
        print(f"ViRelAy project: {os.path.join(args.export_virelay, PROJECT_FILE)}")
    flagged = audit["flagged"] or audit["flagged_clusters"] or audit.get("collapsed")
    return EXIT_FLAGGED if (args.fail_on_flag and flagged) else 0

