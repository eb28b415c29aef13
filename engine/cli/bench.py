"""`sightline bench`: images/s of every method and mode against compiled inference and
the naive eager loop (sightline.bench)."""

import json
import os
import sys

from sightline.bench.faithfulness import format_curves
from sightline.bench.report import format_table, format_targets, write_bench_report
from sightline.bench.suite import failed_guards, run_suite
from sightline.bench.zoo import BENCH_METHODS, MODES


def add_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="a .keras/.h5 file, a SavedModel directory, or a built-in model: "
                             "fashion, mobilenet_v2, resnet50 (random weights)")
    parser.add_argument("--methods", help=f"comma-separated (default: all of {', '.join(BENCH_METHODS)})")
    parser.add_argument("--modes", help=f"comma-separated (default: all of {', '.join(MODES)})")
    parser.add_argument("--batch-size", type=int, help="images per call (default per model)")
    parser.add_argument("--precision", help="float32 (skip the bf16 mode) or mixed_bfloat16 "
                                            "(default: both)")
    parser.add_argument("--devices", type=int, default=1,
                        help="split compiled modes over N devices (GPUs, or logical CPUs)")
    parser.add_argument("--size", choices=("full", "tiny"),
                        default=os.environ.get("SIGHTLINE_BENCH_SIZE", "full"),
                        help="full (default) or tiny (quick check: small inputs and batches)")
    parser.add_argument("--no-end-to-end", action="store_true",
                        help="skip the end-to-end job and peak-memory measurements")
    parser.add_argument("--no-curves", action="store_true",
                        help="skip the evaluation's faithfulness curves (sightline evaluate)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--report", help="write bench.md and bench.png into this folder")


def _names(text, default):
    return default if not text else tuple(m.strip() for m in text.split(",") if m.strip())


def run(args):
    result = run_suite(args.model, methods=_names(args.methods, BENCH_METHODS),
                       modes=_names(args.modes, MODES), batch_size=args.batch_size,
                       precision=args.precision, devices=args.devices, size=args.size,
                       with_end_to_end=not args.no_end_to_end, with_curves=not args.no_curves,
                       log=lambda text: print(text, flush=True))
    print()
    print(format_table(result))
    print()
    if result.get("curves"):
        print(format_curves(result["curves"]))
        print()
    print(format_targets(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    if args.report:
        markdown, chart = write_bench_report(result, args.report)
        print(f"\nreport: {markdown}, {chart}")
    failed = failed_guards(result)
    if failed:
        print(f"sightline bench: {len(failed)} accuracy guard(s) failed: "
              + ", ".join(f"{r['method']}/{r['mode']}" for r in failed), file=sys.stderr)
        return 1
    return 0
