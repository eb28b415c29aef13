"""engine.audit: every metric against a NumPy reference written differently (loops over
pixels and images), the flag rule, streaming, mask sources and their errors, the CLI."""

import csv
import json
import math
import os

import h5py
import numpy as np
import pytest
import tensorflow as tf

from engine.audit import (EXIT_FLAGGED, bilinear_matrix, image_metrics, parse_region,
                          peak_spread, resize_maps, run_audit)
from engine.cli import main
from tests.engine import audit_runs
from tests.engine.audit_runs import CLASSES, SIZE, shortcut_run, stored_maps, write_run


# --- references ------------------------------------------------------------------------

def reference_metrics(heatmap, mask=None, regions=()):
    """One image, pixel by pixel, in plain Python floats."""
    height, width = heatmap.shape
    total = sum(float(v) for v in heatmap.ravel())
    peak = max(((float(heatmap[y, x]), -(y * width + x), y, x)
                for y in range(height) for x in range(width)))
    py, px = peak[2], peak[3]
    entropy = 0.0
    for v in heatmap.ravel():
        p = float(v) / total
        if p > 0:
            entropy -= p * math.log(p)
    result = {"entropy": entropy / math.log(height * width),
              "coverage": math.exp(entropy) / (height * width),
              "peak_y": (py + 0.5) / height, "peak_x": (px + 0.5) / width}
    if mask is not None:
        inside = sum(float(heatmap[y, x]) for y in range(height) for x in range(width) if mask[y, x])
        result.update(share=inside / total, area=mask.sum() / mask.size, hit=bool(mask[py, px]))
    for name, region in regions:
        result[f"region/{name}"] = sum(float(heatmap[y, x]) for y in range(height)
                                       for x in range(width) if region[y, x]) / total
    return result


def test_bilinear_resize_matches_tensorflow(rng):
    for shape, size in (((3, 8, 8), (32, 32)), ((2, 7, 5), (30, 45)), ((1, 4, 4), (4, 4)),
                        ((2, 6, 6), (64, 64))):
        maps = rng.uniform(0, 1, shape)
        expected = tf.image.resize(maps[..., None], size, method="bilinear").numpy()[..., 0]
        np.testing.assert_allclose(resize_maps(maps, size), expected, atol=1e-6)
    # Rows of the interpolation matrix are convex weights.
    matrix = bilinear_matrix(17, 5)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    assert matrix.min() >= 0


def test_image_metrics_against_a_pixel_loop(rng):
    maps = rng.uniform(0, 1, (6, 12, 10)) ** 3
    maps[2] = 0.0
    maps[2, 3, 4] = 2.0  # all on one pixel
    maps[3] = 0.7  # flat, ties everywhere: the first pixel is the peak
    masks = np.zeros((6, 12, 10), bool)
    masks[:, 2:6, 3:8] = True
    masks[4] = False
    masks[4, 0, 0] = True
    sky = np.zeros((12, 10), bool)
    sky[:3] = True
    corner = np.zeros((12, 10), bool)
    corner[8:, 7:] = True
    regions = [("sky", sky), ("corner", corner)]
    got = image_metrics(maps, masks, dict(regions))
    for i in range(len(maps)):
        expected = reference_metrics(maps[i], masks[i], regions)
        for name, value in expected.items():
            assert got[name][i] == pytest.approx(value, abs=1e-12), (i, name)
    assert got["share"][2] == 1.0 and got["hit"][2] and got["entropy"][2] == pytest.approx(0.0)
    assert got["entropy"][3] == pytest.approx(1.0) and got["coverage"][3] == pytest.approx(1.0)
    assert (got["peak_y"][3], got["peak_x"][3]) == (0.5 / 12, 0.05)
    assert got["share"][3] == pytest.approx(masks[3].mean())  # a flat map: the area share


def test_an_all_zero_map_has_no_share_and_is_not_a_hit():
    maps = np.zeros((1, 4, 4))
    masks = np.ones((1, 4, 4), bool)
    got = image_metrics(maps, masks, {"all": np.ones((4, 4), bool)})
    assert np.isnan(got["share"][0]) and np.isnan(got["entropy"][0])
    assert np.isnan(got["region/all"][0]) and not got["hit"][0]


def test_peak_spread_against_a_reference(rng):
    ys, xs = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    cy, cx = sum(ys) / 50, sum(xs) / 50
    expected = math.sqrt(sum((y - cy) ** 2 + (x - cx) ** 2 for y, x in zip(ys, xs)) / 50)
    assert peak_spread(ys, xs) == pytest.approx(expected)
    assert peak_spread([0.2] * 9, [0.7] * 9) == 0.0  # a peak that stays put
    uniform = np.random.default_rng(0).uniform(0, 1, (2, 200000))
    assert peak_spread(*uniform) == pytest.approx(math.sqrt(2 / 12), abs=2e-3)


