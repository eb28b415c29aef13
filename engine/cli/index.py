"""`sightline index OUT`: verify every shard and build index.h5."""

import os

from sightline.cli.checks import check_run_folder
from sightline.store.layout import INDEX_FILE
from sightline.store.results import index_output


def add_arguments(parser):
    parser.add_argument("out", help="the output folder of a job")


def check(args):
    check_run_folder(args.out)


def run(args):
    records = index_output(args.out)
    print(f"sightline index: {len(records)} shard(s) verified, "
          f"{sum(r['num_samples'] for r in records)} samples in "
          f"{os.path.join(args.out, INDEX_FILE)}")
    return 0
