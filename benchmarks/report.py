"""Turn `sightline bench --json` results into a Markdown table and a PNG chart.

    python benchmarks/report.py fashion.json mobilenet_v2.json --out report/
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sightline.bench.bench import write_bench_report  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="JSON files written by sightline bench --json")
    parser.add_argument("--out", default="bench-report", help="folder for bench.md and bench.png")
    args = parser.parse_args(argv)
    results = []
    for path in args.results:
        with open(path) as handle:
            results.append(json.load(handle))
    markdown, chart = write_bench_report(results, args.out)
    print(f"{markdown}\n{chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
