"""How long the mask-free audit takes, and how much memory it needs, at dataset scale,
against the rate of the job that wrote the maps (not a test: run it by hand).

    .venv/bin/python benchmarks/audit_clusters.py [--maps 10000 100000] [--side 7 28]
        [--input-size 224] [--job mobilenet_v2] [--compression none]
    .venv/bin/python benchmarks/audit_clusters.py --maps 50000 500000 --side 3 \
        --input-size 28 --job fashion
    .venv/bin/python benchmarks/audit_clusters.py --core [--maps ...] [--side 7]

Default (the real `sightline audit` path): for each size and map side, one child process
writes a synthetic complete run of N maps per class for 2 classes through the store's own
shard writer, index and manifest (as tests/audit/audit_runs.py does, but a chunk at a
time, so the input never sits in memory whole), for images of --input-size; a second
child times `run_audit(out)` (no masks, no --verify) on it, so the audit's peak memory
(the process's maximum resident set) is its own and not the writing's. In each class
70% of the maps look at the object near the centre, 15% at the bottom-right corner, 15%
at the top edge; the planted corner group must be flagged in both classes, or the
numbers are marked as not counting. Each map also gets its channel relevance
(/relevance, as the job's Grad-CAM runs store it: as many channels as the --job's run
stores, or --channels), each planted group lighting channels of its own, so that the
audit's "what" view is fitted and every map assigned in it too. The run folder is deleted after each size. With two
or more sizes the audit's steady rate is also given: the difference of maps over the
difference of seconds, which cancels what does not grow with N (imports, the fit).

--job MODEL (fashion: the course's CNN at 28x28, 3x3 maps; mobilenet_v2 or small_cnn at
--input-size): first, in a child of its own, `sightline explain`'s job (run_job, Grad-CAM,
every default: batch, shard size, compression "auto") on random 8-bit images of that
model's input from a .npy, at two sizes; its steady rate is the same difference quotient,
and each audit line then says its rate over the job's, measured in the same run.

--core: the clustering core alone (sample, fit, assign) on one class of maps made in
memory, the same planted groups; no store, no shards.

Earlier figures (benchmarks/README.md has the current ones). Before the audit measured its
maps as stored (every map resized to 224x224 first, masks or not), on two shared cores of
an Intel Xeon, 7x7 maps, gzip shards: 10,000 maps per class audited in 53 s (376 maps/s,
peak RSS 674 MB), 100,000 per class in 407 s (491 maps/s, 702 MB); 28x28 maps: 53 s and
351 s (680 and 706 MB); the clustering core alone, 100,000 maps of one class: 14 s, 248
MB. The issue that followed measured a 1,000,000-map Fashion run (28x28 images) explained
in 58 s and audited in 543 s (1,840 maps/s, peak RSS 637 MB).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

CHUNK = 4096
CLASSES = ("object", "shortcut")  # names only: both classes hold the same planted groups
SHARD_SIZE = 10_000
CORNER = 0.7  # a cluster whose hot centre lies past this fraction on both axes is the corner


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


def chunk_relevance(start, truth, channels, seed=0):
    """Each map's channel relevance [n, channels] (float64): every planted group lights a
    few channels of its own beside those the whole class shares, with noise, as the job's
    Grad-CAM runs store it (/relevance), so the audit's "what" view has work to do."""
    rng = np.random.default_rng([seed, start, 1])
    base = np.full((3, channels), 0.02)
    base[:, :channels // 8] = 1.0  # what the whole class uses
    for group in range(3):
        own = channels // 8 + group * max(1, channels // 16)
        base[group, own:own + max(1, channels // 16)] += 0.5
    relevance = base[truth] * rng.uniform(0.5, 1.5, (len(truth), 1))
    return relevance + rng.normal(0, 0.05, relevance.shape)


def chunks(total, side):
    for start in range(0, total, CHUNK):
        count = min(CHUNK, total - start)
        maps, truth = chunk_maps(start, count, side)
        yield np.arange(start, start + count), maps, truth


def peak_megabytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_core(total, side):
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
          f"fit {fitted - sampled:6.2f} s ({model.fits[0].cluster_count} clusters), "
          f"assign+statistics {done - fitted:6.2f} s, total {done - started:6.2f} s "
          f"({total / (done - started):,.0f} maps/s), peak memory "
          f"{peak_megabytes():.0f} MB (after imports {baseline:.0f} MB), purity "
          f"{purity:.3f}, flagged {len(flagged)}")


def write_synthetic_run(out, per_class, side, compression, input_size=224, channels=0):
    """A complete output folder of 2 * per_class maps [side,side] of images input_size
    pixels square, the classes interleaved (row i is class i % 2), written a chunk at a
    time through the store's writer; with `channels`, each map's channel relevance too."""
    from sightline.store.manifest import write_manifest
    from sightline.store.shards import ShardWriter, build_index

    total = 2 * per_class
    method = "gradcam"
    ranges = [(start, min(total, start + SHARD_SIZE)) for start in range(0, total, SHARD_SIZE)]
    layout = {"maps": {method: (side, side)}, "key_length": 32,
              "attributes": {"input_size": [input_size, input_size], "methods": f'["{method}"]',
                             "map_size": "native"}}
    if channels:
        layout["relevance_channels"] = channels
        layout["attributes"]["relevance"] = "gradient_x_activation"
    run = {"model_sha256": "0" * 64, "layer": "last_conv", "logits_layer": "classifier",
           "methods": [method], "parameters": {method: {}}, "normalize": True,
           "map_size": "native", "precision": "float32", "target": "predicted",
           "source": "npy /nowhere/images.npy", "num_samples": total,
           "image_shape": [input_size, input_size, 3], "preprocess": "none",
           "shard_size": SHARD_SIZE}
    provenance = {"model": "/nowhere/model.keras", "batch_size": 32, "replicas": 1,
                  "software": {"sightline": "benchmark"}}
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    writer = ShardWriter(out, len(ranges), layout, compression=compression)
    for shard, (start, stop) in enumerate(ranges):
        writer.begin(shard, start, stop)
        for first in range(start, stop, CHUNK):
            last = min(stop, first + CHUNK)
            maps, truth = chunk_maps(first, last - first, side)
            indices = np.arange(first, last)
            labels = (indices % 2).astype(np.int32)
            top = maps.reshape(len(maps), -1).max(axis=1)  # [n] the stored scale
            writer.append({
                f"heatmaps/{method}": (maps / top[:, None, None]).astype(np.float16),
                f"heatmaps/{method}_scale": top.astype(np.float32),
                "sample/index": indices.astype(np.int64),
                "sample/key": np.array([f"{CLASSES[c]}/{i // 2:06d}.png".encode()
                                        for i, c in zip(indices, labels)]),
                "sample/label": labels,
                "pred/target": labels,
                "pred/class": labels,
                "pred/score": np.full(len(indices), 0.9, np.float32),
                **(stored_relevance(chunk_relevance(first, truth, channels)) if channels
                   else {}),
            })
        writer.finish([])
    writer.close()
    build_index(out, len(ranges))
    write_manifest(out, run, provenance, ranges)


def stored_relevance(relevance):
    """The shards' /relevance columns: each row scaled to max |r| = 1 in float16, and the
    float32 factor (as the job's step stores them)."""
    scale = np.abs(relevance).max(axis=1)
    return {"relevance/channels": (relevance / scale[:, None]).astype(np.float16),
            "relevance/channels_scale": scale.astype(np.float32)}


def child_write(out, per_class, side, compression, input_size, channels):
    started = time.perf_counter()
    write_synthetic_run(out, per_class, side, compression, input_size, channels)
    seconds = time.perf_counter() - started
    size = sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(out) for name in names)
    print(json.dumps({"seconds": seconds, "bytes": size}))


def child_audit(out):
    from sightline.audit.audit import run_audit

    baseline = peak_megabytes()
    started = time.perf_counter()
    audit = run_audit(out)
    seconds = time.perf_counter() - started
    flagged = [c for c in audit["clusters"] if c["flagged"]]
    corner_classes = sorted({c["class"] for c in flagged if c["hot_centre"] is not None
                             and min(c["hot_centre"]) > CORNER})
    print(json.dumps({"seconds": seconds, "peak_mb": peak_megabytes(), "baseline_mb": baseline,
                      "clusters": len(audit["clusters"]), "flagged": len(flagged),
                      "corner_flagged_in": corner_classes,
                      "flagged_centres": [[round(v, 2) for v in c["hot_centre"] or []]
                                          for c in flagged]}))


# The job's model per --job: its builder's input and batch (the zoo's presets).
JOB_MODELS = {"fashion": 28, "mobilenet_v2": 224, "small_cnn": 224}


def child_job(model_name, input_size, counts, root):
    """The job's steady rate: run_job (Grad-CAM, every default) on counts[0] and counts[1]
    random 8-bit images from a .npy; prints JSON with the rate and the stored map size."""
    import keras

    from sightline.bench.end_to_end import job_config
    from sightline.bench.zoo import PRESETS, build_model, small_cnn
    from sightline.jobs.runner import run_job
    from sightline.store.results import open_results

    if model_name == "small_cnn":  # its preset is 128x128: built here at the audit's size
        keras.utils.set_random_seed(0)
        model, batch = small_cnn(keras, (input_size, input_size, 3), 10), 64
    else:
        model, batch = build_model(model_name), PRESETS["full"][model_name]["batch"]
    shape = tuple(int(v) for v in model.input_shape[1:])
    workdir = tempfile.mkdtemp(prefix="audit-job-", dir=root)
    try:
        model_path = os.path.join(workdir, "model.keras")
        model.save(model_path)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (max(counts), *shape), dtype=np.uint8)
        seconds = {}
        for count in (counts[0], *counts):  # the first: warm-up (imports, traces)
            data = os.path.join(workdir, f"images-{count}.npy")
            np.save(data, images[:count])
            out = os.path.join(workdir, f"out-{count}")
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            summary = run_job(job_config(model_path, data, out, ("gradcam",), batch))
            seconds[count] = time.perf_counter() - started
            if summary.images != count:
                raise RuntimeError(f"the job explained {summary.images} of {count} images")
        with open_results(out) as results:
            stored = list(results.map_shape("gradcam"))
            channels = results.relevance_channels or 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    small, large = counts
    print(json.dumps({"model": model_name, "input": list(shape), "batch": batch,
                      "stored": stored, "channels": channels, "seconds": {str(k): v for k, v in seconds.items()},
                      "rate": (large - small) / (seconds[large] - seconds[small]),
                      "total_rate": large / seconds[large]}))


