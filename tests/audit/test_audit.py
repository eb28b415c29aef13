"""sightline.audit (audit, metrics, masks, summary): every metric against a NumPy reference written differently (loops over
pixels and images), the flag rule, streaming, mask sources and their errors, the CLI."""

import csv
import json
import math
import os
import re

import h5py
import numpy as np
import pytest
import tensorflow as tf

from sightline.audit.audit import EXIT_FLAGGED, run_audit
from sightline.audit.masks import parse_region
from sightline.audit.metrics import bilinear_matrix, image_metrics, peak_mean, peak_spread, resize_maps
from sightline.audit.summary import summary_lines
from sightline.cli.main import build_parser, main
from tests.audit import audit_runs
from tests.audit.audit_runs import CLASSES, SIZE, shortcut_run, stored_maps, write_run
from tests.report.pages import assert_png


# --- references ------------------------------------------------------------------------

def reference_metrics(heatmap, mask=None, regions=()):
    """One image, pixel by pixel, in plain Python floats. A map with nothing in it has no
    share, no peak and no hit: NaN for all but the mask's area."""
    height, width = heatmap.shape
    total = sum(float(v) for v in heatmap.ravel())
    if total == 0:
        result = {name: math.nan for name in ("entropy", "coverage", "peak_y", "peak_x")}
        if mask is not None:
            result.update(share=math.nan, area=mask.sum() / mask.size, hit=math.nan)
        for name, _ in regions:
            result[f"region/{name}"] = math.nan
        return result
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
        result.update(share=inside / total, area=mask.sum() / mask.size,
                      hit=1.0 if mask[py, px] else 0.0)
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


def same(got, expected):
    """Equal to 1e-12, NaN matching NaN only."""
    if math.isnan(expected):
        return math.isnan(got)
    return got == pytest.approx(expected, abs=1e-12)


def test_image_metrics_against_a_pixel_loop(rng):
    maps = rng.uniform(0, 1, (7, 12, 10)) ** 3
    maps[2] = 0.0
    maps[2, 3, 4] = 2.0  # all on one pixel
    maps[3] = 0.7  # flat, ties everywhere: the first pixel is the peak
    maps[6] = 0.0  # empty: no peak, no share, no hit
    masks = np.zeros((7, 12, 10), bool)
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
        assert set(got) - {"total"} == set(expected)
        for name, value in expected.items():
            assert same(float(got[name][i]), value), (i, name)
    assert got["share"][2] == 1.0 and got["hit"][2] == 1.0
    assert got["entropy"][2] == pytest.approx(0.0)
    assert got["entropy"][3] == pytest.approx(1.0) and got["coverage"][3] == pytest.approx(1.0)
    assert (got["peak_y"][3], got["peak_x"][3]) == (0.5 / 12, 0.05)
    assert got["share"][3] == pytest.approx(masks[3].mean())  # a flat map: the area share


def test_an_all_zero_map_has_no_share_no_peak_and_no_hit():
    maps = np.zeros((2, 4, 4))
    maps[1, 3, 2] = 1.0
    masks = np.ones((2, 4, 4), bool)
    masks[:, 0, 0] = False  # argmax of the empty map would land here, off the object
    got = image_metrics(maps, masks, {"all": np.ones((4, 4), bool)})
    for name in ("share", "entropy", "coverage", "peak_y", "peak_x", "hit", "region/all"):
        assert np.isnan(got[name][0]), name
    assert got["area"][0] == 15 / 16  # the mask is still there
    assert (got["peak_y"][1], got["peak_x"][1]) == (3.5 / 4, 2.5 / 4)
    assert got["hit"][1] == 1.0 and got["share"][1] == 1.0


