"""`sightline index OUT`: verify every shard and build index.h5."""

import os

from sightline.cli.checks import check_run_folder


def add_arguments(parser):
    parser.add_argument("out", help="the output folder of a job")


def check(args):
    check_run_folder(args.out)


def run(args):
    from sightline.store.results import index_output
    records = index_output(args.out)
    print(f"sightline index: {len(records)} shard(s) verified, "
          f"{sum(r['num_samples'] for r in records)} samples in "
          f"{os.path.join(args.out, 'index.h5')}")
    return 0
