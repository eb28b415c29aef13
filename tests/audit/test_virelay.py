"""clusters.h5 (the exact contract) and the ViRelAy export against ViRelAy's documented
layout: database specification (input, attribution, analysis files) and project file."""

import json
import os

import h5py
import numpy as np
import pytest

from sightline.audit.clusters import cluster_maps
from sightline.audit.virelay import (ClustersWriter, VirelayExport, read_clusters,
                                     write_clusters)

from tests.audit.planted_maps import blob_maps

CLASS_NAMES = ["cross", "disc", "unused"]


def test_clusters_file_round_trip_with_exact_types(tmp_path):
    path = str(tmp_path / "clusters.h5")
    keys = ["cat/001.png", "ñandú/é.png", "x", "dog/3.png"]
    with ClustersWriter(path) as writer:
        writer.append([5, 9], keys[:2], [0, 2], [1, -1], [[0.5, -1.0], [np.nan, np.nan]])
        writer.append([11, 12], keys[2:], [1, 1], [3, 3], [[1, 2], [3, 4]])
    with h5py.File(path, "r") as handle:
        assert handle["sample/index"].dtype == np.int64 and handle["sample/index"].shape == (4,)
        assert h5py.check_string_dtype(handle["sample/key"].dtype).encoding == "utf-8"
        assert h5py.check_string_dtype(handle["sample/key"].dtype).length is None  # variable
        assert handle["class"].dtype == np.int32 and handle["cluster"].dtype == np.int32
        assert handle["embedding"].dtype == np.float32 and handle["embedding"].shape == (4, 2)
    back = read_clusters(path)
    assert back["key"] == keys
    np.testing.assert_array_equal(back["index"], [5, 9, 11, 12])
    np.testing.assert_array_equal(back["class"], [0, 2, 1, 1])
    np.testing.assert_array_equal(back["cluster"], [1, -1, 3, 3])
    np.testing.assert_array_equal(back["embedding"], [[0.5, -1], [np.nan, np.nan], [1, 2], [3, 4]])
    assert os.listdir(tmp_path) == ["clusters.h5"]


def test_clusters_file_is_all_or_nothing(tmp_path):
    path = str(tmp_path / "clusters.h5")
    with pytest.raises(ValueError, match="rows must match.*3 indices, 2 keys"):
        write_clusters(path, [1, 2, 3], ["a", "b"], [0, 0, 0], [0, 0, 0], np.zeros((3, 2)))
    assert os.listdir(tmp_path) == []  # no half-written file under any name


@pytest.fixture(scope="module")
def audited():
    """Two classes of hand-made maps (4x4 cells) with 8x8 RGB images, clustered."""
    rng = np.random.default_rng(0)
    count = 90
    explained = np.repeat([0, 1], [50, 40])
    corner = rng.random(count) < 0.3
    centres = [(0.85, 0.85) if hit else (0.5, 0.5) for hit in corner]
    maps = blob_maps(centres, rng, side=4, sigma=0.6, noise=0.05)
    images = rng.uniform(0, 1, (count, 8, 8, 3)).astype(np.float32)
    labels = np.where(rng.random(count) < 0.2, -1, explained)
    predictions = rng.dirichlet(np.ones(3), count).astype(np.float32)
    clusters, cluster, layout, model = cluster_maps(np.arange(count), explained, maps,
                                                    class_names=CLASS_NAMES)
    return dict(maps=maps, images=images, explained=explained, labels=labels,
                predictions=predictions, clusters=clusters, cluster=cluster, layout=layout,
                model=model)


@pytest.fixture(scope="module")
def project(audited, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("virelay"))
    a = audited
    with VirelayExport(directory, class_names=CLASS_NAMES, method="gradcam",
                       name="demo", model="fashion-cnn") as export:
        for part in (slice(0, 37), slice(37, None)):
            export.add(a["images"][part], a["maps"][part], a["explained"][part],
                       a["cluster"][part], a["layout"][part], labels=a["labels"][part],
                       predictions=a["predictions"][part])
        path = export.finish(a["model"], a["clusters"])
    return directory, path


def test_project_file_has_the_documented_keys_and_its_paths_exist(project):
    directory, path = project
    assert os.path.basename(path) == "project.yaml"
    with open(path) as handle:
        document = json.load(handle)  # JSON is YAML's flow style: yaml.safe_load reads it
    spec = document["project"]
    assert set(spec) == {"name", "model", "label_map", "dataset", "attributions", "analyses"}
    assert spec["dataset"] == {"name": "demo", "type": "hdf5", "path": "demo.input.h5",
                               "input_width": 8, "input_height": 8,
                               "up_sampling_method": "none", "down_sampling_method": "none"}
    assert spec["attributions"]["attribution_method"] == "gradcam"
    assert spec["attributions"]["attribution_strategy"] in ("true_label", "predicted_label")
    assert spec["analyses"][0]["analysis_method"] == "spectral"
    referenced = [spec["label_map"], spec["dataset"]["path"], *spec["attributions"]["sources"],
                  *spec["analyses"][0]["sources"]]
    for name in referenced:  # relative to the project file
        assert os.path.isfile(os.path.join(os.path.dirname(path), name)), name
    assert sorted(os.listdir(directory)) == sorted(referenced + ["project.yaml"])
    with open(os.path.join(directory, spec["label_map"])) as handle:
        label_map = json.load(handle)
    assert label_map == [{"index": i, "word_net_id": f"{i:08d}", "name": n}
                         for i, n in enumerate(CLASS_NAMES)]


