"""`sightline explain` end to end, in-process: the file contract, sources, resume,
devices, precision, reading back, and the table of bad inputs."""

import json
import os
import shutil
import signal

import h5py
import numpy as np
import pytest

import sightline.jobs.runner
from sightline import explain, open_results
from sightline.bench.eager_baseline import eager_maps
from sightline.cli.main import main
from sightline.kernels.methods import LAYER
from sightline.kernels.methods import METHODS as METHOD_TABLE
from sightline.store.shards import map_chunk_rows, sha256_of
from tests.jobs.jobs import (IMAGE_SHAPE, read_index, write_arrays, write_image_folder,
                               write_model)
from tests.references import reference_bilinear
from tests.tolerances import FLOAT16_ATOL, MODEL_RELATIVE_ATOL

METHODS = "cam,gradcam,saliency,smoothgrad"
# A map's scale (its largest |value|) from the job against the eager loop: the same
# relative error as the raw maps (MODEL_RELATIVE_ATOL), with a factor 2 of room.
SCALE_RTOL = 2 * MODEL_RELATIVE_ATOL


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    write_image_folder(str(root / "images"))
    images, labels = write_arrays(str(root))
    write_model(str(root / "model.keras"))
    write_model(str(root / "other.keras"), seed=1)
    return {"root": root, "images": images, "labels": labels}


def run(workspace, out, *extra, data="images"):
    root = workspace["root"]
    return main(["explain", "--model", str(root / "model.keras"), "--data", str(root / data),
                 "--out", str(root / out), "--quiet", *extra])


@pytest.fixture(scope="module")
def folder_run(workspace):
    code = run(workspace, "folder-out", "--methods", METHODS, "--num-copies", "3",
               "--shard-size", "10", "--batch-size", "4", "--preprocess", "[0,1]",
               "--devices", "1")
    assert code == 0
    return workspace["root"] / "folder-out"


def test_output_layout_matches_the_contract(folder_run):
    out = str(folder_run)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["num_shards"] == 3 and manifest["shards_complete"] == 3  # 25 samples / 10
    assert manifest["run"]["methods"] == METHODS.split(",")
    assert manifest["run"]["layer"] == "conv_c" and manifest["run"]["logits_layer"] == "logits"
    assert manifest["run"]["num_samples"] == 25 and manifest["replicas"] == 1
    assert manifest["run"]["model_sha256"] == sha256_of(str(folder_run.parent / "model.keras"))
    assert {"tensorflow", "keras", "tf_keras", "numpy", "h5py"} <= set(manifest["software"])
    assert manifest["compression"] == "none"
    for entry in manifest["shards"]:
        path = os.path.join(out, entry["file"])
        assert entry["state"] == "complete" and entry["sha256"] == sha256_of(path)
        with h5py.File(path, "r") as shard:
            n = entry["num_samples"]
            assert shard["heatmaps/cam"].shape == (n, 8, 8)  # native: the layer's resolution
            assert shard["heatmaps/saliency"].shape == (n, 16, 16)
            for method in METHODS.split(","):
                maps = shard[f"heatmaps/{method}"]
                assert maps.dtype == np.float16
                assert maps.chunks == (map_chunk_rows(*maps.shape[1:]), *maps.shape[1:])
                # The default, "auto", on a CPU: no filter (the writer would take its
                # CPU from the model).
                assert maps.compression is None and not maps.shuffle
                values = maps[:]
                assert values.min() >= 0 and values.max() <= 1
                assert shard[f"heatmaps/{method}_scale"].dtype == np.float32
            assert shard["sample/index"].dtype == np.int64
            for name in ("sample/label", "pred/target", "pred/class"):
                assert shard[name].dtype == np.int32 and shard[name].shape == (n,)
            assert shard["pred/score"].dtype == np.float32
            assert json.loads(shard.attrs["parameters"])["smoothgrad"]["num_copies"] == 3
            assert list(shard.attrs["input_size"]) == [16, 16]
            indices = shard["sample/index"][:]
            assert np.all((indices >= entry["sample_start"]) & (indices < entry["sample_stop"]))
            assert shard.attrs["fingerprint"] == manifest["fingerprint"]
            assert shard.attrs["worker"] == 0 and shard.attrs["workers"] == 1
        record = json.load(open(path[:-len(".h5")] + ".json"))
        assert record["fingerprint"] == manifest["fingerprint"] and record["worker"] == 0
    assert len(manifest["fingerprint"]) == 64
    assert not [f for f in os.listdir(os.path.join(out, "shards")) if ".tmp" in f]


