"""`sightline audit OUT`: where does the evidence sit? The shortcut audit of a finished run.

Streams the heatmaps of one method shard by shard, in chunks (memory stays flat in the
maps: at most CHUNK maps at a time plus one running sum per class; what grows with the
dataset is a few float32 scalars per image, for the quantiles), and computes

per image   energy share on the object  s = sum(M * mask) / sum(M)
            its area fraction           a = mean(mask); a map that ignores the object
                                        (a uniform one) puts exactly a on it
            pointing game               the map's peak (argmax) lies on the object
            region shares               sum(M * region) / sum(M) per --regions NAME
            concentration               normalised entropy H = -sum p log p / log(H*W),
                                        p = M / sum(M): 1 = uniform, 0 = one pixel; and
                                        the coverage exp(-sum p log p) / (H*W): the
                                        fraction of the image the evidence effectively
                                        spreads over (1 = flat, 0.3 = a third of it)
            peak position               (row, col) of the argmax as fractions of the side

            A map that is zero everywhere holds no evidence: it has no share, peak or hit
            and is left out of every per-class mean and spread (its area too, so share,
            hit and area are averaged over the same images); empty_maps counts them.

per class   (named by the class subfolder when the keys are folder paths)
            the mean heatmap, the distribution of s, mean s and a, the lift
(by label,  L = mean(s) / mean(a) (1 = no better than a map blind to the object), the
 or by the  pointing-game hit rate against its chance level mean(a), accuracy against
 predicted  the labels, mean entropy and the peak spread: the RMS distance of the peaks
 class when from their mean, as a fraction of the image side (0.41 for peaks spread
 no labels) uniformly; a peak that stays put, like a watermark or a sky, shows as a low
            spread).

A class is FLAGGED when its lift L is below `threshold` (default 2.0): the object gets
less than twice the share of evidence a map blind to it would give it, so the evidence
sits mostly off the object. Comparing with the area fraction (rather than asking for
s > 0.5) keeps the rule fair to small objects and to coarse CAM-family maps, which a
7x7 or 8x8 layer cannot fit tightly around a small object.

Except when the class's evidence has no place at all: when its median coverage is at
least `diffuse` (default 0.85) the maps are flat, the class is reported as DIFFUSE and
not flagged (flag it too with flag_diffuse / --flag-diffuse). This is what a two-class
model shows for its "default" class, the one it predicts when it finds no evidence of
the other (a disc detector calls everything without a disc a cross): Grad-CAM of that
class is nearly constant, it points nowhere, and saying it points at the sky would be
wrong. A shortcut is evidence that sits somewhere else; a whole-image cue (a colour
cast) also gives flat maps, which is why --flag-diffuse exists.

Flags need masks or boxes; without them the audit reports the mask-free statistics and
flags nothing.

CAM-family maps stored at the layer's resolution ("native") are resized bilinearly
(half-pixel centres, as tf.image.resize) to the images' size, input_size in the shard
attributes, before anything is compared; masks must have that size.

Masks: an HDF5 file with /keys [N] (the sample keys of the run, e.g. "cat/001.png") and
/masks [N,H,W] (non-zero on the object), or a folder of PNGs that mirrors the keys
(DIR/cat/001.png; a key not ending in .png looks for DIR/<key>.png). Boxes: a CSV with
the header key,y0,x0,y1,x1 in pixels of the input size (half-open; several rows of one
key are united). Regions (one per --regions flag): NAME=y0:y1,x0:x1 in pixels, or in
fractions of the side when any number has a decimal point (sky=0:0.3,0:1).
"""

import heapq
import json
import math
import os

import numpy as np

AUDIT_FILE = "audit.json"
DEFAULT_THRESHOLD = 2.0
DEFAULT_DIFFUSE = 0.85
DEFAULT_WORST = 8  # per class
CHUNK = 256
HISTOGRAM_BINS = 25
EXIT_FLAGGED = 3
UNIFORM_PEAK_SPREAD = math.sqrt(2.0 / 12.0)  # RMS distance of uniform points in a unit square


# ----------------------------------------------------------------------------- metrics


