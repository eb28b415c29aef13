"""`sightline inspect OUT`: what ran, on what, and the state of every shard."""

from sightline.cli.checks import check_run_folder
from sightline.store.results import describe_output


def add_arguments(parser):
    parser.add_argument("out", help="the output folder of a job")


def check(args):
    check_run_folder(args.out)


def run(args):
    print(describe_output(args.out))
    return 0
