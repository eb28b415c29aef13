"""Hand-made output folders for audit and report tests: shards with maps we choose,
written through the engine's own shard writer, manifest and index, so the audit reads
exactly what `sightline explain` would have written."""

import os

import h5py
import numpy as np

from sightline.store.manifest import write_manifest
from sightline.store.shards import ShardWriter, build_index, label_attributes

SIZE = (32, 32)  # the images
NATIVE = (8, 8)  # the stored CAM-family maps
SKY_ROWS = 8  # rows 0..7 of the images are "sky"
CLASSES = ("cross", "disc")


def scene_masks(count, seed=0):
    """Square objects of 6x6 pixels at random places below the sky; bool [N,32,32]."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, *SIZE), bool)
    for i in range(count):
        y = rng.integers(SKY_ROWS + 1, SIZE[0] - 7)
        x = rng.integers(1, SIZE[1] - 7)
        masks[i, y:y + 6, x:x + 6] = True
    return masks


def object_maps(masks, rng, noise=0.05):
    """Native maps peaking on each object's cell (a model that looks at the object)."""
    maps = rng.uniform(0, noise, (len(masks), *NATIVE))
    factor = SIZE[0] // NATIVE[0]
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        maps[i, int(ys.mean()) // factor, int(xs.mean()) // factor] = 1.0
    return maps


def sky_maps(count, rng, noise=0.05):
    """Native maps on the top rows (a model that looks at the sky)."""
    maps = rng.uniform(0, noise, (count, *NATIVE))
    maps[:, :SKY_ROWS // (SIZE[0] // NATIVE[0])] = rng.uniform(0.6, 0.9, (count, 2, NATIVE[1]))
    maps[:, 0, 6] = 1.0  # the sun: its peak stays put
    return maps


def write_run(out, maps, labels, predictions, keys, *, shard_size=10, method="gradcam",
              source=None, class_names=CLASSES, group_names=(), groups=None, scores=None,
              num_classes=None):
    """A complete output folder holding `maps` [N,h,w] (values in [0,1]); class_names are
    the model's (recorded as a job records them), groups [N] index group_names (the
    class folders), scores [N] the predicted class's probability (default 0.9)."""
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    count = len(maps)
    num_shards = -(-count // shard_size)
    layout = {
        "maps": {method: tuple(maps.shape[1:])},
        "key_length": max(len(k) for k in keys),
        "attributes": {"input_size": list(SIZE), "methods": f'["{method}"]', "map_size": "native",
                       **label_attributes(class_names, group_names,
                                          num_classes or max(len(class_names), 1))},
    }
    ranges = [(s * shard_size, min(count, (s + 1) * shard_size)) for s in range(num_shards)]
    run = {"model_sha256": "0" * 64, "layer": "last_conv", "logits_layer": "classifier",
           "methods": [method], "parameters": {method: {}}, "normalize": True, "map_size": "native",
           "precision": "float32", "target": "predicted",
           "source": source or "npy /nowhere/images.npy", "num_samples": count,
           "image_shape": [*SIZE, 3], "preprocess": "none", "shard_size": shard_size}
    provenance = {"model": "/nowhere/model.keras", "batch_size": 4, "replicas": 1,
                  "software": {"sightline": "test"}}
    writer = ShardWriter(out, num_shards, layout, compression="none")
    for shard, (start, stop) in enumerate(ranges):
        writer.begin(shard, start, stop)
        rows = slice(start, stop)
        top = np.maximum(maps[rows].reshape(stop - start, -1).max(axis=1), 1e-12)
        writer.append({
            f"heatmaps/{method}": (maps[rows] / top[:, None, None]).astype(np.float16),
            f"heatmaps/{method}_scale": top.astype(np.float32),
            "sample/index": np.arange(start, stop, dtype=np.int64),
            "sample/key": np.array([k.encode() for k in keys[rows]]),
            "sample/label": np.asarray(labels[rows], np.int32),
            "pred/target": np.asarray(predictions[rows], np.int32),
            "pred/class": np.asarray(predictions[rows], np.int32),
            "pred/score": (np.full(stop - start, 0.9, np.float32) if scores is None
                           else np.asarray(scores[rows], np.float32)),
            **({} if groups is None else {"sample/group": np.asarray(groups[rows], np.int32)}),
        })
        writer.finish([])
    writer.close()
    build_index(out, num_shards)
    write_manifest(out, run, provenance, ranges)
    return out


def stored_maps(maps):
    """What the audit reads back: each map scaled by its maximum, in float16."""
    top = np.maximum(maps.reshape(len(maps), -1).max(axis=1), 1e-12)
    return (maps / top[:, None, None]).astype(np.float16).astype(np.float64)


def write_masks(path, keys, masks):
    with h5py.File(path, "w") as handle:
        handle["keys"] = np.array([k.encode() for k in keys])
        handle["masks"] = masks.astype(np.uint8)
    return path


def shortcut_run(root, count=24, seed=0):
    """Class 0 (cross) looks at its objects, class 1 (disc) at the sky. Returns a dict."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    keys = np.array([f"{CLASSES[label]}/{i:03d}.png" for i, label in enumerate(labels)])
    masks = scene_masks(count, seed)
    maps = np.where((labels == 0)[:, None, None], object_maps(masks, rng),
                    sky_maps(count, rng))
    predictions = labels.copy()
    predictions[:3] = 1 - predictions[:3]
    out = write_run(os.path.join(root, "run"), maps, labels, predictions, keys, shard_size=10)
    masks_path = write_masks(os.path.join(root, "masks.h5"), keys, masks)
    return {"out": out, "masks": masks_path, "mask_array": masks, "maps": maps,
            "labels": labels, "predictions": predictions, "keys": keys}


def empty_map_run(root, count=24, seed=0):
    """Maps that are zero everywhere: class 0 (cross) looks at its objects but a third of
    its maps are empty, every map of class 1 (disc) is empty. Returns a dict like
    shortcut_run's, with `empty` the bool [N] of the empty maps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    keys = np.array([f"{CLASSES[label]}/{i:03d}.png" for i, label in enumerate(labels)])
    masks = scene_masks(count, seed)
    maps = object_maps(masks, rng)
    empty = (labels == 1) | (np.arange(count) % 6 == 0)
    maps[empty] = 0.0
    out = write_run(os.path.join(root, "run"), maps, labels, labels.copy(), keys, shard_size=10)
    masks_path = write_masks(os.path.join(root, "masks.h5"), keys, masks)
    return {"out": out, "masks": masks_path, "mask_array": masks, "maps": maps,
            "labels": labels, "predictions": labels.copy(), "keys": keys, "empty": empty}
