"""The `sightline` command line: the parser and the dispatch. Each command lives in a
module of its own here (explain.py, index.py, ...) that defines add_arguments(parser) and
run(args) -> exit code: it parses and calls the engine, nothing else. A module may also
define check(args): the checks of paths and options that need no TensorFlow, run before
anything imports it, so that a typo fails at once.

Every failure is ONE line on stderr. Bad input is a UsageError, raised where the input is
checked: exit 2. A full disk exits 1. Anything else, a ValueError or OSError included, is
sightline's own bug: exit 1, with the traceback written to a crash report file whose
path the line gives, so a bug never reads as the user's mistake. TensorFlow's start-up noise and Python warnings
are kept off the terminal unless --verbose.
"""

import argparse
import os
import signal
import sys

from sightline.audit.audit import EXIT_FLAGGED
from sightline.cli import activations, audit, bench, demo, evaluate, explain, index, inspect
from sightline.cli.quiet import native_log_captured, python_chatter_captured, write_crash_report
from sightline.errors import UsageError
from sightline.jobs.signals import EXIT_CODES as SIGNAL_EXIT_CODES
from sightline.kernels.methods import METHODS
from sightline.store.files import OutOfSpace

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = SIGNAL_EXIT_CODES[signal.SIGINT]  # 128 + SIGINT, as shells report it
# Every exit code of the command and what it means: README.md's table under "### Errors"
# says the same (tests/cli/test_readme_errors.py compares them).
EXIT_CODES = {
    EXIT_DONE: "done",
    EXIT_FAILED: "failed, not for the input: a full disk, a crash (its line names the crash "
                 "report holding the traceback), a failed accuracy guard of `bench`, or a "
                 "demo whose audit did not find what was planted",
    EXIT_BAD_INPUT: "bad input (a path, an option, a model, data, `--out`): one line says "
                    "what is wrong, what was given and how to fix it; nothing was done",
    EXIT_FLAGGED: "`audit --fail-on-flag`: a class or cluster was flagged",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); `explain` keeps its finished shards: run the "
                      "same command again to resume",
    SIGNAL_EXIT_CODES[signal.SIGTERM]: "terminated (SIGTERM, as a scheduler ends a job); "
                                       "`explain` keeps its finished shards as for Ctrl-C",
}

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
    "evaluate": (evaluate, "which method to trust: deletion and insertion curves (SRG), "
                           "one-pass scores and controls for a finished run's maps", None),
    "demo": (demo, "generate scenes with a planted shortcut, train two models, explain, audit "
                   "and report: find the cloudy-sky detector", None),
    "activations": (activations, "per-layer activation statistics over a dataset (dead and "
                                 "saturated channels) and feature-map grids", None),
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the usage block before its error; here the error is one line that
    points at --help instead."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} "
                                  f"(see {self.prog} --help)\n")


def build_parser():
    from sightline import __version__
    parser = _OneLineParser(
        prog="sightline",
        description="Batch explanation engine for TensorFlow/Keras image classifiers: "
                    f"{', '.join(METHODS)} over whole datasets. The Python API is "
                    "`from sightline import explain`.")
    parser.add_argument("--version", action="version", version=f"sightline {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own log lines and Python warnings")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, summary, description) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=description or summary)
        module.add_arguments(sub)
        # Also after the command's name; SUPPRESS keeps the global default when absent.
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="show TensorFlow's own log lines and Python warnings")
    return parser


def one_line(text):
    """Error text on one line: library messages (h5py, TensorFlow) carry newlines."""
    return " ".join(str(text).split())


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_DONE
    module = COMMANDS[args.command][0]
    name = f"sightline {args.command}"
    if not args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_log_captured(enabled=not args.verbose) as native_log, \
            python_chatter_captured(enabled=not args.verbose):
        try:
            if hasattr(module, "check"):
                module.check(args)
            return module.run(args)
        except OutOfSpace as error:
            print(f"{name}: error: {one_line(error)}", file=sys.stderr)
            if argv is None:
                _end_now(EXIT_FAILED)
            return EXIT_FAILED
        except UsageError as error:
            print(f"{name}: error: {one_line(error)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            # `explain` handles SIGINT itself (finished shards kept, exit 130); elsewhere
            # Ctrl-C lands here: one line, not the traceback of wherever it struck.
            print(f"{name}: interrupted (Ctrl-C) before it finished; run the same "
                  "command again", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as error:  # noqa: BLE001 - one line and a report, never a traceback
            report = write_crash_report(args.command, error, native_log.text())
            print(f"{name}: unexpected error ({type(error).__name__}: "
                  f"{one_line(error)[:200]}); the full traceback is in {report}",
                  file=sys.stderr)
            return EXIT_FAILED


def _end_now(code):
    """End the program without its exit handlers: after a write failed for want of space,
    the HDF5 library can crash (SIGSEGV) closing its files at exit, which would turn exit
    code 1 into 139 and a core dump. Everything worth keeping is already on disk."""
    for stream in (sys.stdout, sys.stderr, sys.__stderr__):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