def test_input_and_attribution_files_follow_the_specification(project, audited):
    directory, _ = project
    a = audited
    with h5py.File(os.path.join(directory, "demo.input.h5"), "r") as handle:
        data = handle["data"]
        # samples x C x H x W, 8-bit: ViRelAy's image server hands it to Pillow as it is.
        assert data.dtype == np.uint8 and data.shape == (90, 3, 8, 8)
        expected = np.rint(a["images"] * 255.0).astype(np.uint8).transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(data[()], expected)
        # n-hot labels: an unknown label is no class at all, never the explained one.
        label = handle["label"][()]
        assert label.dtype == bool and label.shape == (90, len(CLASS_NAMES))
        np.testing.assert_array_equal(label.sum(axis=1), (a["labels"] >= 0).astype(int))
        known = a["labels"] >= 0
        np.testing.assert_array_equal(label[known].argmax(axis=1), a["labels"][known])
        np.testing.assert_array_equal(handle["label_known"][()], a["labels"] >= 0)
    with h5py.File(os.path.join(directory, "demo.attribution.h5"), "r") as handle:
        assert handle["index"].dtype == np.uint32
        np.testing.assert_array_equal(handle["index"][()], np.arange(90))
        attribution = handle["attribution"]
        assert attribution.dtype == np.float32 and attribution.shape == (90, 1, 8, 8)
        # 4x4 cells shown at 8x8: every cell repeated over its 2x2 pixels.
        expected = np.stack([np.kron(m, np.ones((2, 2))) for m in a["maps"]])[:, None]
        np.testing.assert_allclose(attribution[()], expected, rtol=1e-6)
        assert np.issubdtype(handle["label"].dtype, np.unsignedinteger)
        np.testing.assert_array_equal(handle["label"][()], a["explained"])
        assert handle["prediction"].dtype == np.float32
        np.testing.assert_array_equal(handle["prediction"][()], a["predictions"])


def test_analysis_file_reads_as_virelay_reads_it(project, audited):
    directory, _ = project
    a = audited
    with open(os.path.join(directory, "label-map.json")) as handle:
        by_word_net_id = {entry["word_net_id"]: entry for entry in json.load(handle)}
    with h5py.File(os.path.join(directory, "demo.analysis.h5"), "r") as handle, \
            h5py.File(os.path.join(directory, "demo.attribution.h5"), "r") as attributions:
        assert sorted(handle) == ["00000000", "00000001"]  # one category per explained class
        for category in handle:
            label = by_word_net_id[category]["index"]
            group = handle[category]
            index = group["index"][()]
            assert group["index"].dtype == np.uint32
            # The analysis indexes attribution rows, all of its category's class.
            np.testing.assert_array_equal(attributions["label"][()][index], label)
            spectral = group["embedding"]["spectral"]
            assert spectral.dtype == np.float32 and spectral.shape == (len(index), 2)
            np.testing.assert_array_equal(spectral[()], a["layout"][index])
            assert spectral.attrs["eigenvalue"].dtype == np.float32
            assert spectral.attrs["eigenvalue"].shape == (2,)
            assert set(group["cluster"]) == {"sightline", "flagged"}  # the same in every category
            clustering = group["cluster"]["sightline"]
            assert clustering.attrs["embedding"] == "spectral"
            fit = a["model"].fits[label]
            assert clustering.attrs["k"] == fit.cluster_count
            np.testing.assert_array_equal(clustering[()],
                                          a["cluster"][index] - a["model"].offsets[label])
            sizes = np.bincount(clustering[()], minlength=fit.cluster_count)
            expected = [c["size"] for c in a["clusters"] if c["class"] == label]
            assert list(sizes) == expected
            flagged = {c["id"] for c in a["clusters"] if c["flagged"]}
            np.testing.assert_array_equal(group["cluster"]["flagged"][()],
                                          [int(c in flagged) for c in a["cluster"][index]])


def test_the_planted_corner_is_a_flagged_cluster_in_the_export(audited):
    # Guard for the export tests above: they must see a real flagged cluster.
    assert any(c["flagged"] for c in audited["clusters"])


def test_export_refuses_bad_input_and_leaves_nothing(tmp_path, audited):
    directory = str(tmp_path / "out")
    with pytest.raises(ValueError, match="attribution strategy must be one of"):
        VirelayExport(directory, class_names=CLASS_NAMES, method="gradcam", strategy="mine")
    with pytest.raises(ValueError, match=r"explained classes must lie in 0..2"):
        with VirelayExport(directory, class_names=CLASS_NAMES, method="gradcam") as export:
            export.add(np.zeros((2, 8, 8, 3)), np.ones((2, 4, 4)), [0, 3], [0, 0],
                       np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"predictions must be \[n, classes\] = \[2, 3\]"):
        with VirelayExport(directory, class_names=CLASS_NAMES, method="gradcam") as export:
            export.add(np.zeros((2, 8, 8, 3)), np.ones((2, 4, 4)), [0, 1], [0, 0],
                       np.zeros((2, 2)), predictions=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="nothing to export"):
        with VirelayExport(directory, class_names=CLASS_NAMES, method="gradcam") as export:
            export.finish(audited["model"], audited["clusters"])
    assert os.listdir(directory) == []
