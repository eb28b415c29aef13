"""The `sightline` command line: it only parses arguments and calls the engine."""

import argparse
import sys


def build_parser():
    from engine import __version__
    parser = argparse.ArgumentParser(
        prog="sightline",
        description="Batch explanation engine for TensorFlow/Keras image classifiers: "
                    "CAM, Grad-CAM, Grad-CAM++, saliency, SmoothGrad and Integrated Gradients. "
                    "The Python API is `from engine import explain`.")
    parser.add_argument("--version", action="version", version=f"sightline {__version__}")
    return parser


def main(argv=None):
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