def bilinear_matrix(size_out, size_in):
    """[size_out, size_in] weights of 1-D bilinear resizing with half-pixel centres
    (tf.image.resize(method="bilinear"), no antialiasing)."""
    matrix = np.zeros((size_out, size_in))
    position = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    position = np.clip(position, 0, size_in - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    frac = position - low
    matrix[np.arange(size_out), low] += 1 - frac
    matrix[np.arange(size_out), high] += frac
    return matrix


def resize_maps(maps, size):
    """maps [B,h,w] -> float64 [B,H,W], bilinear (half-pixel centres)."""
    maps = np.asarray(maps, np.float64)
    height, width = size
    if maps.shape[1:] == (height, width):
        return maps
    rows = bilinear_matrix(height, maps.shape[1])
    cols = bilinear_matrix(width, maps.shape[2])
    return np.einsum("Hh,bhw,Ww->bHW", rows, maps, cols, optimize=True)


def image_metrics(maps, masks=None, regions=None):
    """Per-image metrics of maps [B,H,W] (>= 0) against masks bool [B,H,W] (or None)
    and regions {name: bool [H,W]}.

    Returns a dict of [B] arrays: total, entropy, coverage, peak_y, peak_x (fractions of
    the side, pixel centres), and with masks share, area, hit (1.0 or 0.0); region/<name>
    per region. A map that is zero everywhere has nothing to attribute: NaN shares,
    entropy, coverage, peak and hit (its area is still the mask's).
    """
    maps = np.maximum(np.asarray(maps, np.float64), 0.0)
    batch, height, width = maps.shape
    flat = maps.reshape(batch, -1)
    total = flat.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    empty = total <= 0
    p = flat / safe[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    entropy = -plogp.sum(axis=1) / math.log(height * width)
    # Ties go to the first pixel in row-major order (np.argmax), so a constant non-zero
    # map peaks at the top-left pixel. It keeps that peak rather than none: it does
    # spread evidence (its share is the object's area), and dropping it from the
    # pointing game alone would average hit and share over different images; its
    # coverage of 1 is what marks it as pointing nowhere.
    peak = flat.argmax(axis=1)
    result = {
        "total": total,
        "entropy": np.where(empty, np.nan, entropy),
        "coverage": np.where(empty, np.nan, np.exp(-plogp.sum(axis=1)) / (height * width)),
        # An empty map has no peak; argmax would put a fake one in the top-left corner,
        # which looks like a peak that stays put (a shortcut) to the peak spread.
        "peak_y": np.where(empty, np.nan, (peak // width + 0.5) / height),
        "peak_x": np.where(empty, np.nan, (peak % width + 0.5) / width),
    }
    if masks is not None:
        masks = np.asarray(masks, bool).reshape(batch, -1)
        result["share"] = np.where(empty, np.nan, (flat * masks).sum(axis=1) / safe)
        result["area"] = masks.mean(axis=1)
        # 1.0 / 0.0, NaN for an empty map: it neither hits nor misses, as it has no share.
        result["hit"] = np.where(empty, np.nan, masks[np.arange(batch), peak].astype(np.float64))
    for name, region in (regions or {}).items():
        region = np.asarray(region, bool).reshape(-1)
        result[f"region/{name}"] = np.where(empty, np.nan, (flat * region).sum(axis=1) / safe)
    return result


def lift(mean_share, mean_area):
    """How many times its fair (area) share of the evidence the object gets."""
    return float(mean_share / mean_area) if mean_area > 0 else float("nan")


def _peaks(peak_y, peak_x):
    """The peaks of the maps that have one (empty maps' are NaN): [n] and [n] float64."""
    peak_y, peak_x = np.asarray(peak_y, np.float64), np.asarray(peak_x, np.float64)
    present = np.isfinite(peak_y) & np.isfinite(peak_x)
    return peak_y[present], peak_x[present]


def peak_spread(peak_y, peak_x):
    """RMS distance of peaks from their mean, in image sides (uniform: 0.408). Peaks of
    empty maps (NaN) are left out; NaN when no peak is left."""
    peak_y, peak_x = _peaks(peak_y, peak_x)
    if peak_y.size == 0:
        return float("nan")
    return float(np.sqrt(peak_y.var() + peak_x.var()))


def peak_mean(peak_y, peak_x):
    """[mean row, mean col] of the peaks of the non-empty maps; NaN when there are none."""
    peak_y, peak_x = _peaks(peak_y, peak_x)
    if peak_y.size == 0:
        return [float("nan"), float("nan")]
    return [float(peak_y.mean()), float(peak_x.mean())]


# ----------------------------------------------------------------------------- inputs


def parse_region(text, size):
    """'NAME=y0:y1,x0:x1' -> (name, bool [H,W]). Pixels, or fractions when any number
    has a decimal point."""
    height, width = size
    try:
        name, spec = text.split("=", 1)
        rows, cols = spec.split(",")
        (y0, y1), (x0, x1) = rows.split(":"), cols.split(":")
        numbers = [y0, y1, x0, x1]
        fractional = any("." in v for v in numbers)
        values = [float(v) for v in numbers]
    except ValueError:
        raise ValueError(f"region {text!r} must look like NAME=y0:y1,x0:x1 (pixels, or "
                         "fractions of the side such as sky=0:0.3,0:1)") from None
    if fractional:
        values = [values[0] * height, values[1] * height, values[2] * width, values[3] * width]
    y0, y1, x0, x1 = (int(round(v)) for v in values)
    if not name or not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(f"region {text!r} is empty or outside the {height}x{width} images")
    region = np.zeros((height, width), bool)
    region[y0:y1, x0:x1] = True
    return name, region


class MaskSource:
    """Object masks by sample key, from an HDF5 file, a PNG folder or a box CSV."""

    def __init__(self, kind, description, size, reader, keys):
        self.kind, self.description, self.size = kind, description, size
        self._reader = reader
        self.keys = keys  # the keys it has, or None when only checked on demand

    def read(self, keys):
        """bool [len(keys),H,W]."""
        return self._reader(list(keys))

    def close(self):
        closer = getattr(self._reader, "close", None)
        if closer:
            closer()


class _H5Masks:
    def __init__(self, path):
        import h5py
        self.handle = h5py.File(path, "r")
        for name in ("keys", "masks"):
            if name not in self.handle:
                self.handle.close()
                raise ValueError(f"mask file {path!r} has no /{name} dataset; it needs /keys [N] "
                                 "(the sample keys) and /masks [N,H,W]")
        # Shapes are read while the file is open: the messages below name them after it
        # is closed.
        key_shape = tuple(self.handle["keys"].shape)
        mask_shape = tuple(self.handle["masks"].shape)
        if len(key_shape) != 1:
            self.handle.close()
            raise ValueError(f"mask file {path!r}: /keys must be a 1-D list of sample keys; "
                             f"it has shape {key_shape}")
        if len(mask_shape) != 3 or mask_shape[0] != key_shape[0]:
            self.handle.close()
            raise ValueError(f"mask file {path!r}: /masks must be [N,H,W] with N = len(/keys) = "
                             f"{key_shape[0]}; it has shape {mask_shape}")
        keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k)
                for k in self.handle["keys"][:]]
        self.row = {k: i for i, k in enumerate(keys)}
        self.size = tuple(int(v) for v in mask_shape[1:])

    def __call__(self, keys):
        rows = np.array([self.row[k] for k in keys])
        order = np.argsort(rows)
        unique, inverse = np.unique(rows[order], return_inverse=True)
        values = self.handle["masks"][unique] != 0
        out = np.empty((len(keys), *self.size), bool)
        out[order] = values[inverse]
        return out

    def close(self):
        self.handle.close()


def _png_mask_path(folder, key):
    path = os.path.join(folder, key)
    return path if key.lower().endswith(".png") else path + ".png"


def _read_png(path):
    import tensorflow as tf
    data = tf.io.decode_png(tf.io.read_file(path)).numpy()
    return data[..., 0] if data.ndim == 3 else data


def open_masks(masks=None, boxes=None, size=None):
    """The MaskSource for --masks (file.h5 or a folder) or --boxes (CSV), or None."""
    if masks and boxes:
        raise ValueError("pass --masks or --boxes, not both")
    if masks:
        if not os.path.exists(masks):
            raise ValueError(f"masks not found: {masks!r}; pass an HDF5 file with /keys and "
                             "/masks, or a folder of mask PNGs mirroring the image keys")
        if os.path.isdir(masks):
            folder = masks

            def read_folder(keys):
                out = []
                for key in keys:
                    mask = _read_png(_png_mask_path(folder, key))
                    if mask.shape != tuple(size):
                        raise ValueError(f"mask {_png_mask_path(folder, key)!r} is "
                                         f"{mask.shape[0]}x{mask.shape[1]} but the images are "
                                         f"{size[0]}x{size[1]}; masks must have the images' size")
                    out.append(mask != 0)
                return np.stack(out)

            source = MaskSource("folder", f"mask folder {os.path.abspath(folder)}", tuple(size),
                                read_folder, None)
            source.folder = folder
            return source
        reader = _H5Masks(masks)
        return MaskSource("h5", f"mask file {os.path.abspath(masks)}", reader.size, reader,
                          set(reader.row))
    if boxes:
        import csv
        if not os.path.exists(boxes):
            raise ValueError(f"box file not found: {boxes!r}")
        table = {}
        with open(boxes, newline="") as handle:
            reader = csv.DictReader(handle)
            needed = {"key", "y0", "x0", "y1", "x1"}
            if not reader.fieldnames or not needed <= set(reader.fieldnames):
                raise ValueError(f"box file {boxes!r} needs the header key,y0,x0,y1,x1; it has "
                                 f"{','.join(reader.fieldnames or [])}")
            for number, row in enumerate(reader, start=2):
                try:
                    box = tuple(int(round(float(row[k]))) for k in ("y0", "x0", "y1", "x1"))
                except (TypeError, ValueError):
                    raise ValueError(f"box file {boxes!r} line {number}: y0,x0,y1,x1 must be "
                                     "numbers") from None
                table.setdefault(row["key"], []).append(box)
        height, width = size

        def read_boxes(keys):
            out = np.zeros((len(keys), height, width), bool)
            for i, key in enumerate(keys):
                for y0, x0, y1, x1 in table[key]:
                    out[i, max(0, y0):min(height, y1), max(0, x0):min(width, x1)] = True
            return out

        return MaskSource("boxes", f"box file {os.path.abspath(boxes)}", tuple(size), read_boxes,
                          set(table))
    return None


def _check_mask_size(mask_source, first_key, size):
    if mask_source.kind == "folder":
        first = _png_mask_path(mask_source.folder, first_key)
        if os.path.exists(first):
            mask_source.size = _read_png(first).shape[:2]
    if tuple(mask_source.size) != tuple(size):
        raise ValueError(f"{mask_source.description}: masks are {mask_source.size[0]}x"
                         f"{mask_source.size[1]} but the run's images are {size[0]}x{size[1]} "
                         "(input_size); masks must have the images' size")


def _missing_masks(mask_source, keys):
    if mask_source.keys is not None:
        return [k for k in keys if k not in mask_source.keys]
    return [k for k in keys if not os.path.exists(_png_mask_path(mask_source.folder, k))]


# ----------------------------------------------------------------------------- the audit


class _ClassStats:
    def __init__(self, size, region_names):
        self.count = 0
        self.map_sum = np.zeros(size)
        self.mask_sum = np.zeros(size)
        self.labelled = self.correct = 0
        self.values = {}  # metric -> list of float32 arrays (scalars per image only)
        self.region_names = region_names

    def add(self, maps, masks, metrics, labels, predictions):
        self.count += len(maps)
        self.map_sum += maps.sum(axis=0)
        if masks is not None:
            self.mask_sum += masks.sum(axis=0)
        known = labels >= 0
        self.labelled += int(known.sum())
        self.correct += int((labels[known] == predictions[known]).sum())
        for name, values in metrics.items():
            self.values.setdefault(name, []).append(np.asarray(values, np.float32))

    def column(self, name):
        parts = self.values.get(name)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _finite(values):
    values = np.asarray(values, np.float64)
    return values[np.isfinite(values)]


def _summary(values):
    values = _finite(values)
    if values.size == 0:
        return None
    q = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"mean": float(values.mean()), "p10": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "p90": float(q[4])}


def _round(value, digits=5):
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v, digits) for v in value]
    return value


