"""The `sightline` command line: the parser and the dispatch. Each command lives in a
module of its own here (explain.py, index.py, ...) that defines add_arguments(parser) and
run(args) -> exit code: it parses and calls the engine, nothing else.

Errors in the input end the command with one line on stderr and exit code 2.
"""

import argparse
import os
import sys

from sightline.cli import activations, audit, bench, demo, explain, index, inspect
from sightline.kernels.methods import METHODS

EXIT_BAD_INPUT = 2

# name -> (module, one-line help, description or None for the help line)
COMMANDS = {
    "explain": (explain, "explain every image of a dataset into HDF5 shards",
                "Explain every image of a dataset, streaming heatmaps into HDF5 shards with "
                "a manifest. Run the same command again to resume."),
    "index": (index, "verify every shard and build index.h5 (after a multi-worker job)", None),
    "inspect": (inspect, "summarise an output folder and its shards", None),
    "bench": (bench, "images/s of every method against compiled inference and the naive eager "
                     "loop", None),
    "audit": (audit, "audit a finished run for shortcuts: where the evidence sits, per class, "
                     "against object masks or boxes", None),
    "demo": (demo, "generate scenes with a planted shortcut, train two models, explain, audit "
                   "and report: find the cloudy-sky detector", None),
    "activations": (activations, "per-layer activation statistics over a dataset (dead and "
                                 "saturated channels) and feature-map grids", None),
}


def build_parser():
    from sightline import __version__
    parser = argparse.ArgumentParser(
        prog="sightline",
        description="Batch explanation engine for TensorFlow/Keras image classifiers: "
                    f"{', '.join(METHODS)} over whole datasets. The Python API is "
                    "`from sightline import explain`.")
    parser.add_argument("--version", action="version", version=f"sightline {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, summary, description) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=description or summary)
        module.add_arguments(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return COMMANDS[args.command][0].run(args)
    except (ValueError, TypeError) as error:
        print(f"sightline {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
