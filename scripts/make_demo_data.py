#!/usr/bin/env python3
"""Write the demo's scenes with a planted shortcut (see engine/demo_data.py):

    .venv/bin/python scripts/make_demo_data.py --out demo-data [--seed 0] [--num-train 1600]
        [--num-held-out 400]

gives demo-data/{train,train-clean,held-out}/images/<class>/NNNNN.png (for
`sightline explain --data ...`) and demo-data/<split>/masks.h5 (for `sightline audit
--masks ...`). In `train` the sky agrees with the class 95% of the time, in the other
two 50%.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sightline.demo.scenes import SPLITS, make_demo_data  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-data", help="output folder (default demo-data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=1600, help="scenes per training split")
    parser.add_argument("--num-held-out", type=int, default=400)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    splits = make_demo_data(args.out, seed=args.seed, num_train=args.num_train,
                            num_held_out=args.num_held_out)
    for name, _, agreement in SPLITS:
        print(f"{os.path.join(args.out, name)}: {len(splits[name]['keys'])} scenes, sky agrees "
              f"with the class {agreement:.0%} of the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
