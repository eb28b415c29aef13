"""The end-to-end job (decode -> explain -> HDF5) against explain() on arrays, and its
peak memory at N and 4N images, each in a fresh process (sightline.bench.memory_child).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from sightline.config import make_config
from sightline.jobs.runner import run_job
from sightline.store.layout import heatmap
from sightline.store.results import open_results
from sightline.errors import UsageError


# Rounds of the end-to-end measurement; the median round is reported.
END_TO_END_ROUNDS = 3
# The job's stored maps against explain()'s: float16 storage of maps in [0, 1] (half a
# step near 1 is 2**-11) plus the different batch shapes of the two runs.
STORED_MAPS_ATOL = 2e-3


def _write_image_folder(folder, images, start=0, format="png"):
    """images[N,H,W,C] in 0..1 as 8-bit files of `format` ("png" or "jpeg")."""
    import tensorflow as tf
    encode = tf.io.encode_jpeg if format == "jpeg" else tf.io.encode_png
    os.makedirs(os.path.join(folder, "class0"), exist_ok=True)
    for i, image in enumerate(images):
        data = encode(tf.constant(np.round(image * 255).astype(np.uint8)))
        tf.io.write_file(os.path.join(folder, "class0", f"{start + i:06d}.{format}"), data)


def _decoded_folder(folder):
    """The 8-bit images of a folder written by _write_image_folder, as float32 in 0..1,
    decoded by TensorFlow as the job decodes them (JPEG is lossy)."""
    import tensorflow as tf
    files = sorted(os.listdir(os.path.join(folder, "class0")))
    pixels = [tf.io.decode_image(tf.io.read_file(os.path.join(folder, "class0", name)),
                                 expand_animations=False).numpy() for name in files]
    return np.stack(pixels).astype(np.float32) / np.float32(255)


def job_config(model_path, data, out, methods, batch, options=None):
    """The job as a user runs it: default shard size and compression."""
    return make_config(tuple(methods), model=model_path, data=data, out=out,
                       batch_size=batch, preprocess="[0,1]", devices=1,
                       map_size="native", quiet=True, overwrite=True, **(options or {}))


def end_to_end(context, methods=("gradcam", "saliency"), batches=None, workdir=None, log=None,
               source="png", compression="auto"):
    """run_job (decode -> explain -> HDF5) against explain() on the same images as arrays.

    source: "png", a folder of PNG files the job decodes; "jpeg", the same as JPEG files
    (lossy: explain() gets the decoded JPEGs); or "npy", the arrays as one .npy file the
    job slices (no decoding: the job's own overhead alone).

    Steady state without start-up: after a warm-up job, the job runs on N and on M
    images; its rate is (M - N) / (t_M - t_N), which cancels loading, tracing and
    indexing. The kernel alone is explain() on the M decoded images, timed in the same
    round as the two jobs; the median of END_TO_END_ROUNDS rounds is reported.
    """
    if source not in ("png", "jpeg", "npy"):
        raise UsageError(f"end-to-end source must be png, jpeg or npy; got {source!r}")
    if batches is None:
        # Enough extra batches for about 20 s of kernel time at the inference ceiling
        # (between 4 batches' and 16,384 images' worth), so the difference of the two
        # jobs is well above their start-up noise: at 4,096 images a fast model's
        # difference was under a second and the ratio swung from 0.35 to 1.1.
        ceiling = getattr(context, "ceiling", None) or 100.0
        extra = int(min(16384, max(4 * context.batch, 20 * ceiling)) // context.batch)
        batches = (2, 6) if context.size == "tiny" else (2, 2 + max(4, extra))
    import tensorflow as tf

    from sightline import explain
    say = log or (lambda *_: None)
    batch = context.batch
    small, large = batches[0] * batch, batches[1] * batch
    rng = np.random.default_rng(5)
    images = rng.uniform(0, 1, (large, *context.image_shape)).astype(np.float32)
    images = np.round(images * 255) / 255  # exactly what the PNG decoder will give back
    workdir = workdir or tempfile.mkdtemp(prefix="sightline-bench-")
    model_path = os.path.join(workdir, "model.keras")
    context.model.save(model_path)
    if source == "npy":
        folders = {n: os.path.join(workdir, f"images-{n}.npy") for n in (small, large)}
        for n, path in folders.items():
            # 8-bit like the PNGs: the job's [0,1] preprocessing gives back `images`.
            np.save(path, np.round(images[:n] * 255).astype(np.uint8))
    else:
        folders = {n: os.path.join(workdir, f"images-{source}-{n}") for n in (small, large)}
        for n, folder in folders.items():
            _write_image_folder(folder, images[:n], format=source)
        if source == "jpeg":
            images = _decoded_folder(folders[large])
    options = context.options(*methods)

    def job(n):
        out = os.path.join(workdir, f"out-{source}-{compression}-{n}")
        shutil.rmtree(out, ignore_errors=True)  # a finished run would be resumed: no work
        config = job_config(model_path, folders[n], out, methods, batch,
                            options=dict(options, compression=compression))
        started = time.perf_counter()
        summary = run_job(config)
        if summary.images != n:
            raise RuntimeError(f"the end-to-end job explained {summary.images} of {n} images")
        return time.perf_counter() - started

    def kernel():
        return explain(context.model, images, methods=tuple(methods), batch_size=batch,
                       map_size="native", **options)

    job(small)  # warm-up: imports, first traces
    result = kernel()
    # Rounds of (job on N, job on M, explain() on M), one after the other: a change of
    # the machine's load touches each round's job and kernel alike; the median of the
    # rounds' ratios is reported.
    rounds = []
    for _ in range(1 if context.size == "tiny" else END_TO_END_ROUNDS):
        wall = {small: job(small), large: job(large)}
        started = time.perf_counter()
        kernel()
        kernel_seconds = time.perf_counter() - started
        job_rate = (large - small) / max(wall[large] - wall[small], 1e-9)
        rounds.append((job_rate / (large / kernel_seconds), job_rate, large / kernel_seconds,
                       wall))
    rounds.sort(key=lambda r: r[0])
    ratio, job_rate, kernel_rate, wall = rounds[len(rounds) // 2]
    # Guard: the job's stored maps are the kernel's maps (float16 storage).
    with open_results(os.path.join(workdir, f"out-{source}-{compression}-{large}")) as stored_run:
        chunks = list(stored_run.chunks([heatmap(m) for m in methods]))
    stored = {m: np.concatenate([c[heatmap(m)] for c in chunks]).astype(np.float32)
              for m in methods}
    error = max(float(np.abs(stored[m] - result.heatmaps[m]).max()) for m in methods)
    entry = {"methods": list(methods), "source": source, "compression": compression,
             "small": small, "large": large,
             "job_seconds": {str(k): round(v, 3) for k, v in wall.items() if k},
             "job_images_per_second": round(job_rate, 3),
             "kernel_images_per_second": round(kernel_rate, 3),
             "ratio": round(ratio, 4),
             "round_ratios": [round(r[0], 4) for r in rounds],
             "guard": {"reference": "explain() on arrays", "metric": "max abs difference",
                       "value": float(f"{error:.3g}"), "threshold": STORED_MAPS_ATOL,
                       "passed": bool(error <= STORED_MAPS_ATOL)}}
    say(f"  end to end ({source}, compression {compression}): job {job_rate:.2f} img/s, "
        f"kernel alone {kernel_rate:.2f} img/s, ratio {entry['ratio']:.3f}")
    del tf
    return entry, model_path, workdir


def peak_memory(context, model_path, workdir, methods=("gradcam", "saliency"), counts=None,
                log=None):
    """Peak RSS (VmHWM) of run_job for N and 4N images, each in a fresh subprocess."""
    say = log or (lambda *_: None)
    batch = context.batch
    small = counts[0] if counts else 4 * batch
    large = counts[1] if counts else 4 * small
    rng = np.random.default_rng(6)
    folder = os.path.join(workdir, "memory-images")
    written = 0
    peaks = {}
    for n in (small, large):
        _write_image_folder(folder, rng.uniform(0, 1, (n - written, *context.image_shape)),
                            start=written)
        written = n
        args = dict(model_path=model_path, data=folder, out=os.path.join(workdir, f"mem-{n}"),
                    methods=list(methods), batch=batch,
                    options=context.options(*methods))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        done = subprocess.run([sys.executable, "-m", "sightline.bench.memory_child",
                               json.dumps(args)],
                              capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the memory subprocess failed: {done.stderr[-2000:]}")
        peaks[n] = json.loads(done.stdout.strip().splitlines()[-1])
        if peaks[n]["images"] != n:
            raise RuntimeError(f"the memory job explained {peaks[n]['images']} of {n} images")
    entry = {"small": small, "large": large,
             "vmhwm_mb": {str(n): round(p["vmhwm_kb"] / 1024, 1) for n, p in peaks.items()},
             "ratio": round(peaks[large]["vmhwm_kb"] / peaks[small]["vmhwm_kb"], 4)}
    say(f"  peak memory: {entry['vmhwm_mb']} MB, ratio {entry['ratio']:.3f}")
    return entry