def test_corrupt_image_is_skipped_and_recorded(folder_run):
    manifest = json.load(open(os.path.join(str(folder_run), "manifest.json")))
    assert [s["key"] for s in manifest["skipped"]] == ["dog/zz-broken.png"]
    assert manifest["skipped"][0]["reason"].startswith("truncated")  # no IEND chunk
    data = read_index(str(folder_run))
    assert len(data["sample/index"]) == 24
    assert manifest["skipped"][0]["index"] not in data["sample/index"]
    # Class subfolders give the groups, in sorted order; labels only with --class-names.
    keys = [k.decode() for k in data["sample/key"]]
    groups = data["sample/group"]
    assert all(group == (0 if key.startswith("cat/") else 1) for key, group in zip(keys, groups))
    assert (data["sample/label"] == -1).all()


@pytest.fixture(scope="module")
def eager_reference(workspace):
    """What a job on images.npy must store, from the eager loop on the saved model (walked by
    itself, sharing nothing with the engine's step) and a plain Keras call for predictions."""
    import keras
    model = keras.models.load_model(str(workspace["root"] / "model.keras"))
    images = workspace["images"]
    probabilities = np.asarray(model(images, training=False), np.float64)
    cache = {}

    def reference(method, input_size=None, **options):
        """(heatmaps as stored: ReLU(raw) / max|raw|, scales: max|raw|) for every image."""
        key = (method, input_size, tuple(sorted(options.items())))
        if key not in cache:
            raw = eager_maps(method, model, images, **options).astype(np.float64)
            if input_size is not None:  # --store input: CAM-family maps resized first
                raw = reference_bilinear(raw, input_size)
            scales = np.abs(raw).max(axis=(1, 2))
            cache[key] = np.maximum(raw, 0) / scales[:, None, None], scales
        return cache[key]

    reference.predictions = probabilities.argmax(-1)
    reference.scores = probabilities.max(-1)
    return reference


def assert_matches_eager_reference(data, reference, options, input_size=None):
    """Every stored map and scale of `data` (index.h5 of a job on images.npy) against the
    eager loop; predictions against the model's own probabilities."""
    np.testing.assert_array_equal(data["sample/index"], np.arange(len(reference.predictions)))
    np.testing.assert_array_equal(data["pred/class"], reference.predictions)
    np.testing.assert_allclose(data["pred/score"], reference.scores, rtol=1e-5)
    np.testing.assert_array_equal(data["pred/target"], reference.predictions)
    methods = [name[len("heatmaps/"):] for name in data
               if name.startswith("heatmaps/") and not name.endswith("_scale")]
    assert methods
    for method in methods:
        resize = input_size if METHOD_TABLE[method].resolution == LAYER else None
        maps, scales = reference(method, resize, **options.get(method, {}))
        np.testing.assert_allclose(data[f"heatmaps/{method}"].astype(np.float64), maps,
                                   atol=FLOAT16_ATOL, err_msg=method)
        np.testing.assert_allclose(data[f"heatmaps/{method}_scale"], scales,
                                   rtol=SCALE_RTOL, err_msg=method)


def test_shard_maps_equal_explain_and_the_eager_loop(workspace, eager_reference):
    out = workspace["root"] / "array-out"
    assert run(workspace, "array-out", "--data", str(workspace["root"] / "images.npy"),
               "--methods", "gradcam,saliency,integrated_gradients", "--num-steps", "8",
               "--map-size", "input", "--shard-size", "8", "--batch-size", "4", "--devices", "1",
               data="images.npy") == 0
    data = read_index(str(out))
    # The independent reference: the eager loop, maps resized by a float64 bilinear.
    assert_matches_eager_reference(data, eager_reference,
                                   {"integrated_gradients": {"num_steps": 8}},
                                   input_size=IMAGE_SHAPE[:2])
    # And the same numbers as `explain` on the arrays, within float16.
    expected = explain(str(workspace["root"] / "model.keras"), workspace["images"],
                       methods=("gradcam", "saliency", "integrated_gradients"), num_steps=8,
                       map_size="input")
    for method in ("gradcam", "saliency", "integrated_gradients"):
        np.testing.assert_allclose(data[f"heatmaps/{method}"].astype(np.float32),
                                   expected.heatmaps[method], atol=FLOAT16_ATOL)
        np.testing.assert_allclose(data[f"heatmaps/{method}_scale"], expected.scales[method],
                                   rtol=1e-4)
    np.testing.assert_array_equal(data["pred/class"], expected.predictions)
    np.testing.assert_allclose(data["pred/score"], expected.scores, rtol=1e-5)


