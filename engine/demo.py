"""A self-contained demo: train a small CNN on synthetic squares vs discs, explain it.

    python -m engine.demo --out demo-out --seed 0

Writes `<method>.png` (eight held-out images with that method's map over them),
`overview.png` (rows = images, columns = input + each method) and `model.keras`.
"""

import argparse
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from engine.api import explain
from engine.overlay import clip_percentile, grid, overlay, to_display_rgb, upscale, write_png

IMAGE_SIZE = 64
CLASS_NAMES = ("square", "disc")
METHODS = ("cam", "gradcam", "gradcam_plus_plus", "saliency", "smoothgrad",
           "integrated_gradients")
NUM_TRAIN = 512
NUM_HELD_OUT = 128
NUM_EXPLAINED = 8
# Maps that live on single pixels; shown with their top 1% clipped (display only).
PIXEL_METHODS = ("saliency", "smoothgrad", "integrated_gradients")
TILE_ZOOM = 2
MAX_EPOCHS = 12
TARGET_ACCURACY = 0.99  # training stops at the first epoch that reaches it


def make_dataset(num_images, seed=0, size=IMAGE_SIZE):
    """Bright squares (class 0) and discs (class 1) on a noisy, blotchy background.

    Square and disc have the same area, so only their shape tells them apart.
    Labels alternate 0, 1, 0, ... so every prefix of even length is balanced.
    Returns images float32 [N,size,size,3] in [0, 1], labels int32 [N].
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_images) % 2).astype(np.int32)

    # Low-frequency texture (a coarse random grid, upsampled) plus pixel noise, so the
    # model cannot find the object by a fixed brightness or colour threshold alone.
    coarse = rng.uniform(0.05, 0.35, (num_images, 8, 8, 3)).astype(np.float32)
    background = tf.image.resize(coarse, (size, size), method="bilinear").numpy()
    background += rng.normal(0.0, 0.05, background.shape).astype(np.float32)

    side = rng.uniform(14.0, 22.0, num_images)
    radius = side / np.sqrt(np.pi)
    margin = side / 2 + 2
    cy = rng.uniform(margin, size - margin)
    cx = rng.uniform(margin, size - margin)
    brightness = rng.uniform(0.8, 1.0, (num_images, 1))
    colour = brightness - rng.uniform(0.0, 0.2, (num_images, 3))

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    half = (side / 2)[:, None, None]
    square = (np.abs(dy) <= half) & (np.abs(dx) <= half)
    disc = dy ** 2 + dx ** 2 <= (radius ** 2)[:, None, None]
    mask = np.where(labels[:, None, None] == 0, square, disc)

    noise = rng.normal(0.0, 0.03, background.shape)
    shape_pixels = colour[:, None, None, :] + noise
    images = np.where(mask[..., None], shape_pixels, background)
    return np.clip(images, 0.0, 1.0).astype(np.float32), labels


def build_model(seed=0, size=IMAGE_SIZE):
    """The course's CNN shape: conv/pool blocks, global average pooling, softmax."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((size, size, 3)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(48, 3, padding="same", activation="relu", name="last_conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="classifier"),
    ])


class _StopAtAccuracy(keras.callbacks.Callback):
    """Stop once an epoch's training accuracy reaches `target`: how many epochs that
    takes varies with the seed (the loss plateaus for a few epochs first)."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def on_epoch_end(self, epoch, logs=None):
        if (logs or {}).get("accuracy", 0.0) >= self.target:
            self.model.stop_training = True


def run_demo(out_dir="demo-out", seed=0, *, num_train=NUM_TRAIN, max_epochs=MAX_EPOCHS,
             verbose=True):
    """Train, explain eight held-out images with every method and write the PNGs.

    Returns a dict: train_accuracy, held_out_accuracy, epochs, files (name -> path),
    images (float32 [8,64,64,3]), labels / predictions (int [8]) and heatmaps
    (method -> float32 [8,64,64]) of the explained images, seconds.
    """
    def say(*args):
        if verbose:
            print(*args, flush=True)

    started = time.perf_counter()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)

    images, labels = make_dataset(num_train + NUM_HELD_OUT, seed=seed)
    train_x, train_y = images[:num_train], labels[:num_train]
    test_x, test_y = images[num_train:], labels[num_train:]

    model = build_model(seed)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    say(f"training on {num_train} synthetic {IMAGE_SIZE}x{IMAGE_SIZE} images "
        f"({' vs '.join(CLASS_NAMES)}), at most {max_epochs} epochs ...")
    history = model.fit(train_x, train_y, batch_size=16, epochs=max_epochs, shuffle=True,
                        verbose=0, callbacks=[_StopAtAccuracy(TARGET_ACCURACY)])
    epochs = len(history.history["loss"])
    _, train_accuracy = model.evaluate(train_x, train_y, batch_size=128, verbose=0)
    _, held_out_accuracy = model.evaluate(test_x, test_y, batch_size=128, verbose=0)
    say(f"train accuracy {train_accuracy:.3f}, held-out accuracy {held_out_accuracy:.3f} "
        f"(chance 0.5) after {epochs} epochs, {time.perf_counter() - started:.1f} s")

    model_path = os.path.join(out_dir, "model.keras")
    model.save(model_path)

    shown_x, shown_y = test_x[:NUM_EXPLAINED], test_y[:NUM_EXPLAINED]
    result = explain(model, shown_x, methods=METHODS, num_samples=8, num_steps=16)

    def tile(method, i):
        heatmap = result.heatmaps[method][i]
        if method in PIXEL_METHODS:
            heatmap = clip_percentile(heatmap)
        return upscale(overlay(shown_x[i], heatmap), TILE_ZOOM)

    files = {"model": model_path}
    for method in METHODS:
        row = [tile(method, i) for i in range(len(shown_x))]
        files[method] = write_png(os.path.join(out_dir, f"{method}.png"), grid([row]))
    rows = [[upscale(to_display_rgb(shown_x[i]), TILE_ZOOM)] + [tile(m, i) for m in METHODS]
            for i in range(len(shown_x))]
    files["overview"] = write_png(os.path.join(out_dir, "overview.png"), grid(rows))

    seconds = time.perf_counter() - started
    labelled = ", ".join(f"{CLASS_NAMES[t]}->{CLASS_NAMES[p]}"
                         for t, p in zip(shown_y, result.predictions))
    say(f"explained {NUM_EXPLAINED} held-out images (true->predicted: {labelled})")
    say(f"wrote to {os.path.abspath(out_dir)}:")
    for path in files.values():
        say(f"  {os.path.basename(path)}")
    say(f"  (overview.png columns: input, {', '.join(METHODS)}; "
        f"{', '.join(PIXEL_METHODS)} shown with their top 1% clipped)")
    say(f"done in {seconds:.1f} s")
    return {
        "train_accuracy": float(train_accuracy),
        "held_out_accuracy": float(held_out_accuracy),
        "epochs": epochs,
        "files": files,
        "images": shown_x,
        "labels": shown_y,
        "heatmaps": result.heatmaps,
        "predictions": result.predictions,
        "seconds": seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m engine.demo",
        description="Train a small CNN on synthetic squares vs discs and write heatmap "
                    "overlays for every explanation method.")
    parser.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    run_demo(args.out, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
