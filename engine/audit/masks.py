"""Where the object is: object masks by sample key (an HDF5 file, a PNG folder or a box
CSV) and named regions.

Masks: an HDF5 file with /keys [N] (the sample keys of the run, e.g. "cat/001.png") and
/masks [N,H,W] (non-zero on the object), or a folder of PNGs that mirrors the keys
(DIR/cat/001.png; a key not ending in .png looks for DIR/<key>.png). Boxes: a CSV with
the header key,y0,x0,y1,x1 in pixels of the input size (half-open; several rows of one
key are united). Regions (one per --regions flag): NAME=y0:y1,x0:x1 in pixels, or in
fractions of the side when any number has a decimal point (sky=0:0.3,0:1). Masks must
have the images' size (input_size in the run's attributes).
"""

import csv
import os

import numpy as np

from sightline.errors import UsageError


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
        raise UsageError(f"region {text!r} must look like NAME=y0:y1,x0:x1 (pixels, or "
                         "fractions of the side such as sky=0:0.3,0:1)") from None
    if fractional:
        values = [values[0] * height, values[1] * height, values[2] * width, values[3] * width]
    y0, y1, x0, x1 = (int(round(v)) for v in values)
    if not name or not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise UsageError(f"region {text!r} is empty or outside the {height}x{width} images")
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
                raise UsageError(f"mask file {path!r} has no /{name} dataset; it needs /keys [N] "
                                 "(the sample keys) and /masks [N,H,W]")
        # Shapes are read while the file is open: the messages below name them after it
        # is closed.
        key_shape = tuple(self.handle["keys"].shape)
        mask_shape = tuple(self.handle["masks"].shape)
        if len(key_shape) != 1:
            self.handle.close()
            raise UsageError(f"mask file {path!r}: /keys must be a 1-D list of sample keys; "
                             f"it has shape {key_shape}")
        if len(mask_shape) != 3 or mask_shape[0] != key_shape[0]:
            self.handle.close()
            raise UsageError(f"mask file {path!r}: /masks must be [N,H,W] with N = len(/keys) = "
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
        raise UsageError("pass --masks or --boxes, not both")
    if masks:
        if not os.path.exists(masks):
            raise UsageError(f"masks not found: {masks!r}; pass an HDF5 file with /keys and "
                             "/masks, or a folder of mask PNGs mirroring the image keys")
        if os.path.isdir(masks):
            return _folder_masks(masks, size)
        reader = _H5Masks(masks)
        return MaskSource("h5", f"mask file {os.path.abspath(masks)}", reader.size, reader,
                          set(reader.row))
    if boxes:
        return _box_masks(boxes, size)
    return None


def _folder_masks(folder, size):
    def read_folder(keys):
        out = []
        for key in keys:
            mask = _read_png(_png_mask_path(folder, key))
            if mask.shape != tuple(size):
                raise UsageError(f"mask {_png_mask_path(folder, key)!r} is "
                                 f"{mask.shape[0]}x{mask.shape[1]} but the images are "
                                 f"{size[0]}x{size[1]}; masks must have the images' size")
            out.append(mask != 0)
        return np.stack(out)

    source = MaskSource("folder", f"mask folder {os.path.abspath(folder)}", tuple(size),
                        read_folder, None)
    source.folder = folder
    return source


def _box_masks(boxes, size):
    if not os.path.exists(boxes):
        raise UsageError(f"box file not found: {boxes!r}")
    table = {}
    with open(boxes, newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"key", "y0", "x0", "y1", "x1"}
        if not reader.fieldnames or not needed <= set(reader.fieldnames):
            raise UsageError(f"box file {boxes!r} needs the header key,y0,x0,y1,x1; it has "
                             f"{','.join(reader.fieldnames or [])}")
        for number, row in enumerate(reader, start=2):
            try:
                box = tuple(int(round(float(row[k]))) for k in ("y0", "x0", "y1", "x1"))
            except (TypeError, ValueError):
                raise UsageError(f"box file {boxes!r} line {number}: y0,x0,y1,x1 must be "
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

def check_mask_size(mask_source, first_key, size):
    if mask_source.kind == "folder":
        first = _png_mask_path(mask_source.folder, first_key)
        if os.path.exists(first):
            mask_source.size = _read_png(first).shape[:2]
    if tuple(mask_source.size) != tuple(size):
        raise UsageError(f"{mask_source.description}: masks are {mask_source.size[0]}x"
                         f"{mask_source.size[1]} but the run's images are {size[0]}x{size[1]} "
                         "(input_size); masks must have the images' size")


def missing_masks(mask_source, keys):
    if mask_source.keys is not None:
        return [k for k in keys if k not in mask_source.keys]
    return [k for k in keys if not os.path.exists(_png_mask_path(mask_source.folder, k))]


def region_bounds(region):
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
