"""The store's one reader on a complete two-worker run whose index.h5 was never built:
it reads the verified shards in source order, exactly what the index would give, and
`sightline audit --report` works on it."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from sightline import open_results
from sightline.cli.main import main
from tests.jobs.jobs import read_index, write_arrays, write_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("unindexed")
    write_arrays(str(root), count=22)
    model = write_model(str(root / "model.keras"))
    out = str(root / "run")
    for worker in ("0", "1"):
        assert main(["explain", "--model", model, "--data", str(root / "images.npy"),
                     "--labels", str(root / "labels.npy"), "--out", out,
                     "--methods", "gradcam,saliency", "--shard-size", "4", "--batch-size", "4",
                     "--workers", "2", "--worker", worker, "--quiet"]) == 0
    indexed = str(root / "indexed")
    shutil.copytree(out, indexed)
    # The second worker to finish built the index; a job whose workers finish together
    # leaves none (until `sightline index`): that is the run under test.
    os.remove(os.path.join(out, "index.h5"))
    return {"root": root, "out": out, "indexed": indexed}


def test_reader_gives_the_index_view_without_an_index(runs):
    reference = read_index(runs["indexed"])  # h5py on the virtual datasets, sorted
    with open_results(runs["out"]) as results:
        assert not results.indexed and len(results) == 22
        assert results.sample_indices.tolist() == list(range(22))  # source order
        assert list(results.attrs["input_size"]) == [16, 16]
        chunks = list(results.chunks(["heatmaps/gradcam", "heatmaps/saliency", "sample/key"],
                                     rows=3))
        assert max(len(c["sample/key"]) for c in chunks) <= 3
        for name in ("heatmaps/gradcam", "heatmaps/saliency", "sample/key"):
            np.testing.assert_array_equal(np.concatenate([c[name] for c in chunks]),
                                          reference[name])
        key = reference["sample/key"][13].decode("utf-8")
        np.testing.assert_array_equal(results.heatmap("saliency", key=key),
                                      reference["heatmaps/saliency"][13].astype(np.float32))
        assert results.sample(index=13)["predicted"] == int(reference["pred/class"][13])
        np.testing.assert_array_equal(results.read("pred/score"), reference["pred/score"])


def test_audit_with_report_on_the_unindexed_run(runs, capsys):
    with open_results(runs["indexed"]) as results:
        keys = [k.decode("utf-8") for k in results.read("sample/key")]
    boxes = str(runs["root"] / "boxes.csv")
    with open(boxes, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "y0", "x0", "y1", "x1"])
        for i, key in enumerate(keys):
            writer.writerow([key, i % 8, 2, i % 8 + 6, 10])
    report = str(runs["root"] / "report")
    assert main(["audit", runs["out"], "--boxes", boxes, "--report", report]) == 0
    assert main(["audit", runs["indexed"], "--boxes", boxes,
                 "--json", str(runs["root"] / "indexed-audit.json")]) == 0
    capsys.readouterr()
    unindexed = json.load(open(os.path.join(runs["out"], "audit.json")))
    indexed = json.load(open(runs["root"] / "indexed-audit.json"))
    assert unindexed["num_images"] == 22 and unindexed["worst"]
    for name in ("classes", "worst", "flagged"):
        for entry in (unindexed, indexed):
            for item in entry[name] if name != "flagged" else []:
                item.pop("out", None)
        assert unindexed[name] == indexed[name]
    # The worst images' maps come back through the reader: their overlay is drawn.
    with open(os.path.join(report, "run-worst.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "run-worst.png" in open(os.path.join(report, "report.html")).read()


def test_a_run_with_an_unfinished_shard_is_refused_with_its_name(runs, capsys):
    broken = str(runs["root"] / "broken")
    shutil.copytree(runs["out"], broken)
    os.remove(os.path.join(broken, "shards", "shard-00003-of-00006.json"))
    with pytest.raises(ValueError, match=r"not complete: 1 of 6 shard\(s\).*"
                                         r"shard-00003-of-00006\.h5: no record"):
        open_results(broken)
    assert main(["audit", broken]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sightline audit: error:") and "\n" not in err
