"""The on-disk format's names, each spelled once: files of an output folder, datasets of a
shard (and of index.h5, which mirrors them), and the label attributes.

Every other room names a dataset through these, so a change of format is a change here
(tests/store/test_layout.py fails on a dataset path spelled elsewhere). Plain strings, so
a chunk from Results.chunks is still a dict keyed by them.
"""
import numpy as np

MANIFEST_FILE = "manifest.json"
# The manifest's record of how to open the run's source again: {"kind", "spec"}. Runs
# written before it have only run["source"], the human description "kind spec".
SOURCE_SPEC = "source_spec"
REOPENABLE_SOURCES = ("npy", "folder", "h5", "tfrecord")
INDEX_FILE = "index.h5"
SHARD_DIRECTORY = "shards"
# Written by the audit beside the run; its rows use the sample datasets' names below.
CLUSTERS_FILE = "clusters.h5"

SAMPLE_INDEX = "sample/index"  # int64 [n], position in the source, stable across runs
SAMPLE_KEY = "sample/key"  # bytes [n], file path or record key
SAMPLE_LABEL = "sample/label"  # int32 [n], -1 where unknown
SAMPLE_GROUP = "sample/group"  # int32 [n], index into GROUP_NAMES_ATTRIBUTE, -1 for none
# The explained class in files that hold sample rows but no /pred group (evaluate's).
SAMPLE_TARGET = "sample/target"
PRED_TARGET = "pred/target"  # int32 [n], the explained class
PRED_CLASS = "pred/class"  # int32 [n], the predicted class
PRED_SCORE = "pred/score"  # float32 [n], probability of the predicted class

HEATMAP_GROUP = "heatmaps"
# Each target-layer channel's relevance to the explained class, float16 [n, K] scaled
# per sample to max |r| = 1, and the float32 [n] factor that undoes it. The attribute
# "relevance" names how it was computed ("" when the shards hold none).
RELEVANCE_GROUP = "relevance"
RELEVANCE = f"{RELEVANCE_GROUP}/channels"
RELEVANCE_SCALE = f"{RELEVANCE_GROUP}/channels_scale"
RELEVANCE_COLUMNS = (RELEVANCE, RELEVANCE_SCALE)

SCALAR_DATASETS = {
    SAMPLE_INDEX: np.int64, SAMPLE_LABEL: np.int32, SAMPLE_GROUP: np.int32,
    PRED_TARGET: np.int32, PRED_CLASS: np.int32, PRED_SCORE: np.float32,
}
# Per-sample values a writer may leave out, and what they then hold.
SCALAR_DEFAULTS = {SAMPLE_GROUP: -1}

# What the labels mean, as file attributes of every shard and of index.h5 (arrays of
# UTF-8 strings, so an h5py reader maps /pred/class and /sample/label to class names and
# /sample/group to folder names): absent when unknown.
CLASS_NAMES_ATTRIBUTE = "class_names"  # [num_classes], the model's classes in order
GROUP_NAMES_ATTRIBUTE = "group_names"  # the source's class folders, in /sample/group order
NUM_CLASSES_ATTRIBUTE = "num_classes"
RELEVANCE_ATTRIBUTE = "relevance"


def heatmap(method):
    """/heatmaps/<method>: float16 [n, h, w], each map scaled to [0, 1]."""
    return f"{HEATMAP_GROUP}/{method}"


def heatmap_scale(method):
    """/heatmaps/<method>_scale: float32 [n], the factor that undoes the scaling."""
    return f"{HEATMAP_GROUP}/{method}_scale"


def heatmap_method(name):
    """The method of a /heatmaps/<method> name, or None for any other name (scales too)."""
    group, _, method = name.partition("/")
    if group != HEATMAP_GROUP or not method or method.endswith("_scale"):
        return None
    return method


def in_relevance_group(name):
    """Whether name is one of the /relevance datasets."""
    return name.partition("/")[0] == RELEVANCE_GROUP and "/" in name