def test_peak_spread_against_a_reference(rng):
    ys, xs = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    cy, cx = sum(ys) / 50, sum(xs) / 50
    expected = math.sqrt(sum((y - cy) ** 2 + (x - cx) ** 2 for y, x in zip(ys, xs)) / 50)
    assert peak_spread(ys, xs) == pytest.approx(expected)
    assert peak_spread([0.2] * 9, [0.7] * 9) == 0.0  # a peak that stays put
    uniform = np.random.default_rng(0).uniform(0, 1, (2, 200000))
    assert peak_spread(*uniform) == pytest.approx(math.sqrt(2 / 12), abs=2e-3)


def test_peaks_of_empty_maps_are_left_out_of_the_spread_and_mean(rng):
    ys, xs = rng.uniform(0, 1, 12), rng.uniform(0, 1, 12)
    kept = [i for i in range(12) if i % 3]
    cy = sum(ys[i] for i in kept) / len(kept)
    cx = sum(xs[i] for i in kept) / len(kept)
    expected = math.sqrt(sum((ys[i] - cy) ** 2 + (xs[i] - cx) ** 2 for i in kept) / len(kept))
    ys[::3] = xs[::3] = np.nan
    assert peak_spread(ys, xs) == pytest.approx(expected)
    assert peak_mean(ys, xs) == pytest.approx([cy, cx])
    assert math.isnan(peak_spread([np.nan] * 3, [np.nan] * 3))
    assert all(math.isnan(v) for v in peak_mean([np.nan], [np.nan]))


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
    stored = stored_maps(made["maps"])
    maps = resize_maps(stored, SIZE)  # as stored, then bilinear
    sky = np.zeros(SIZE, bool)
    sky[:8] = True
    # Shares, hits and regions against the masks at the images' size; concentration and
    # peaks of the maps as stored.
    per_image = [{**reference_metrics(maps[i], made["mask_array"][i], [("sky", sky)]),
                  **reference_metrics(stored[i])} for i in range(len(maps))]
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
        assert entry["coverage"]["median"] == pytest.approx(
            np.median([per_image[i]["coverage"] for i in rows]), abs=1e-6)
        assert entry["peak_mean"] == pytest.approx(
            [np.mean([per_image[i][f"peak_{axis}"] for i in rows]) for axis in "yx"], abs=1e-9)
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
    assert "FLAGGED: class(es) disc" in printed and "class cross" in printed
    saved = strict_json(target)
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


