"""`sightline demo`: the planted-shortcut demonstration, end to end."""

from sightline.demo.demo import run_demo
from sightline.errors import UsageError


def add_arguments(parser):
    parser.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--num-train", type=int, default=1600,
                        help="scenes per training split (default 1600)")
    parser.add_argument("--num-held-out", type=int, default=400,
                        help="held-out scenes (default 400)")
    parser.add_argument("--max-epochs", type=int, default=8, help="default 8")


def run(args):
    for name in ("num_train", "num_held_out", "max_epochs"):
        if getattr(args, name) < 2:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 2")
    result = run_demo(args.out, args.seed, num_train=args.num_train,
                      num_held_out=args.num_held_out, max_epochs=args.max_epochs)
    return 0 if result["as_expected"] else 1