def run_audit(out, *, method=None, masks=None, boxes=None, regions=(), threshold=DEFAULT_THRESHOLD,
              diffuse=DEFAULT_DIFFUSE, flag_diffuse=False, worst=DEFAULT_WORST, chunk=CHUNK):
    """Audit the finished run in `out`; returns the audit as a dict (what audit.json holds)."""
    import h5py

    from sightline.store.manifest import read_manifest
    from sightline.store.shards import verify_shard

    manifest = read_manifest(out)
    run = manifest["run"]
    methods = list(run["methods"])
    if method is None:
        method = "gradcam" if "gradcam" in methods else methods[0]
    if method not in methods:
        raise ValueError(f"method {method!r} was not run in {out!r}; it has {', '.join(methods)} "
                         "(pass --method)")
    if not (isinstance(threshold, (int, float)) and threshold > 0):
        raise ValueError(f"--threshold must be a number > 0 (a lift); got {threshold!r}")
    if not (isinstance(diffuse, (int, float)) and 0 < diffuse <= 1):
        raise ValueError(f"--diffuse must be a fraction in (0, 1]; got {diffuse!r}")
    num_shards = manifest["num_shards"]
    shard_files = []
    for entry in manifest["shards"]:
        record, problem = verify_shard(out, entry["shard"], num_shards, checksum=False)
        if problem:
            raise ValueError(f"{out!r} is not complete: {entry['file']} is {problem}; finish the "
                             "run (or `sightline index`) before auditing")
        shard_files.append(os.path.join(out, record["file"]))
    if not shard_files:
        raise ValueError(f"{out!r} holds no shards")
    with h5py.File(shard_files[0], "r") as first:
        size = tuple(int(v) for v in first.attrs["input_size"])
        stored = tuple(first[f"heatmaps/{method}"].shape[1:])
    region_masks = {}
    for text in regions:
        name, region = parse_region(text, size)
        if name in region_masks:
            raise ValueError(f"region name {name!r} is given twice ({text!r}); give each "
                             "--regions its own name")
        region_masks[name] = region

    mask_source = open_masks(masks, boxes, size)
    try:
        # A first pass over the samples' keys and labels, shard by shard: masks that do
        # not line up stop the audit before any work, with one line that names them.
        folders, missing, num_samples, by_label = {}, [], 0, True
        for path in shard_files:
            with h5py.File(path, "r") as shard:
                keys = [k.decode("utf-8") for k in shard["sample/key"][:]]
                labels = shard["sample/label"][:]
            if mask_source is not None and keys and num_samples == 0:
                _check_mask_size(mask_source, keys[0], size)
            num_samples += len(keys)
            by_label = by_label and bool((labels >= 0).all())
            for key, label in zip(keys, labels.tolist()):
                if label >= 0 and "/" in key:
                    folders.setdefault(int(label), set()).add(key.split("/", 1)[0])
            if mask_source is not None:
                absent = _missing_masks(mask_source, keys)
                missing.extend(absent[:5 - len(missing)] if len(missing) < 5 else [])
                mask_source.num_missing = getattr(mask_source, "num_missing", 0) + len(absent)
        if mask_source is not None and missing:
            count = mask_source.num_missing
            raise ValueError(f"{mask_source.description} has no mask for {count} of "
                             f"{num_samples} sample(s): {', '.join(missing)}"
                             f"{' ...' if count > len(missing) else ''}")
        names = {label: next(iter(found)) for label, found in folders.items() if len(found) == 1}
        by_label = by_label and num_samples > 0
        stats, heaps, counter = {}, {}, 0
        total_images = empty_maps = 0
        for path in shard_files:
            with h5py.File(path, "r") as shard:
                count = shard[f"heatmaps/{method}"].shape[0]
                for start in range(0, count, chunk):
                    stop = min(count, start + chunk)
                    maps = resize_maps(shard[f"heatmaps/{method}"][start:stop], size)
                    keys = [k.decode("utf-8") for k in shard["sample/key"][start:stop]]
                    labels = shard["sample/label"][start:stop]
                    predictions = shard["pred/class"][start:stop]
                    indices = shard["sample/index"][start:stop]
                    object_masks = mask_source.read(keys) if mask_source is not None else None
                    metrics = image_metrics(maps, object_masks, region_masks)
                    groups = labels if by_label else predictions
                    total_images += len(keys)
                    empty_maps += int((metrics["total"] <= 0).sum())
                    for group in np.unique(groups):
                        rows = groups == group
                        if int(group) not in stats:
                            stats[int(group)] = _ClassStats(size, list(region_masks))
                        stats[int(group)].add(
                            maps[rows], None if object_masks is None else object_masks[rows],
                            {k: v[rows] for k, v in metrics.items() if k != "total"},
                            labels[rows], predictions[rows])
                    if object_masks is not None:
                        # Worst first, per class: the smallest lift (share / area), then
                        # pointing-game misses before hits, then source order.
                        for i in range(len(keys)):
                            share = metrics["share"][i]
                            if not np.isfinite(share):
                                continue
                            badness = (-(share / max(metrics["area"][i], 1e-12)),
                                       int(not metrics["hit"][i]), -counter)
                            heap = heaps.setdefault(int(groups[i]), [])
                            item = (badness, {
                                "key": keys[i], "index": int(indices[i]),
                                "label": int(labels[i]), "predicted": int(predictions[i]),
                                "share": float(share), "area": float(metrics["area"][i]),
                                "hit": bool(metrics["hit"][i])})
                            counter += 1
                            if len(heap) < worst:
                                heapq.heappush(heap, item)
                            elif badness > heap[0][0]:
                                heapq.heapreplace(heap, item)
    finally:
        if mask_source is not None:
            mask_source.close()

    classes = []
    for group in sorted(stats):
        s = stats[group]
        entry = {
            "class": group,
            "name": names.get(group, str(group)),
            "grouped_by": "label" if by_label else "predicted",
            "count": s.count,
            "accuracy": (s.correct / s.labelled) if s.labelled else None,
            "mean_heatmap": (s.map_sum / max(s.count, 1)).astype(np.float32),
            "entropy": _summary(s.column("entropy")),
            "coverage": _summary(s.column("coverage")),
            "peak_spread": peak_spread(s.column("peak_y"), s.column("peak_x")),
            "peak_mean": peak_mean(s.column("peak_y"), s.column("peak_x")),
            "empty_maps": int(np.isnan(s.column("peak_y")).sum()),
            "regions": {name: _summary(s.column(f"region/{name}")) for name in region_masks},
        }
        if mask_source is not None:
            shares, areas, hits = s.column("share"), s.column("area"), s.column("hit")
            # An empty map has no share and no peak; leaving its area in would compare the
            # mean share with the mean area of other images. Share, hit and area are all
            # averaged over the maps that hold some evidence.
            scored = np.isfinite(shares)
            if scored.any():
                mean_share = float(shares[scored].mean())
                mean_area = float(areas[scored].mean())
                pointing = float(hits[scored].mean())
            else:
                mean_share = mean_area = pointing = float("nan")
            entry.update({
                "mean_mask": (s.mask_sum / max(s.count, 1)).astype(np.float32),
                "on_object_share": _summary(shares),
                "area_fraction": mean_area,
                "lift": lift(mean_share, mean_area),
                "pointing_game": pointing,
                "pointing_chance": mean_area,
            })
            if not scored.any():
                entry["share_histogram"] = []
                entry["share_histogram_range"] = [0.0, 1.0]
                entry["status"] = "empty"
                entry["flagged"] = False
                entry["reason"] = ("every map of this class is zero: there is no evidence to "
                                   "compare with the object")
                classes.append(entry)
                continue
            # Shares of small objects crowd near 0: bin over [0, top] (every share, the
            # flag line and a little room), in steps of 0.05.
            finite_shares = shares[scored].astype(np.float64)
            top = max(0.05, 1.5 * threshold * mean_area, float(finite_shares.max()))
            top = min(1.0, math.ceil(top * 20 - 1e-9) / 20)
            entry["share_histogram"] = np.histogram(finite_shares, bins=HISTOGRAM_BINS,
                                                    range=(0.0, top))[0].tolist()
            entry["share_histogram_range"] = [0.0, top]
            coverage = (entry["coverage"] or {}).get("median", 1.0)
            off = not (entry["lift"] >= threshold)
            if not off:
                entry["status"] = "on-object"
            elif coverage >= diffuse:
                entry["status"] = "diffuse"
            else:
                entry["status"] = "off-object"
            entry["flagged"] = entry["status"] == "off-object" or (
                flag_diffuse and entry["status"] == "diffuse")
            entry["reason"] = (
                f"the object ({mean_area:.1%} of the image) gets {mean_share:.1%} of the "
                f"evidence: {entry['lift']:.2f}x its area share, "
                + ("below" if off else "at or above") + f" the threshold {threshold:g}x")
            if entry["status"] == "diffuse":
                entry["reason"] += (f"; but the maps are flat (median coverage {coverage:.2f} "
                                    f">= {diffuse:g}): no localised evidence, typically the class "
                                    "a model predicts when it sees no evidence of the others")
        else:
            entry["status"] = "no masks"
            entry["flagged"] = False
            entry["reason"] = "no masks or boxes: nothing to compare the evidence with"
        classes.append(entry)

    ranked = []
    for group in sorted(heaps):
        for badness, item in sorted(heaps[group], key=lambda t: t[0], reverse=True):
            item["class_name"] = names.get(item["label"], str(item["label"]))
            item["predicted_name"] = names.get(item["predicted"], str(item["predicted"]))
            item["group"] = group
            ranked.append(item)
    audit = {
        "format": "sightline-audit/1",
        "out": os.path.abspath(out),
        "method": method,
        "stored_size": list(stored),
        "compared_at": list(size),
        "num_images": total_images,
        "empty_maps": empty_maps,
        "masks": mask_source.description if mask_source is not None else None,
        "mask_args": {"masks": os.path.abspath(masks) if masks else None,
                      "boxes": os.path.abspath(boxes) if boxes else None},
        "regions": {name: [int(v) for v in _bounds(m)] for name, m in region_masks.items()},
        "threshold": threshold,
        "diffuse": diffuse,
        "flag_diffuse": flag_diffuse,
        "rule": "a class is flagged when mean on-object share / mean object area fraction "
                "(the lift) is below the threshold and its maps are not flat (median "
                "coverage below the diffuse limit" + (", or even when they are)" if flag_diffuse
                                                      else ")"),
        "classes": classes,
        "flagged": [c["name"] for c in classes if c["flagged"]],
        "worst": ranked,
        "provenance": _provenance(manifest),
    }
    return audit