def test_two_devices_equal_one_and_the_eager_loop(workspace, folder_run, eager_reference):
    # Folder source (decoding, a skipped image, a short last batch split over replicas):
    # two devices store what one device stores.
    assert run(workspace, "two-devices", "--methods", METHODS, "--num-copies", "3",
               "--shard-size", "10", "--batch-size", "4", "--preprocess", "[0,1]",
               "--devices", "2") == 0
    manifest = json.load(open(workspace["root"] / "two-devices" / "manifest.json"))
    assert manifest["replicas"] == 2
    one, two = read_index(str(folder_run)), read_index(str(workspace["root"] / "two-devices"))
    assert set(one) == set(two)
    for name in one:
        if one[name].dtype.kind == "S":
            np.testing.assert_array_equal(two[name], one[name], err_msg=name)
        else:
            np.testing.assert_allclose(two[name].astype(np.float64), one[name].astype(np.float64),
                                       atol=FLOAT16_ATOL, err_msg=name)
    # Array source on two devices against the independent reference: the eager loop.
    assert run(workspace, "two-devices-arrays", "--methods", METHODS, "--num-copies", "3",
               "--shard-size", "10", "--batch-size", "4", "--devices", "2",
               data="images.npy") == 0
    data = read_index(str(workspace["root"] / "two-devices-arrays"))
    assert_matches_eager_reference(data, eager_reference, {"smoothgrad": {"num_copies": 3}})


def test_h5_source_with_labels_and_label_targets(workspace):
    root = workspace["root"]
    code = main(["explain", "--model", str(root / "model.keras"), "--data",
                 f"{root / 'arrays.h5'}:/images", "--labels", f"{root / 'arrays.h5'}:/labels",
                 "--out", str(root / "h5-out"), "--target", "label", "--quiet", "--devices",
                 "1", "--shard-size", "16", "--batch-size", "8"])
    assert code == 0
    data = read_index(str(root / "h5-out"))
    np.testing.assert_array_equal(data["sample/label"], workspace["labels"])
    np.testing.assert_array_equal(data["pred/target"], workspace["labels"])
    assert data["sample/key"][3].decode() == "arrays.h5:/images[3]"


def test_tfrecord_source_across_files(workspace, tmp_path):
    """Two files of 3 and 4 records, shards of 4: the second shard starts inside the
    second file, so each shard must find its own first record."""
    import tensorflow as tf
    folder = tmp_path / "records"
    os.makedirs(folder)
    pixels = (workspace["images"][:7] * 255).astype(np.uint8)
    for name, numbers in (("a.tfrecord", range(0, 3)), ("b.tfrecord", range(3, 7))):
        with tf.io.TFRecordWriter(str(folder / name)) as writer:
            for i in numbers:
                feature = {
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[tf.io.encode_png(pixels[i]).numpy()])),
                    "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                        value=[i % 4])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                             .SerializeToString())
    out = tmp_path / "out"
    assert main(["explain", "--model", str(workspace["root"] / "model.keras"), "--data",
                 str(folder), "--out", str(out), "--quiet", "--devices", "1", "--shard-size",
                 "4", "--batch-size", "2", "--target", "label", "--methods", "saliency",
                 "--map-size", "input"]) == 0
    data = read_index(str(out))
    np.testing.assert_array_equal(data["sample/label"], np.arange(7) % 4)
    assert [k.decode() for k in data["sample/key"]] == (
        [f"a.tfrecord:{i}" for i in range(3)] + [f"b.tfrecord:{i}" for i in range(4)])
    # The PNG round trip is lossless: the maps equal those of the arrays themselves.
    expected = explain(str(workspace["root"] / "model.keras"), pixels.astype(np.float32),
                       methods=("saliency",), targets=np.arange(7) % 4)
    np.testing.assert_allclose(data["heatmaps/saliency"].astype(np.float32),
                               expected.heatmaps["saliency"], atol=FLOAT16_ATOL)