def strict_json(path):
    """audit.json read back by a parser that rejects NaN and Infinity (not JSON)."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")
    with open(path) as handle:
        return json.load(handle, parse_constant=refuse)


# --- maps that are zero everywhere -----------------------------------------------------

@pytest.fixture(scope="module")
def with_empty_maps(tmp_path_factory):
    return audit_runs.empty_map_run(str(tmp_path_factory.mktemp("empty")))


def test_empty_maps_are_left_out_of_share_area_pointing_game_and_peaks(with_empty_maps):
    made = with_empty_maps
    audit = run_audit(made["out"], masks=made["masks"], chunk=5)
    stored = stored_maps(made["maps"])
    maps = resize_maps(stored, SIZE)
    assert audit["empty_maps"] == int(made["empty"].sum()) == 16
    cross, disc = audit["classes"]
    # Cross: 12 images, 4 of them empty; every mean runs over the same 8.
    kept = [i for i in range(24) if made["labels"][i] == 0 and not made["empty"][i]]
    assert len(kept) == 8 and cross["count"] == 12 and cross["empty_maps"] == 4
    # Shares and hits at the masks' size, peaks on the maps as stored.
    per_image = [{**reference_metrics(maps[i], made["mask_array"][i]),
                  **reference_metrics(stored[i])} for i in kept]
    shares = [m["share"] for m in per_image]
    areas = [m["area"] for m in per_image]
    hits = [m["hit"] for m in per_image]
    assert cross["on_object_share"]["mean"] == pytest.approx(np.mean(shares), abs=1e-6)
    assert cross["area_fraction"] == pytest.approx(np.mean(areas))
    assert cross["pointing_chance"] == pytest.approx(np.mean(areas))
    assert cross["lift"] == pytest.approx(np.mean(shares) / np.mean(areas), rel=1e-5)
    assert cross["pointing_game"] == pytest.approx(np.mean(hits))
    peaks_y, peaks_x = [m["peak_y"] for m in per_image], [m["peak_x"] for m in per_image]
    centre_y, centre_x = np.mean(peaks_y), np.mean(peaks_x)
    spread = math.sqrt(np.mean([(y - centre_y) ** 2 + (x - centre_x) ** 2
                                for y, x in zip(peaks_y, peaks_x)]))
    assert cross["peak_spread"] == pytest.approx(spread, abs=1e-6)
    assert cross["peak_mean"] == pytest.approx([centre_y, centre_x], abs=1e-6)
    assert sum(cross["share_histogram"]) == 8
    assert cross["status"] == "on-object" and not cross["flagged"]
    # Disc: nothing but empty maps, so nothing to compare: reported, not flagged.
    assert disc["empty_maps"] == disc["count"] == 12
    assert disc["status"] == "empty" and not disc["flagged"] and audit["flagged"] == []
    assert disc["on_object_share"] is None and disc["share_histogram"] == []
    for name in ("lift", "area_fraction", "pointing_game", "pointing_chance", "peak_spread"):
        assert math.isnan(disc[name]), name
    # Only maps with a share can be ranked: the 8 scored images of cross, worst first.
    lifts = {made["keys"][i]: m["share"] / m["area"] for i, m in zip(kept, per_image)}
    assert [w["key"] for w in audit["worst"]] == sorted(lifts, key=lifts.get)
    printed = "\n".join(summary_lines(audit))
    assert "4 empty map(s) left out" in printed and "every map is zero" in printed


def test_empty_maps_make_no_fixed_peak_without_masks(with_empty_maps):
    made = with_empty_maps
    audit = run_audit(made["out"])
    cross, disc = audit["classes"]
    maps = stored_maps(made["maps"])  # peaks on the maps as stored
    height, width = maps.shape[1:]
    peaks = [np.unravel_index(np.argmax(maps[i]), (height, width)) for i in range(24)
             if made["labels"][i] == 0 and not made["empty"][i]]
    ys = np.array([(y + 0.5) / height for y, _ in peaks])
    xs = np.array([(x + 0.5) / width for _, x in peaks])
    assert cross["peak_spread"] == pytest.approx(np.sqrt(ys.var() + xs.var()), abs=1e-6)
    # The empty maps' would-be peaks in the corner do not pull the mean there either.
    assert cross["peak_mean"] == pytest.approx([ys.mean(), xs.mean()], abs=1e-6)
    assert math.isnan(disc["peak_spread"]) and all(math.isnan(v) for v in disc["peak_mean"])


def test_audit_json_and_report_stay_valid_with_empty_maps(with_empty_maps, tmp_path, capsys):
    made = with_empty_maps
    target = str(tmp_path / "audit.json")
    report = str(tmp_path / "report")
    assert main(["audit", made["out"], "--masks", made["masks"], "--json", target,
                 "--report", report]) == 0
    saved = strict_json(target)
    cross, disc = saved["classes"]
    assert disc["status"] == "empty" and disc["lift"] is None and disc["peak_spread"] is None
    assert disc["peak_mean"] == [None, None] and disc["pointing_game"] is None
    assert cross["lift"] > 2 and cross["empty_maps"] == 4
    page = open(os.path.join(report, "report.html"), encoding="utf-8").read()
    text = re.sub(r"base64,[A-Za-z0-9+/=]+", "", page)
    assert "empty maps" in text and "whose maps are all zero" in text
    assert ">nan<" not in text and "n/a" in text  # NaN reads as n/a, not nan
    for name in os.listdir(report):
        if name.endswith(".png"):
            assert_png(open(os.path.join(report, name), "rb").read())
    assert "4 empty map(s) left out" in capsys.readouterr().out


# --- mask files of the wrong shape -----------------------------------------------------

def test_mask_file_whose_keys_and_masks_disagree_is_one_clear_error(made, tmp_path, capsys):
    keys = np.array([k.encode() for k in made["keys"]])
    masks = made["mask_array"].astype(np.uint8)
    cases = {
        "short.h5": (keys, masks[:-1],
                     r"/masks must be \[N,H,W\] with N = len\(/keys\) = 24; it has shape "
                     r"\(23, 32, 32\)"),
        "flat.h5": (keys, masks.reshape(24, -1),
                    r"/masks must be \[N,H,W\] with N = len\(/keys\) = 24; it has shape "
                    r"\(24, 1024\)"),
        "deep.h5": (keys, masks[..., None],
                    r"/masks must be \[N,H,W\] with N = len\(/keys\) = 24; it has shape "
                    r"\(24, 32, 32, 1\)"),
        "keys2d.h5": (keys.reshape(4, 6), masks,
                      r"/keys must be a 1-D list of sample keys; it has shape \(4, 6\)"),
    }
    for name, (key_data, mask_data, message) in cases.items():
        path = str(tmp_path / name)
        with h5py.File(path, "w") as handle:
            handle["keys"] = key_data
            handle["masks"] = mask_data
        with pytest.raises(ValueError, match=message):
            run_audit(made["out"], masks=path)
        assert main(["audit", made["out"], "--masks", path, "--json",
                     str(tmp_path / "a.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("sightline audit: error: mask file")
        with h5py.File(path, "a"):  # the audit closed the file it refused
            pass


# --- the command line ------------------------------------------------------------------

def test_regions_take_one_value_per_flag_so_the_run_folder_may_follow():
    parser = build_parser()
    args = parser.parse_args(["audit", "--regions", "sky=0:0.3,0:1", "OUT"])
    assert args.out == "OUT" and args.regions == ["sky=0:0.3,0:1"]
    args = parser.parse_args(["audit", "--regions", "sky=0:0.3,0:1", "--regions",
                              "ground=0.7:1,0:1", "OUT", "--masks", "m.h5"])
    assert args.out == "OUT" and args.regions == ["sky=0:0.3,0:1", "ground=0.7:1,0:1"]
    # The README's form: the folder first.
    args = parser.parse_args(["audit", "explained/", "--masks", "masks.h5", "--regions",
                              "sky=0:0.3,0:1", "--report", "explained/report", "--fail-on-flag"])
    assert args.out == "explained/" and args.regions == ["sky=0:0.3,0:1"]
    assert parser.parse_args(["audit", "OUT"]).regions is None


def test_cli_regions_before_the_run_folder(made, tmp_path):
    target = str(tmp_path / "a.json")
    assert main(["audit", "--regions", "sky=0:0.25,0:1", "--regions", "ground=24:32,0:32",
                 made["out"], "--json", target]) == 0
    saved = strict_json(target)
    assert saved["regions"] == {"sky": [0, 8, 0, 32], "ground": [24, 32, 0, 32]}
    maps = resize_maps(stored_maps(made["maps"]), SIZE)
    for entry in saved["classes"]:
        rows = made["labels"] == entry["class"]
        sky = maps[rows, :8].sum(axis=(1, 2)) / maps[rows].sum(axis=(1, 2))
        ground = maps[rows, 24:].sum(axis=(1, 2)) / maps[rows].sum(axis=(1, 2))
        assert entry["regions"]["sky"]["mean"] == pytest.approx(sky.mean(), abs=1e-5)
        assert entry["regions"]["ground"]["mean"] == pytest.approx(ground.mean(), abs=1e-5)
    with pytest.raises(ValueError, match="region name 'sky' is given twice"):
        run_audit(made["out"], regions=["sky=0:8,0:32", "sky=0:4,0:32"])
