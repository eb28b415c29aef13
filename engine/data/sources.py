"""Data sources: a folder of images, TFRecord files, a .npy array, an HDF5 dataset.

A source lists its samples up front, in a deterministic order: sample `i` is the
same image in every run, on every worker. `records(start, stop)` gives a tf.data
dataset of the raw samples in that index range, each with its index, label and key;
`record_batches` and `read_contents` the same a batch at a time.
"""

import dataclasses
import glob
import os
import re
from typing import Optional

import numpy as np
import tensorflow as tf

from sightline.data.labels import folder_labels
from sightline.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfr")


@dataclasses.dataclass(frozen=True)
class Source:
    """A listed data source.

    kind: "folder", "tfrecord", "npy" or "h5"; description: what the manifest records;
    open_spec: what open_source takes to open the same source again (the manifest records it
    with kind, so that no reader parses the description);
    keys[N] str; labels[N] int32, the model's class (-1 where unknown); group_names and
    groups[N] int32 (-1 at the top): a folder source's class subfolders, which are
    labels only when --class-names maps them (sightline.data.labels).
    encoded: samples are encoded image files (decode them); else arrays [N,H,W,C].
    """

    kind: str
    description: str
    keys: tuple
    labels: np.ndarray
    encoded: bool
    array_shape: Optional[tuple] = None  # (H, W, C) of array sources
    paths: tuple = ()  # folder: one per sample; tfrecord: the files
    array_file: Optional[str] = None
    array_dataset: Optional[str] = None
    image_key: str = "image/encoded"
    label_key: str = "image/class/label"
    # tfrecord: per sample, which file (index into paths) and which record in it.
    record_files: Optional[np.ndarray] = None
    record_numbers: Optional[np.ndarray] = None
    # folder: files in it that are not samples, as (key, reason): listed, never dropped.
    unread: tuple = ()
    open_spec: str = ""
    group_names: tuple = ()
    groups: Optional[np.ndarray] = None

    def group_of(self, index):
        """groups[index] int32 of sample indices (-1 everywhere for a source without
        class folders)."""
        index = np.asarray(index, np.int64)
        if self.groups is None:
            return np.full(index.shape, -1, np.int32)
        return self.groups[index]

    @property
    def num_samples(self):
        return len(self.keys)

    def tables(self):
        """The listing as constant tensors, made once per pipeline (see `records`)."""
        tables = {"labels": tf.constant(self.labels, tf.int32)}
        if self.kind == "folder":
            tables["paths"] = tf.constant(list(self.paths), tf.string)
        elif self.kind == "tfrecord":
            tables["paths"] = tf.constant(list(self.paths), tf.string)
            tables["record_files"] = tf.constant(self.record_files, tf.int64)
            tables["record_numbers"] = tf.constant(self.record_numbers, tf.int64)
        return tables

    def records(self, start, stop, tables=None):
        """tf.data of (image bytes or image array, label, index) for samples [start, stop),
        one sample at a time (see `record_batches` for the pipeline's way)."""
        return (self.record_batches(start, stop, 1, tables)
                .map(lambda raw, labels, index: (self.read_contents(raw), labels, index))
                .unbatch())

    def record_batches(self, start, stop, batch_size, tables=None):
        """tf.data of (raw[b], labels[b] int32, index[b] int64) for samples [start, stop),
        batch_size at a time; `read_contents` turns raw into the samples: raw is file
        paths (folder), serialized records (tfrecord) or images [b,H,W,C] (arrays).

        Reading and parsing wait for read_contents, so that the pipeline does them a batch
        at a time, in parallel: per file, tf.data's own per-element work cost twice the
        reading. start and stop may be tensors: the pipeline builds this once inside a
        flat_map over shard ranges, so its functions are traced once per job, not per shard.
        """
        tables = self.tables() if tables is None else tables
        start = tf.cast(start, tf.int64)
        stop = tf.cast(stop, tf.int64)
        meta = (tables["labels"][start:stop], tf.range(start, stop, dtype=tf.int64))
        if self.kind == "folder":
            return tf.data.Dataset.from_tensor_slices((tables["paths"][start:stop], *meta)
                                                      ).batch(batch_size)
        if self.kind == "tfrecord":
            # Open only the files from the first sample's file on and skip within that
            # file: a shard late in the dataset does not read every record before it.
            first_file = tables["record_files"][start]
            raw = (tf.data.TFRecordDataset(tables["paths"][first_file:])
                   .skip(tables["record_numbers"][start]).take(stop - start))
        else:
            raw = tf.data.Dataset.from_generator(
                lambda first, last: _array_rows(self, int(first), int(last)), args=(start, stop),
                output_signature=tf.TensorSpec(self.array_shape, self.array_dtype()))
        return tf.data.Dataset.zip((raw.batch(batch_size),
                                    tf.data.Dataset.from_tensor_slices(meta).batch(batch_size))
                                   ).map(lambda batch, labels_index: (batch, *labels_index))

    def read_contents(self, raw):
        """raw[b] of `record_batches` -> the samples: encoded files [b] string, or the
        arrays themselves."""
        if self.kind == "folder":
            # One loop over the batch's files.
            return tf.map_fn(tf.io.read_file, raw, fn_output_signature=tf.string,
                             parallel_iterations=1)
        if self.kind == "tfrecord":
            return tf.io.parse_example(
                raw, {self.image_key: tf.io.FixedLenFeature([], tf.string)})[self.image_key]
        return raw

    def array_dtype(self):
        """The tf.DType an array source's samples are stored in (read from the file)."""
        with _open_array(self) as array:
            return tf.as_dtype(array.dtype)

    def read_error(self, index):
        """Why sample `index` cannot be decoded, or None (it can)."""
        if not self.encoded:
            return None
        try:
            if self.kind == "folder":
                data = tf.io.read_file(self.paths[index])
            else:
                record = next(iter(self.records(index, index + 1)))
                data = record[0]
            tf.io.decode_image(data, expand_animations=False)
        except (tf.errors.OpError, OSError, StopIteration) as error:
            message = getattr(error, "message", None) or str(error) or type(error).__name__
            # TensorFlow wraps the decoder's words in op names: keep the words only.
            message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
            message = re.sub(r"\s*\[Op:\w+\].*$", "", message.strip().splitlines()[-1])
            return message.strip()[:200] or type(error).__name__
        return None