def test_regions_in_pixels_and_fractions():
    name, region = parse_region("sky=0:8,0:32", (32, 32))
    assert name == "sky" and region.sum() == 8 * 32 and region[:8].all()
    _, same = parse_region("sky=0:0.25,0:1.0", (32, 32))
    np.testing.assert_array_equal(region, same)
    for bad in ("sky", "sky=0:8", "sky=8:0,0:32", "sky=0:40,0:32", "=0:8,0:32", "sky=a:b,0:1"):
        with pytest.raises(ValueError, match="region"):
            parse_region(bad, (32, 32))


# --- the audit on hand-made runs -------------------------------------------------------

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return shortcut_run(str(tmp_path_factory.mktemp("audit")))


def test_audit_numbers_match_a_reference_over_the_whole_run(made):
    audit = run_audit(made["out"], masks=made["masks"], regions=["sky=0:8,0:32"], chunk=3)
    maps = resize_maps(stored_maps(made["maps"]), SIZE)  # as stored, then bilinear
    sky = np.zeros(SIZE, bool)
    sky[:8] = True
    per_image = [reference_metrics(maps[i], made["mask_array"][i], [("sky", sky)])
                 for i in range(len(maps))]
    assert audit["num_images"] == 24 and audit["stored_size"] == [8, 8]
    assert audit["compared_at"] == [32, 32]
    for entry in audit["classes"]:
        rows = [i for i in range(24) if made["labels"][i] == entry["class"]]
        shares = [per_image[i]["share"] for i in rows]
        areas = [per_image[i]["area"] for i in rows]
        assert entry["name"] == audit_runs.CLASSES[entry["class"]]
        assert entry["count"] == len(rows)
        assert entry["on_object_share"]["mean"] == pytest.approx(np.mean(shares), abs=1e-6)
        assert entry["on_object_share"]["median"] == pytest.approx(np.median(shares), abs=1e-6)
        assert entry["area_fraction"] == pytest.approx(np.mean(areas))
        assert entry["lift"] == pytest.approx(np.mean(shares) / np.mean(areas), rel=1e-5)
        assert entry["pointing_game"] == pytest.approx(np.mean([per_image[i]["hit"] for i in rows]))
        assert entry["entropy"]["mean"] == pytest.approx(
            np.mean([per_image[i]["entropy"] for i in rows]), abs=1e-6)
        assert entry["regions"]["sky"]["mean"] == pytest.approx(
            np.mean([per_image[i]["region/sky"] for i in rows]), abs=1e-6)
        assert entry["peak_spread"] == pytest.approx(peak_spread(
            [per_image[i]["peak_y"] for i in rows], [per_image[i]["peak_x"] for i in rows]),
            abs=1e-6)
        np.testing.assert_allclose(entry["mean_heatmap"], maps[rows].mean(axis=0), atol=1e-5)
        correct = np.mean(made["labels"][rows] == made["predictions"][rows])
        assert entry["accuracy"] == pytest.approx(correct)
        assert sum(entry["share_histogram"]) == len(rows)  # every share is binned
        low, high = entry["share_histogram_range"]
        assert low == 0 and max(shares) <= high <= 1
        counts = [0] * len(entry["share_histogram"])
        for share in shares:
            counts[min(len(counts) - 1, int(share / high * len(counts)))] += 1
        assert entry["share_histogram"] == counts
    cross, disc = audit["classes"]
    assert not cross["flagged"] and cross["lift"] > 4 and cross["status"] == "on-object"
    assert disc["flagged"] and disc["lift"] < 0.5 and disc["status"] == "off-object"
    assert audit["flagged"] == ["disc"]
    # The ranking: per class, the smallest lift first.
    for group in (0, 1):
        ranked = [w for w in audit["worst"] if w["group"] == group]
        lifts = [w["share"] / w["area"] for w in ranked]
        assert lifts == sorted(lifts) and len(ranked) == 8
        everyone = sorted(per_image[i]["share"] / per_image[i]["area"]
                          for i in range(24) if made["labels"][i] == group)
        assert lifts == pytest.approx(everyone[:8], abs=1e-6)
        for w in ranked:
            assert w["class_name"] == CLASSES[w["label"]]
            assert w["predicted_name"] == CLASSES[w["predicted"]]


def test_streaming_in_chunks_gives_the_same_audit(made):
    small = run_audit(made["out"], masks=made["masks"], chunk=1)
    large = run_audit(made["out"], masks=made["masks"], chunk=1000)
    for a, b in zip(small["classes"], large["classes"]):
        assert a["on_object_share"] == pytest.approx(b["on_object_share"])
        np.testing.assert_allclose(a["mean_heatmap"], b["mean_heatmap"], atol=1e-6)
    assert [w["key"] for w in small["worst"]] == [w["key"] for w in large["worst"]]


def test_threshold_is_configurable(made):
    lenient = run_audit(made["out"], masks=made["masks"], threshold=0.01)
    assert lenient["flagged"] == []
    strict = run_audit(made["out"], masks=made["masks"], threshold=1000)
    assert strict["flagged"] == ["cross", "disc"]
    with pytest.raises(ValueError, match="threshold"):
        run_audit(made["out"], masks=made["masks"], threshold=0)