def _bounds(region):
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _provenance(manifest):
    run = manifest["run"]
    return {
        "model": manifest.get("model"), "model_sha256": run.get("model_sha256"),
        "layer": run.get("layer"), "logits_layer": run.get("logits_layer"),
        "methods": run.get("methods"), "parameters": run.get("parameters"),
        "map_size": run.get("map_size"), "precision": run.get("precision"),
        "target": run.get("target"), "source": run.get("source"),
        "num_samples": run.get("num_samples"), "image_shape": run.get("image_shape"),
        "preprocess": run.get("preprocess"), "batch_size": manifest.get("batch_size"),
        "replicas": manifest.get("replicas"), "num_shards": manifest.get("num_shards"),
        "num_skipped": manifest.get("num_skipped"), "software": manifest.get("software"),
    }


def to_json(audit):
    """The audit as JSON-ready data (arrays to nested lists, NaN to null)."""
    def convert(value):
        if isinstance(value, np.ndarray):
            return _round(value.astype(np.float64).tolist())  # NaN is not JSON: null
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, (np.floating, float)):
            return _round(float(value))
        if isinstance(value, np.integer):
            return int(value)
        return value
    return convert(audit)


def write_audit(audit, path):
    from sightline.store.shards import write_json_atomic
    write_json_atomic(path, to_json(audit))
    return path