def run_child(*arguments):
    """Run this script with `arguments` in a fresh process; its last line parsed as JSON."""
    done = subprocess.run([sys.executable, __file__, *arguments], check=True,
                          stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_audit_size(per_class, side, compression, root, input_size, job_rate, channels):
    out = tempfile.mkdtemp(prefix=f"audit-{per_class}-{side}-", dir=root)
    try:
        written = run_child("--write", out, "--maps", str(per_class), "--side", str(side),
                            "--compression", compression, "--input-size", str(input_size),
                            "--channels", str(channels))
        audited = run_child("--audit", out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    total = 2 * per_class
    counts = audited["corner_flagged_in"] == [0, 1]
    rate = total / audited["seconds"]
    print(f"{per_class:>8} maps/class x2 {side}x{side} of {input_size}x{input_size} images "
          f"({compression}, {channels} relevance channels, {written['bytes'] / 2**20:.0f} MiB on disk): write "
          f"{written['seconds']:6.1f} s; audit {audited['seconds']:6.1f} s ({rate:,.0f} maps/s"
          + (f", {rate / job_rate:.2f} x the job's rate" if job_rate else "")
          + f"), peak RSS {audited['peak_mb']:.0f} MB (after imports {audited['baseline_mb']:.0f} "
          f"MB), {audited['clusters']} clusters, {audited['flagged']} flagged, hot centres "
          f"{audited['flagged_centres']}"
          + ("" if counts else " -- the planted corner group was NOT flagged in both classes: "
                               "these numbers do not count"), flush=True)
    return audited["peak_mb"], audited["seconds"], counts


def run_job_rate(model_name, input_size, counts, root):
    job = run_child("--run-job", model_name, "--input-size", str(input_size),
                    "--maps", *map(str, counts), *(["--root", root] if root else []))
    print(f"job: {model_name} {'x'.join(map(str, job['input']))}, Grad-CAM, batch "
          f"{job['batch']}, maps stored at {'x'.join(map(str, job['stored']))}: "
          + ", ".join(f"{n} images in {t:.1f} s" for n, t in job["seconds"].items())
          + f" (the first: warm-up); steady {job['rate']:,.0f} maps/s, overall "
          f"{job['total_rate']:,.0f} maps/s; {job['channels']} relevance channels per map",
          flush=True)
    return job["rate"], job["channels"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, nargs="+", default=[10_000, 100_000],
                        help="maps per class (with --core: maps of the one class)")
    parser.add_argument("--side", type=int, nargs="+", default=[7],
                        help="map sides (7: a 224-px ResNet50 CAM; 3: the 28-px Fashion CNN's)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="the images' side (default: the --job model's, else 224)")
    parser.add_argument("--compression", default="gzip", choices=["gzip", "lzf", "none"],
                        help="the shards' compression (gzip; none is what the job writes "
                             "on a CPU by default)")
    parser.add_argument("--job", choices=sorted(JOB_MODELS),
                        help="measure the job's rate on this model first (see above)")
    parser.add_argument("--job-images", type=int, nargs=2, default=None, metavar=("N", "M"),
                        help="the job's two sizes (default: 20,480 and 102,400 images for "
                             "fashion, 64 and 320 at 224 pixels)")
    parser.add_argument("--channels", type=int, default=None,
                        help="relevance channels stored per map (default: as many as the "
                             "--job's run stores, else none)")
    parser.add_argument("--core", action="store_true", help="time the clustering core only")
    parser.add_argument("--root", default=None, help="where the run folders go (default: temp)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--audit", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--run-job", choices=sorted(JOB_MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.job or args.run_job
    input_size = args.input_size or (JOB_MODELS[model] if model else 224)
    if args.one:
        run_core(args.maps[0], args.side[0])
    elif args.write:
        child_write(args.write, args.maps[0], args.side[0], args.compression, input_size,
                    args.channels or 0)
    elif args.audit:
        child_audit(args.audit)
    elif args.run_job:
        child_job(args.run_job, input_size, args.maps, args.root)
    elif args.core:
        for side in args.side:
            for total in args.maps:
                subprocess.run([sys.executable, __file__, "--one", "--maps", str(total),
                                "--side", str(side)], check=True)
    else:
        job_rate, channels = None, 0
        if args.job:
            counts = args.job_images or ((20_480, 102_400) if input_size <= 64 else (64, 320))
            job_rate, channels = run_job_rate(args.job, input_size, counts, args.root)
        channels = channels if args.channels is None else args.channels
        for side in args.side:
            runs = {per_class: run_audit_size(per_class, side, args.compression, args.root,
                                              input_size, job_rate, channels)
                    for per_class in args.maps}
            smallest, largest = min(runs), max(runs)
            if largest != smallest:
                steady = 2 * (largest - smallest) / (runs[largest][1] - runs[smallest][1])
                print(f"{side}x{side}: peak RSS at {largest:,} / at {smallest:,} maps per class "
                      f"= {runs[largest][0] / runs[smallest][0]:.2f}; steady audit rate "
                      f"{steady:,.0f} maps/s"
                      + (f", {steady / job_rate:.2f} x the job's steady rate" if job_rate else ""),
                      flush=True)


if __name__ == "__main__":
    main()