def test_flat_maps_are_diffuse_not_flagged_unless_asked(tmp_path, rng):
    count = 10
    keys = np.array([f"disc/{i:03d}.png" for i in range(count)])
    masks = audit_runs.scene_masks(count)
    flat = 0.9 + rng.uniform(0, 0.1, (count, 8, 8))
    out = write_run(str(tmp_path / "run"), flat, np.ones(count, int), np.ones(count, int), keys)
    mask_file = audit_runs.write_masks(str(tmp_path / "m.h5"), keys, masks)
    audit = run_audit(out, masks=mask_file)
    (entry,) = audit["classes"]
    assert entry["lift"] < 2 and entry["coverage"]["median"] > 0.95
    assert entry["status"] == "diffuse" and not entry["flagged"] and audit["flagged"] == []
    assert run_audit(out, masks=mask_file, flag_diffuse=True)["flagged"] == ["disc"]
    assert run_audit(out, masks=mask_file, diffuse=1.0)["flagged"] == ["disc"]


def test_boxes_and_mask_folders_give_the_same_audit_as_the_mask_file(made, tmp_path):
    boxes = tmp_path / "boxes.csv"
    folder = tmp_path / "masks"
    with open(boxes, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "y0", "x0", "y1", "x1"])
        for key, mask in zip(made["keys"], made["mask_array"]):
            ys, xs = np.nonzero(mask)
            writer.writerow([key, ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
            path = folder / key
            path.parent.mkdir(parents=True, exist_ok=True)
            tf.io.write_file(str(path), tf.io.encode_png(mask[..., None].astype(np.uint8) * 255))
    reference = run_audit(made["out"], masks=made["masks"])
    for other in (run_audit(made["out"], boxes=str(boxes)),
                  run_audit(made["out"], masks=str(folder))):
        for a, b in zip(reference["classes"], other["classes"]):
            assert a["on_object_share"] == pytest.approx(b["on_object_share"])
            assert a["lift"] == pytest.approx(b["lift"])


def test_without_masks_only_the_mask_free_statistics(made):
    audit = run_audit(made["out"])
    assert audit["masks"] is None and audit["flagged"] == [] and audit["worst"] == []
    cross, disc = audit["classes"]
    assert "lift" not in cross and cross["status"] == "no masks"
    # The sky model's peaks stay put (the top rows); the object model's wander.
    assert disc["peak_spread"] < 0.3 * cross["peak_spread"]
    for entry in (cross, disc):
        assert 0 < entry["entropy"]["mean"] < 1 and 0 < entry["coverage"]["median"] < 1
        np.testing.assert_allclose(np.sum(entry["mean_heatmap"]) > 0, True)


def test_misaligned_masks_stop_with_an_error_that_names_them(made, tmp_path):
    keys, masks = list(made["keys"]), made["mask_array"]
    partial = audit_runs.write_masks(str(tmp_path / "partial.h5"), keys[:-2], masks[:-2])
    with pytest.raises(ValueError, match=r"no mask for 2 of 24 sample\(s\): "
                                         r"cross/022.png, disc/023.png"):
        run_audit(made["out"], masks=partial)
    small = audit_runs.write_masks(str(tmp_path / "small.h5"), keys, masks[:, ::2, ::2])
    with pytest.raises(ValueError, match="masks are 16x16 but the run's images are 32x32"):
        run_audit(made["out"], masks=small)
    with h5py.File(tmp_path / "nokeys.h5", "w") as handle:
        handle["masks"] = masks.astype(np.uint8)
    with pytest.raises(ValueError, match="no /keys dataset"):
        run_audit(made["out"], masks=str(tmp_path / "nokeys.h5"))
    with pytest.raises(ValueError, match="masks not found"):
        run_audit(made["out"], masks=str(tmp_path / "absent.h5"))
    with pytest.raises(ValueError, match="method 'saliency' was not run"):
        run_audit(made["out"], method="saliency")


def test_cli_writes_audit_json_and_gates_on_flags(made, tmp_path, capsys):
    target = str(tmp_path / "a.json")
    assert main(["audit", made["out"], "--masks", made["masks"], "--json", target]) == 0
    assert main(["audit", made["out"], "--masks", made["masks"], "--json", target,
                 "--fail-on-flag"]) == EXIT_FLAGGED
    printed = capsys.readouterr().out
    assert "FLAGGED disc" in printed and "class cross" in printed
    saved = json.load(open(target))
    assert saved["flagged"] == ["disc"] and saved["format"] == "sightline-audit/1"
    assert len(saved["classes"][0]["mean_heatmap"]) == 32
    assert main(["audit", made["out"], "--masks", made["masks"], "--fail-on-flag",
                 "--threshold", "0.01", "--json", target]) == 0
    # Default location: OUT/audit.json.
    assert main(["audit", made["out"]]) == 0
    assert os.path.exists(os.path.join(made["out"], "audit.json"))


def test_cli_error_is_one_line_with_exit_code_2(made, tmp_path, capsys):
    partial = audit_runs.write_masks(str(tmp_path / "p.h5"), list(made["keys"])[1:],
                                     made["mask_array"][1:])
    assert main(["audit", made["out"], "--masks", partial]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cross/000.png" in err and err.startswith("sightline audit")
