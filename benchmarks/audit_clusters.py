"""How long the mask-free audit's clustering takes, and how much memory it needs, for
10,000 and 100,000 maps of one class (not a test: run it by hand).

    .venv/bin/python benchmarks/audit_clusters.py [--maps 10000 100000] [--side 7]

Each size runs in its own process so that its peak memory (the process's maximum
resident set) is its own. The maps are made a chunk at a time from a seed, as the audit
reads them from the shards, so the input itself never sits in memory whole: 70% look at
the object near the centre, 15% at the bottom-right corner, 15% at the top edge. Timed:
choosing the sample (pass 1), fitting, assigning every map and summing the statistics
(pass 2). The result must find the planted groups, or the numbers are not reported.
"""

import argparse
import resource
import subprocess
import sys
import time

import numpy as np

CHUNK = 4096


def chunk_maps(start, count, side, seed=0):
    """Maps start..start+count of the synthetic class: (maps [n,side,side], truth [n])."""
    rng = np.random.default_rng([seed, start])
    truth = rng.choice(3, count, p=[0.7, 0.15, 0.15])
    centres = np.array([[0.5, 0.5], [0.85, 0.85], [0.1, 0.5]])[truth]
    centres = centres + rng.normal(0, 0.04, centres.shape)
    grid = (np.arange(side) + 0.5) / side
    rows = np.exp(-((grid[None, :] - centres[:, :1]) ** 2) / (2 * 0.12 ** 2))  # [n, side]
    cols = np.exp(-((grid[None, :] - centres[:, 1:]) ** 2) / (2 * 0.12 ** 2))
    maps = rows[:, :, None] * cols[:, None, :] + rng.uniform(0, 0.1, (count, side, side))
    return maps, truth


def chunks(total, side):
    for start in range(0, total, CHUNK):
        count = min(CHUNK, total - start)
        maps, truth = chunk_maps(start, count, side)
        yield np.arange(start, start + count), maps, truth


def peak_megabytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_one(total, side):
    from sightline.audit.clusters import (ClassSample, ClusterStatistics, SAMPLE_SIZE,
                                          fit_clusters)

    baseline = peak_megabytes()
    started = time.perf_counter()
    sample = ClassSample(SAMPLE_SIZE, seed=0)
    for indices, maps, _ in chunks(total, side):
        sample.add(indices, np.zeros(len(indices), int), maps)
    sampled = time.perf_counter()
    model = fit_clusters(sample, seed=0)
    fitted = time.perf_counter()
    statistics = ClusterStatistics(model)
    agree = np.zeros((model.count, 3), np.int64)  # cluster x planted group
    for indices, maps, truth in chunks(total, side):
        classes = np.zeros(len(indices), int)
        cluster, _, features = model.assign(classes, maps)
        statistics.add(indices, classes, maps, cluster, features)
        np.add.at(agree, (cluster, truth), 1)
    clusters = statistics.finish()
    done = time.perf_counter()
    # Planted groups found: each is mostly inside clusters that hold mostly it.
    purity = agree.max(axis=1).sum() / agree.sum()
    flagged = [c for c in clusters if c["flagged"]]
    if purity < 0.95 or len(flagged) != 2:
        sys.exit(f"{total} maps: the clustering missed the planted groups (purity "
                 f"{purity:.3f}, {len(flagged)} flagged): timings not reported")
    print(f"{total:>8} maps {side}x{side}: sample {sampled - started:6.2f} s, "
          f"fit {fitted - sampled:6.2f} s ({model.fits[0].clusters} clusters), "
          f"assign+statistics {done - fitted:6.2f} s, total {done - started:6.2f} s "
          f"({total / (done - started):,.0f} maps/s), peak memory "
          f"{peak_megabytes():.0f} MB (after imports {baseline:.0f} MB), purity "
          f"{purity:.3f}, flagged {len(flagged)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--side", type=int, default=7, help="map side (7: a 224-px ResNet50 CAM)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.maps[0], args.side)
        return
    for total in args.maps:
        subprocess.run([sys.executable, __file__, "--one", "--maps", str(total),
                        "--side", str(args.side)], check=True)


if __name__ == "__main__":
    main()
