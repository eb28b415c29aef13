"""`sightline activations`: per-layer activation statistics, then their figures and page."""

import os

from sightline.activations.statistics import (ACTIVATIONS_FILE, DEFAULT_SHOWN_IMAGES,
                                         activation_statistics, summary_lines)
from sightline.cli.checks import check_model_path, check_out_path, check_source_path
from sightline.errors import UsageError
from sightline.report.activations import write_activations_output


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="a .keras or .h5 model file")
    parser.add_argument("--data", required=True,
                        help="a folder of images (class subfolders), TFRecord files, a .npy "
                             "array or file.h5:/dataset")
    parser.add_argument("--out", default="activations-out",
                        help="output folder (default activations-out)")
    parser.add_argument("--layers", nargs="+", help="layer names (default: every convolution)")
    parser.add_argument("--labels", help="labels for array sources (unused by the statistics)")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument("--preprocess", default="none",
                        help="none (default), [0,1], [-1,1], caffe or torch")
    parser.add_argument("--image-size", help="H,W (default: the model's input)")
    parser.add_argument("--limit", type=int, help="look at the first N images only")
    parser.add_argument("--images", type=int, default=DEFAULT_SHOWN_IMAGES,
                        help=f"feature-map grids for the first N images (default "
                             f"{DEFAULT_SHOWN_IMAGES})")
    parser.add_argument("--unsafe", action="store_true",
                        help="allow Lambda layers holding Python code (trusted files only)")


def check(args):
    """Paths before TensorFlow loads: a typo fails at once."""
    check_model_path(args.model)
    check_source_path(args.data, "--data")
    if args.labels is not None:
        check_source_path(args.labels, "--labels")
    check_out_path(args.out)


def run(args):
    image_size = None
    if args.image_size:
        try:
            image_size = tuple(int(v) for v in args.image_size.split(","))
        except ValueError:
            raise UsageError(f"--image-size must be H,W; got {args.image_size!r}") from None
    result = activation_statistics(args.model, args.data, layers=args.layers,
                                   batch_size=args.batch_size, preprocess=args.preprocess,
                                   image_size=image_size, limit=args.limit, labels=args.labels,
                                   shown_images=args.images, unsafe=args.unsafe)
    write_activations_output(args.out, result)
    for line in summary_lines(result):
        print(line)
    print(f"wrote {os.path.join(args.out, ACTIVATIONS_FILE)} and {os.path.join(args.out, 'report.html')}")
    return 0