def summary_lines(audit):
    lines = [f"audit of {audit['out']} ({audit['method']}, {audit['num_images']} images, "
             f"compared at {audit['compared_at'][0]}x{audit['compared_at'][1]})"]
    for c in audit["classes"]:
        accuracy = "n/a" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
        line = f"  class {c['name']}: {c['count']} images, accuracy {accuracy}"
        if c.get("empty_maps"):
            line += f", {c['empty_maps']} empty map(s) left out"
        if c.get("status") == "empty":
            line += ", every map is zero: no evidence to compare with the object"
        elif "lift" in c:
            line += (f", on-object share {c['on_object_share']['mean']:.3f} vs area "
                     f"{c['area_fraction']:.3f} (lift {c['lift']:.2f}), pointing game "
                     f"{c['pointing_game']:.2f}")
        if c["peak_spread"] is not None and math.isfinite(c["peak_spread"]):
            line += f", peak spread {c['peak_spread']:.2f}"
        for name, summary in c["regions"].items():
            if summary:
                line += f", {name} share {summary['mean']:.3f}"
        if c.get("status") == "diffuse":
            line += f", coverage {c['coverage']['median']:.2f}: DIFFUSE (flat maps, no place)"
        lines.append(line + ("  FLAGGED" if c["flagged"] else ""))
    if audit["masks"] is None:
        lines.append("  no masks or boxes given: nothing flagged (pass --masks or --boxes)")
    lines.append("verdict: " + (f"FLAGGED {', '.join(audit['flagged'])}: the evidence sits mostly "
                                "off the object" if audit["flagged"] else "nothing flagged"))
    return lines