class _open_array:
    """Context manager over an .npy (memory-mapped) or HDF5 dataset."""

    def __init__(self, source):
        self.source = source
        self.handle = None

    def __enter__(self):
        if self.source.kind == "npy":
            return np.load(self.source.array_file, mmap_mode="r")
        import h5py
        self.handle = h5py.File(self.source.array_file, "r")
        return self.handle[self.source.array_dataset]

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()


def array_batches(source, ranges, batch_size, batches_per_block=1):
    """NumPy blocks of an array source's sample ranges, read by slicing.

    Yields (position, images[n,H,W,C] in the array's dtype, labels[n] int32, index[n]
    int64, count): up to `batches_per_block` batches' rows (an int, or a function called
    before each block that returns it), n a multiple of batch_size;
    the first `count` rows are samples, the rest padding (zeros, label and index -1),
    and no block holds samples of two ranges. Slices of a memory-mapped .npy or an HDF5
    dataset cost one copy per block, where a per-sample tf.data generator cost a Python
    call per image. Fresh arrays per block: TensorFlow may keep a view of them.
    """
    blocks = batches_per_block if callable(batches_per_block) else lambda: batches_per_block
    with _open_array(source) as array:
        for position, (start, stop) in enumerate(ranges):
            begin = start
            while begin < stop:
                count = min(batch_size * blocks(), stop - begin)
                rows = -(-count // batch_size) * batch_size  # padded to whole batches
                images = np.zeros((rows, *source.array_shape), array.dtype)
                images[:count] = array[begin:begin + count]
                labels = np.full(rows, -1, np.int32)
                labels[:count] = source.labels[begin:begin + count]
                index = np.full(rows, -1, np.int64)
                index[:count] = np.arange(begin, begin + count)
                yield position, images, labels, index, count
                begin += count


def _array_rows(source, start, stop, chunk=256):
    with _open_array(source) as array:
        for begin in range(start, stop, chunk):
            block = np.asarray(array[begin:min(begin + chunk, stop)])
            yield from block


# ----------------------------------------------------------------------------- opening


def open_source(spec, *, labels=None, image_key="image/encoded", label_key="image/class/label",
                class_names=None):
    """List a source. spec: a folder, a TFRecord file/glob/folder, `x.npy`, `x.h5:/images`.

    labels: for arrays, a `.npy` file or `file.h5:/dataset` of int labels [N].
    class_names: a ClassNames (sightline.data.labels): how a folder's class subfolders map
    to the model's classes; without it they are groups and every label is unknown.
    Raises ValueError with one line when the source is missing, empty or unreadable.
    """
    source = _open(spec, labels, image_key, label_key)
    if class_names is not None and class_names.folders is not None and source.kind != "folder":
        raise UsageError(f"--class-names {class_names.given!r} maps folders to classes, but "
                         f"{spec!r} is not a folder of class subfolders; give the names in "
                         "class order instead")
    if source.kind == "folder":
        source = dataclasses.replace(source, labels=folder_labels(
            class_names, source.group_names, source.groups))
    return source


def _open(spec, labels, image_key, label_key):
    if not isinstance(spec, (str, os.PathLike)):
        raise UsageError(f"data source must be a path; got {type(spec).__name__}")
    spec = os.fspath(spec)
    path, _, dataset = _split_h5_spec(spec)
    if path.lower().endswith((".h5", ".hdf5")):
        return _open_h5(path, dataset, spec, labels)
    if path.lower().endswith(".npy"):
        return _open_npy(path, labels)
    if os.path.isdir(spec):
        records = sorted(f for f in glob.glob(os.path.join(spec, "*"))
                         if f.lower().endswith(TFRECORD_EXTENSIONS))
        if records:
            return _open_tfrecords(records, spec, image_key, label_key)
        return _open_folder(spec)
    if any(ch in spec for ch in "*?[") or spec.lower().endswith(TFRECORD_EXTENSIONS):
        records = sorted(glob.glob(spec))
        if not records:
            raise UsageError(f"no TFRecord files match {spec!r}; check the path or pattern")
        return _open_tfrecords(records, spec, image_key, label_key)
    if not os.path.exists(spec):
        raise UsageError(f"data source not found: {spec!r}; pass a folder of images, TFRecord "
                         "files, a .npy file or file.h5:/dataset")
    raise UsageError(f"unrecognised data source {spec!r}: expected a folder of images, TFRecord "
                     "files (.tfrecord), a .npy file or file.h5:/dataset")


def _split_h5_spec(spec):
    lowered = spec.lower()
    for ext in (".h5:", ".hdf5:"):
        position = lowered.find(ext)
        if position >= 0:
            cut = position + len(ext) - 1
            return spec[:cut], ":", spec[cut + 1:]
    return spec, "", ""


def _open_folder(folder):
    entries = sorted(os.listdir(folder))
    group_names = tuple(e for e in entries if os.path.isdir(os.path.join(folder, e)))
    paths, groups, unread = [], [], []

    def take(path, group):
        if path.lower().endswith(IMAGE_EXTENSIONS):
            paths.append(path)
            groups.append(group)
        else:
            extension = os.path.splitext(path)[1].lower() or "(none)"
            unread.append((os.path.relpath(path, folder), f"unsupported file type {extension}"))

    for name in entries:
        full = os.path.join(folder, name)
        if os.path.isfile(full):
            take(full, -1)
    for group, group_name in enumerate(group_names):
        for root, dirs, files in os.walk(os.path.join(folder, group_name)):
            dirs.sort()
            for name in sorted(files):
                take(os.path.join(root, name), group)
    if not paths:
        raise UsageError(f"data folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}), "
                         "directly or in class subfolders")
    keys = tuple(os.path.relpath(p, folder) for p in paths)
    return Source(kind="folder", description=f"folder {os.path.abspath(folder)}",
                  open_spec=os.path.abspath(folder), keys=keys,
                  labels=np.full(len(paths), -1, np.int32), encoded=True,
                  paths=tuple(paths), unread=tuple(unread), group_names=group_names,
                  groups=np.asarray(groups, np.int32))


def _open_tfrecords(files, spec, image_key, label_key):
    keys, labels, record_files, record_numbers = [], [], [], []
    for file_index, file in enumerate(files):
        try:
            for number, record in enumerate(tf.data.TFRecordDataset(file)):
                record_files.append(file_index)
                record_numbers.append(number)
                example = tf.train.Example.FromString(record.numpy())
                features = example.features.feature
                if image_key not in features:
                    raise UsageError(f"TFRecord {file!r} record {number} has no feature "
                                     f"{image_key!r}; features: {', '.join(sorted(features))}; "
                                     "set the image key (--tfrecord-image-key)")
                label = features[label_key].int64_list.value if label_key in features else []
                labels.append(int(label[0]) if len(label) else -1)
                keys.append(f"{os.path.basename(file)}:{number}")
        except tf.errors.OpError as error:
            raise UsageError(f"TFRecord file {file!r} is unreadable ({error.message.strip()})") from None
    if not keys:
        raise UsageError(f"TFRecord source {spec!r} holds no records")
    return Source(kind="tfrecord", description=f"tfrecord {spec}", open_spec=spec,
                  keys=tuple(keys),
                  labels=np.asarray(labels, np.int32), encoded=True,
                  paths=tuple(files), image_key=image_key, label_key=label_key,
                  record_files=np.asarray(record_files, np.int32),
                  record_numbers=np.asarray(record_numbers, np.int64))


def _check_array(shape, what):
    if len(shape) != 4 or shape[-1] not in (1, 3, 4):
        raise UsageError(f"{what} must hold images [N,H,W,C] with C in 1, 3, 4; its shape is "
                         f"{tuple(shape)}")
    if shape[0] == 0:
        raise UsageError(f"{what} is empty (N = 0)")


def _open_npy(path, labels):
    if not os.path.exists(path):
        raise UsageError(f"data source not found: {path!r}")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise UsageError(f"data source {path!r} is not a readable .npy array ({error})") from None
    _check_array(array.shape, f"array {path!r}")
    keys = tuple(f"{os.path.basename(path)}[{i}]" for i in range(array.shape[0]))
    return Source(kind="npy", description=f"npy {os.path.abspath(path)}",
                  open_spec=os.path.abspath(path), keys=keys,
                  labels=_read_labels(labels, array.shape[0]), encoded=False,
                  array_shape=tuple(array.shape[1:]), array_file=path)


def _open_h5(path, dataset, spec, labels):
    import h5py
    if not os.path.exists(path):
        raise UsageError(f"data source not found: {path!r}")
    if not dataset:
        raise UsageError(f"HDF5 source {spec!r} names no dataset; write it as file.h5:/images")
    try:
        with h5py.File(path, "r") as handle:
            if dataset not in handle:
                raise UsageError(f"HDF5 file {path!r} has no dataset {dataset!r}; it has "
                                 f"{', '.join(sorted(handle.keys()))}")
            shape = handle[dataset].shape
    except OSError as error:
        raise UsageError(f"data source {path!r} is not a readable HDF5 file ({error})") from None
    _check_array(shape, f"dataset {spec!r}")
    keys = tuple(f"{os.path.basename(path)}:{dataset}[{i}]" for i in range(shape[0]))
    return Source(kind="h5", description=f"h5 {os.path.abspath(path)}:{dataset}",
                  open_spec=f"{os.path.abspath(path)}:{dataset}", keys=keys,
                  labels=_read_labels(labels, shape[0]), encoded=False,
                  array_shape=tuple(shape[1:]), array_file=path, array_dataset=dataset)


def _read_labels(spec, count):
    if spec is None:
        return np.full(count, -1, np.int32)
    path, _, dataset = _split_h5_spec(os.fspath(spec))
    try:
        if dataset:
            import h5py
            with h5py.File(path, "r") as handle:
                values = np.asarray(handle[dataset])
        else:
            values = np.load(path)
    except (OSError, KeyError, ValueError) as error:
        raise UsageError(f"labels {spec!r} are unreadable ({error})") from None
    if values.shape != (count,) or not np.issubdtype(values.dtype, np.integer):
        raise UsageError(f"labels {spec!r} must be {count} integers, one per image; got "
                         f"shape {values.shape} of {values.dtype}")
    return values.astype(np.int32)