def test_resume_reuses_complete_shards_and_redoes_damaged_ones(workspace, tmp_path):
    out = tmp_path / "resume"
    args = ["--methods", "gradcam", "--shard-size", "10", "--batch-size", "4", "--devices", "1",
            "--preprocess", "[0,1]"]
    root = workspace["root"]
    base = ["explain", "--model", str(root / "model.keras"), "--data", str(root / "images"),
            "--out", str(out), "--log-json", *args]
    assert main(base) == 0
    first = read_index(str(out))
    shard_one = out / "shards" / "shard-00001-of-00003.h5"
    stamp = os.stat(out / "shards" / "shard-00000-of-00003.h5").st_mtime_ns
    _damage(shard_one)
    damaged = shard_one.read_bytes()
    os.remove(out / "index.h5")
    assert main(base) == 0
    assert os.stat(out / "shards" / "shard-00000-of-00003.h5").st_mtime_ns == stamp
    assert shard_one.read_bytes() != damaged  # redone
    again = read_index(str(out))
    for name in first:
        np.testing.assert_array_equal(again[name], first[name], err_msg=name)


def test_resume_log_json_reports_reused_shards(workspace, tmp_path, capsys):
    root = workspace["root"]
    base = ["explain", "--model", str(root / "model.keras"), "--data", str(root / "images"),
            "--out", str(tmp_path / "out"), "--log-json", "--shard-size", "10", "--devices", "1"]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base) == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()
             if line.startswith("{")]
    summary = [line for line in lines if line["event"] == "summary"][-1]
    assert summary["shards_reused"] == 3 and summary["shards_written"] == 0
    assert summary["index_built"] is True


def test_different_run_in_same_out_needs_overwrite(workspace, tmp_path, capsys):
    root = workspace["root"]
    out = str(tmp_path / "out")
    common = ["--data", str(root / "images"), "--out", out, "--quiet", "--shard-size", "10",
              "--devices", "1"]
    assert main(["explain", "--model", str(root / "model.keras"), *common]) == 0
    capsys.readouterr()
    code = main(["explain", "--model", str(root / "other.keras"), "--methods", "saliency", *common])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("sightline explain: error: output folder")
    assert "holds another run's shards (different methods, model_sha256, parameters)" in error
    assert "--overwrite" in error and "\n" not in error
    assert main(["explain", "--model", str(root / "other.keras"), "--methods", "saliency",
                 "--overwrite", *common]) == 0
    with open_results(out) as results:
        assert results.methods == ("saliency",) and len(results) == 24


def test_open_results_by_index_and_key(folder_run):
    with open_results(str(folder_run)) as results:
        data = read_index(str(folder_run))
        row = 5
        index = int(data["sample/index"][row])
        key = data["sample/key"][row].decode()
        np.testing.assert_array_equal(results.heatmap("gradcam", index=index),
                                      data["heatmaps/gradcam"][row].astype(np.float32))
        np.testing.assert_array_equal(results.heatmap("gradcam", key=key),
                                      results.heatmap("gradcam", index=index))
        raw = results.heatmap("gradcam", index=index, raw=True)
        np.testing.assert_allclose(raw, data["heatmaps/gradcam"][row].astype(np.float32)
                                   * data["heatmaps/gradcam_scale"][row], rtol=1e-6)
        assert results.sample(key=key)["index"] == index
        with pytest.raises(KeyError, match="no sample with key 'dog/zz-broken.png'"):
            results.heatmap("gradcam", key="dog/zz-broken.png")
        with pytest.raises(KeyError, match="method 'integrated_gradients' was not run"):
            results.heatmap("integrated_gradients", index=index)


def test_inspect_summarises(folder_run, capsys):
    assert main(["inspect", str(folder_run)]) == 0
    text = capsys.readouterr().out
    assert "3 complete" in text and "25 samples" in text and "dog/zz-broken.png" in text
    assert "index:      present" in text
    assert "labels:     class folders cat, dog are groups, not the model's classes" in text