# ----------------------------------------------------------------------------- command


def add_arguments(parser):
    parser.add_argument("out", help="the output folder of a finished `sightline explain` run")
    parser.add_argument("--masks", help="object masks: file.h5 with /keys and /masks, or a folder "
                                        "of PNGs mirroring the image keys")
    parser.add_argument("--boxes", help="object boxes: CSV with header key,y0,x0,y1,x1 (pixels)")
    # One region per flag: a flag taking several values would swallow the run folder
    # written after it (`--regions sky=0:0.3,0:1 OUT`).
    parser.add_argument("--regions", action="append", default=None, metavar="NAME=y0:y1,x0:x1",
                        help="a named region to report the evidence share of (pixels, or "
                             "fractions of the side: sky=0:0.3,0:1); repeat the flag for "
                             "several regions")
    parser.add_argument("--method", help="which stored maps to audit (default gradcam, else the "
                                         "first method of the run)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="flag a class when its lift (on-object share / object area "
                             f"fraction) is below this (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--diffuse", type=float, default=DEFAULT_DIFFUSE,
                        help="a class whose maps cover at least this fraction of the image "
                             "(median coverage) is DIFFUSE, not flagged (default "
                             f"{DEFAULT_DIFFUSE})")
    parser.add_argument("--flag-diffuse", action="store_true",
                        help="flag diffuse classes too (whole-image cues give flat maps)")
    parser.add_argument("--worst", type=int, default=DEFAULT_WORST,
                        help=f"how many of the most off-object images to rank per class "
                             f"(default {DEFAULT_WORST})")
    parser.add_argument("--json", help=f"where to write the audit (default OUT/{AUDIT_FILE})")
    parser.add_argument("--report", help="also write report.html and its PNGs into this folder")
    parser.add_argument("--activations", help="include the output folder of "
                                              "`sightline activations` in the report")
    parser.add_argument("--fail-on-flag", action="store_true",
                        help=f"exit with {EXIT_FLAGGED} when any class is flagged")


def run(args):
    audit = run_audit(args.out, method=args.method, masks=args.masks, boxes=args.boxes,
                      regions=args.regions or (), threshold=args.threshold, diffuse=args.diffuse,
                      flag_diffuse=args.flag_diffuse, worst=args.worst)
    path = write_audit(audit, args.json or os.path.join(args.out, AUDIT_FILE))
    for line in summary_lines(audit):
        print(line)
    print(f"wrote {path}")
    if args.report:
        from sightline.report.page import write_report
        activations = None
        if args.activations:
            from sightline.audit.activations import read_activations
            activations = [("model", read_activations(args.activations))]
        report = write_report(args.report, [("run", audit)], activations=activations)
        print(f"report: {report}")
    return EXIT_FLAGGED if (args.fail_on_flag and audit["flagged"]) else 0