def test_array_of_another_size_is_resized_in_the_step_as_explain_would_see_it(workspace,
                                                                             tmp_path):
    """A 20x20 .npy for a 16x16 model: the job resizes inside its compiled function (bilinear,
    antialiased, the pipeline's rule) before [0,1]; its maps are explain()'s on those
    images."""
    from sightline import explain
    import keras
    import tensorflow as tf
    root = workspace["root"]
    pixels = np.random.default_rng(8).integers(0, 256, (11, 20, 20, 3)).astype(np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    assert main(["explain", "--model", str(root / "model.keras"), "--data",
                 str(tmp_path / "pixels.npy"), "--out", str(tmp_path / "out"), "--quiet",
                 "--devices", "1", "--batch-size", "4", "--methods", "saliency,gradcam",
                 "--preprocess", "[0,1]"]) == 0
    stored = read_index(str(tmp_path / "out"))
    resized = tf.image.resize(pixels.astype(np.float32), (16, 16), method="bilinear",
                              antialias=True).numpy()
    reference = explain(keras.models.load_model(root / "model.keras"),
                        resized / np.float32(255), methods=("saliency", "gradcam"),
                        batch_size=4)
    for method in ("saliency", "gradcam"):
        np.testing.assert_allclose(stored[f"heatmaps/{method}"].astype(np.float32),
                                   reference.heatmaps[method], atol=2e-3)


def _damage(path):
    """Same size, other bytes: the file's last 64 bytes inverted, so every one changes
    whatever it held (zeros written over an uncompressed shard's zero tail changed none)."""
    with open(path, "r+b") as handle:
        handle.seek(-64, os.SEEK_END)
        tail = handle.read(64)
        handle.seek(-64, os.SEEK_END)
        handle.write(bytes(255 - b for b in tail))


def test_inspect_names_damaged_lost_and_other_run_shards(folder_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(folder_run, out)
    shards = out / "shards"
    record_path = shards / "shard-00000-of-00003.json"
    record = json.load(open(record_path))
    record["fingerprint"] = "f" * 64
    record_path.write_text(json.dumps(record))
    _damage(shards / "shard-00001-of-00003.h5")
    os.remove(shards / "shard-00002-of-00003.h5")
    assert main(["inspect", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    shard_line = [line for line in lines if line.startswith("shards:")][0]
    assert shard_line.endswith("1 damaged, 1 missing, 1 other run"), shard_line
    assert "damaged:    shards 1" in lines
    assert "missing:    shards 2" in lines
    assert "other run:  shards 0" in lines


def test_index_names_missing_shard(folder_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(folder_run, out)
    os.remove(out / "shards" / "shard-00002-of-00003.h5")
    assert main(["index", str(out)]) == 2
    error = capsys.readouterr().err
    assert "shard-00002-of-00003.h5: missing" in error and "1 of 3 shard(s)" in error


def test_changed_labels_need_overwrite_and_no_worker_reuses_the_old_shards(workspace, tmp_path,
                                                                           capsys):
    root = workspace["root"]
    out = tmp_path / "out"
    labels_file = tmp_path / "labels.npy"
    old_labels = workspace["labels"]
    new_labels = (old_labels + 1) % 4
    np.save(labels_file, old_labels)
    job = ["explain", "--model", str(root / "model.keras"), "--data",
           f"{root / 'arrays.h5'}:/images", "--labels", str(labels_file), "--target", "label", "--out", str(out), "--quiet",
           "--devices", "1", "--shard-size", "8", "--batch-size", "8", "--methods", "gradcam"]
    assert main(job) == 0
    old_fingerprint = json.load(open(out / "manifest.json"))["fingerprint"]
    np.save(labels_file, new_labels)  # same path, other contents
    capsys.readouterr()
    assert main(job) == 2
    assert "holds another run's shards (different labels_sha256)" in capsys.readouterr().err
    # The same --overwrite job on two workers. Worker 0 finds the old run and claims the
    # folder; worker 1 then finds the manifest already naming the new run, and must still
    # not take the old shards 1 and 3 for its own.
    assert main([*job, "--overwrite", "--worker", "0", "--workers", "2"]) == 0
    assert not os.path.exists(out / "index.h5")
    assert main(["index", str(out)]) == 2
    error = capsys.readouterr().err
    for shard in (1, 3):
        assert f"shard-0000{shard}-of-00004.h5: written by another run (fingerprint " \
               f"{old_fingerprint[:12]}" in error, error
    assert main([*job, "--overwrite", "--worker", "1", "--workers", "2"]) == 0
    data = read_index(str(out))
    np.testing.assert_array_equal(data["sample/label"], new_labels)
    np.testing.assert_array_equal(data["pred/target"], new_labels)
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["fingerprint"] != old_fingerprint and manifest["shards_complete"] == 4
    records = [json.load(open(out / "shards" / f"shard-{s:05d}-of-00004.json")) for s in range(4)]
    assert [r["fingerprint"] for r in records] == [manifest["fingerprint"]] * 4
    assert [r["worker"] for r in records] == [0, 1, 0, 1]


def test_stop_signal_while_checksumming_finished_shards_exits_cleanly(folder_run, tmp_path,
                                                                      monkeypatch, capsys):
    """The signal arrives while a resume verifies the finished shards, before any batch:
    no shard is open in the writer, and the run must still end with 143 and a manifest."""
    out = tmp_path / "copy"
    shutil.copytree(folder_run, out)
    for name in ("shards/shard-00002-of-00003.h5", "shards/shard-00002-of-00003.json",
                 "index.h5"):
        os.remove(out / name)
    verify = sightline.jobs.runner.verify_shard
    calls = []

    def verify_during_a_signal(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            handler = signal.getsignal(signal.SIGTERM)
            # Raising SIGTERM without the job's handler in place would end pytest.
            assert callable(handler), "run_job did not install its signal handler"
            signal.raise_signal(signal.SIGTERM)
        return verify(*args, **kwargs)

    monkeypatch.setattr(sightline.jobs.runner, "verify_shard", verify_during_a_signal)
    code = main(["explain", "--model", str(folder_run.parent / "model.keras"), "--data",
                 str(folder_run.parent / "images"), "--out", str(out), "--methods", METHODS,
                 "--num-copies", "3", "--shard-size", "10", "--batch-size", "4",
                 "--preprocess", "[0,1]", "--devices", "1", "--quiet"])
    error = capsys.readouterr().err
    assert code == 143, error
    assert "Traceback" not in error and "stopping after this batch" in error
    assert calls == [0]  # stopped before verifying the next shard
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    manifest = json.load(open(out / "manifest.json"))
    assert [entry["state"] for entry in manifest["shards"]] == ["complete", "complete", "pending"]
    assert not [f for f in os.listdir(out) + os.listdir(out / "shards") if ".tmp" in f]


def test_toml_config_with_flags_winning(workspace, tmp_path):
    root = workspace["root"]
    config = tmp_path / "job.toml"
    config.write_text(f'model = "{root / "model.keras"}"\ndata = "{root / "images"}"\n'
                      f'out = "{tmp_path / "from-toml"}"\nmethods = ["cam", "saliency"]\n'
                      f'shard_size = 100\nbatch_size = 8\ndevices = "1"\nquiet = true\n')
    assert main(["explain", "--config", str(config), "--methods", "gradcam"]) == 0
    manifest = json.load(open(tmp_path / "from-toml" / "manifest.json"))
    assert manifest["run"]["methods"] == ["gradcam"] and manifest["run"]["shard_size"] == 100
    assert manifest["batch_size"] == 8


def test_mixed_bfloat16_job_correlates_with_float32(workspace, folder_run):
    assert run(workspace, "bf16", "--methods", "gradcam", "--shard-size", "10",
               "--batch-size", "4", "--preprocess", "[0,1]", "--devices", "1",
               "--precision", "mixed_bfloat16") == 0
    mixed = read_index(str(workspace["root"] / "bf16"))["heatmaps/gradcam"].astype(np.float64)
    full = read_index(str(folder_run))["heatmaps/gradcam"].astype(np.float64)
    assert np.corrcoef(mixed.ravel(), full.ravel())[0, 1] >= 0.98


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_inputs(workspace, tmp_path_factory):
    root = workspace["root"]
    scratch = tmp_path_factory.mktemp("bad")
    os.makedirs(scratch / "empty")
    (scratch / "notes.txt").write_text("hello")
    np.save(scratch / "grey.npy", np.zeros((4, 16, 16, 1), np.float32))
    import keras
    dense = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    dense.save(scratch / "dense.keras")
    write_model(str(scratch / "flatten.keras"), head="flatten")
    other = scratch / "other-run"
    assert main(["explain", "--model", str(root / "model.keras"), "--data", str(root / "images"),
                 "--out", str(other), "--quiet", "--devices", "1", "--shard-size", "100"]) == 0
    return scratch


def _bad_cases(root, scratch):
    model, images = str(root / "model.keras"), str(root / "images")
    out = str(scratch / "out")
    base = ["--model", model, "--data", images, "--out", out, "--devices", "1"]

    def replace(flag, value):
        args = list(base)
        args[args.index(flag) + 1] = value
        return args

    return [
        (replace("--model", str(scratch / "missing.keras")), r"model file not found"),
        (base + ["--layer", "conv_z"], r"layer 'conv_z' is not in the model; layers with 4-D "
                                       r"outputs: conv_a, conv_b, pool, conv_c"),
        (replace("--model", str(scratch / "dense.keras")), r"the model has no layer with a 4-D "
                                                           r"output"),
        (replace("--model", str(scratch / "flatten.keras")) + ["--methods", "cam"],
         r"CAM needs a head of global average pooling.*use gradcam"),
        (replace("--data", str(scratch / "empty")), r"data folder .* holds no images"),
        (replace("--data", str(scratch / "notes.txt")), r"unrecognised data source"),
        (replace("--data", str(scratch / "nowhere")), r"data source not found"),
        (replace("--data", str(scratch / "grey.npy")), r"the images have 1 channel\(s\) but the "
                                                       r"model takes 3"),
        (replace("--out", str(scratch / "other-run")) + ["--methods", "saliency"],
         r"holds another run's shards"),
        # Below a regular file: unwritable even for root, which ignores permission bits.
        (replace("--out", str(scratch / "notes.txt" / "out")), r"output folder .* is not "
                                                               r"writable"),
        (base + ["--batch-size", "0"], r"batch_size must be an integer >= 1; got 0"),
        (base + ["--methods", "gradcam,lime"], r"unknown method\(s\) 'lime'"),
        (base + ["--worker", "3", "--workers", "3"], r"worker index 3 \(from --worker\) is out "
                                                     r"of range for 3 worker\(s\)"),
        (base + ["--devices", "2", "--batch-size", "5"], r"batch size 5 must be a multiple of "
                                                         r"the 2 devices"),
        (base + ["--target", "9"], r"--target 9 is not a class of this model"),
        (base + ["--target", "label", "--data", str(root / "images.npy")],
         r"--target label needs a label for every image"),
        (base + ["--preprocess", "imagenet"], r"unknown preprocessing 'imagenet'"),
        (base + ["--image-size", "12,12"], r"image size \(12, 12\) differs from the model's"),
        (base + ["--xla", "maybe"], r"--xla must be auto, on or off"),
        (base + ["--compression", "zstd"], r"compression must be one of"),
        (base + ["--map-size", "full"], r"map_size must be one of 'native', 'input'"),
    ]


def test_bad_inputs_stop_with_one_line_before_any_work(workspace, bad_inputs, capsys):
    cases = _bad_cases(workspace["root"], bad_inputs)
    assert len(cases) >= 12
    for args, message in cases:
        code = main(["explain", *args])
        error = capsys.readouterr().err.strip()
        assert code == 2, (args[6:], message, error[-300:])
        assert len(error.splitlines()) == 1, error
        assert error.startswith("sightline explain: error: "), error
        import re
        assert re.search(message, error), (message, error)
        out = args[args.index("--out") + 1]
        if os.path.basename(out) == "out":
            assert not os.path.exists(os.path.join(out, "manifest.json")), args
    # The other run's output survives a refused run.
    with open_results(str(bad_inputs / "other-run")) as results:
        assert len(results) == 24


def test_shards_without_any_decodable_image_are_finished_empty(workspace, tmp_path):
    """Shard 1 and the last shard hold only corrupt files: no batch ever carries them,
    yet each gets its record, and every skipped file is listed."""
    import tensorflow as tf
    folder = tmp_path / "mixed"
    os.makedirs(folder)
    good = (workspace["images"][:3] * 255).astype(np.uint8)
    names = ["a0.png", "a1.png", "b0.png", "b1.png", "c0.png", "d0.png", "e0.png", "e1.png"]
    corrupt = {"b0.png", "b1.png", "d0.png", "e0.png", "e1.png"}
    pixels = iter(good)
    for name in names:
        if name in corrupt:
            (folder / name).write_bytes(b"GIF89a broken")
        else:
            tf.io.write_file(str(folder / name), tf.io.encode_png(next(pixels)))
    out = tmp_path / "out"
    assert main(["explain", "--model", str(workspace["root"] / "model.keras"), "--data",
                 str(folder), "--out", str(out), "--quiet", "--devices", "1", "--shard-size",
                 "2", "--batch-size", "2"]) == 0
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["shards_complete"] == 4
    assert [entry["num_samples"] for entry in manifest["shards"]] == [2, 0, 1, 0]
    assert sorted(item["key"] for item in manifest["skipped"]) == sorted(corrupt)
    data = read_index(str(out))
    assert [k.decode() for k in data["sample/key"]] == ["a0.png", "a1.png", "c0.png"]


def test_auto_precision_job_records_its_choice_and_keeps_it_on_resume(workspace, tmp_path):
    from sightline.store.shards import read_record
    root = workspace["root"]
    out = tmp_path / "auto-out"
    arguments = ["explain", "--model", str(root / "model.keras"), "--data",
                 f"{root / 'arrays.h5'}:/images", "--out", str(out), "--quiet", "--devices",
                 "1", "--shard-size", "16", "--batch-size", "8", "--precision", "auto"]
    assert main(arguments) == 0
    manifest = json.load(open(out / "manifest.json"))
    figures = manifest["precision_auto"]
    assert figures["choice"] in ("float32", "mixed_bfloat16")
    assert set(figures["seconds_per_batch"]) == {"float32", "mixed_bfloat16"}
    assert all(value > 0 for value in figures["seconds_per_batch"].values())
    assert set(figures["map_correlation"]) == set(manifest["run"]["methods"])
    assert manifest["run"]["precision"] == "auto"
    with h5py.File(out / "shards" / "shard-00000-of-00002.h5", "r") as shard:
        assert shard.attrs["precision"] == figures["choice"]
    # A resume keeps the recorded choice (no second measurement can flip it).
    record = read_record(str(out), 1, 2)
    os.remove(out / "shards" / "shard-00001-of-00002.json")
    flipped = "float32" if figures["choice"] == "mixed_bfloat16" else "mixed_bfloat16"
    manifest["precision_auto"]["choice"] = flipped
    manifest["precision_auto"]["seconds_per_batch"] = {"float32": 7.0, "mixed_bfloat16": 7.0}
    json.dump(manifest, open(out / "manifest.json", "w"))
    assert main(arguments) == 0
    assert json.load(open(out / "manifest.json"))["precision_auto"] == manifest["precision_auto"]
    with h5py.File(out / "shards" / "shard-00001-of-00002.h5", "r") as shard:
        assert shard.attrs["precision"] == flipped
    assert record is not None


@pytest.mark.parametrize("batches_per_call", [16, 2], ids=["one-call-per-shard",
                                                         "several-calls-per-shard"])
def test_uint8_npy_job_equals_explain_on_the_same_preprocessed_arrays(workspace, tmp_path,
                                                                      monkeypatch,
                                                                      batches_per_call):
    """An 8-bit .npy with --preprocess [0,1]: the stored maps are explain()'s on u / 255
    computed in float32, to float16 storage, for a gradient method whose ReLU gates
    react to one-ulp changes of the input. With 2 batches per call a shard of 5 batches
    takes three calls, the last one short."""
    from sightline import explain
    import keras
    import sightline.compute.step
    root = workspace["root"]
    pixels = np.random.default_rng(7).integers(0, 256, (100, 16, 16, 3)).astype(np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    monkeypatch.setattr(sightline.compute.step, "CALL_BATCHES", batches_per_call)
    assert main(["explain", "--model", str(root / "model.keras"), "--data",
                 str(tmp_path / "pixels.npy"), "--out", str(tmp_path / "out"), "--quiet",
                 "--devices", "1", "--batch-size", "4", "--shard-size", "18",
                 "--methods", "saliency,gradcam", "--preprocess", "[0,1]"]) == 0
    stored = read_index(str(tmp_path / "out"))
    model = keras.models.load_model(root / "model.keras")
    reference = explain(model, pixels.astype(np.float32) / np.float32(255),
                        methods=("saliency", "gradcam"), batch_size=4)
    np.testing.assert_array_equal(stored["sample/index"], np.arange(100))
    for method in ("saliency", "gradcam"):
        np.testing.assert_array_equal(stored[f"heatmaps/{method}"],
                                      reference.heatmaps[method].astype(np.float16))
