"""The audit at the maps' stored size: every number of audit.json without masks against a
float64 reference written here (pixel loops over the maps as stored for concentration and
peaks; the maps resized to the images' size, as the audit did before it measured them as
stored, for mean heatmaps and region shares), and the same audit whatever the chunk and
the shard size."""

import math

import numpy as np
import pytest
import tensorflow as tf

from sightline.audit.audit import run_audit
from sightline.audit.metrics import concentration, region_shares, region_weights, resize_maps
from tests.audit.audit_runs import CLASSES, SIZE, sky_maps, stored_maps, write_run

# float64 throughout on both sides; the audit keeps per-image metrics as float32 for the
# quantiles (about 6e-8 relative on values in [0, 1]).
PER_IMAGE_ATOL = 1e-6
COUNT = 36


def reference_concentration(heatmap):
    """One map as stored, pixel by pixel in Python floats: entropy, coverage, peak."""
    height, width = heatmap.shape
    values = [float(v) for v in heatmap.ravel()]
    total = sum(values)
    if total == 0:
        return {"entropy": math.nan, "coverage": math.nan, "peak_y": math.nan,
                "peak_x": math.nan}
    nats = -sum(v / total * math.log(v / total) for v in values if v > 0)
    first = max(range(len(values)), key=lambda i: (values[i], -i))  # first of the largest
    return {"entropy": nats / math.log(height * width),
            "coverage": math.exp(nats) / (height * width),
            "peak_y": (first // width + 0.5) / height, "peak_x": (first % width + 0.5) / width}


def reference_region_share(resized, region):
    """The region's share of a map already resized to the images' size, by a loop."""
    height, width = resized.shape
    inside = sum(float(resized[y, x]) for y in range(height) for x in range(width) if region[y, x])
    return inside / float(resized.sum())


def test_region_weights_give_the_share_of_the_resized_map(rng):
    # Integer and non-integer factors, and no resizing at all.
    for stored, size in (((8, 8), (32, 32)), ((7, 5), (30, 45)), ((3, 3), (28, 28)),
                         ((6, 6), (6, 6))):
        maps = rng.uniform(0, 1, (4, *stored)) ** 2
        maps[1] = 0.0  # no mass: no share
        region = np.zeros(size, bool)
        region[size[0] // 5:size[0] // 2, size[1] // 3:] = True
        resized = tf.image.resize(maps[..., None], size, method="bilinear").numpy()[..., 0]
        got = region_shares(maps, region_weights(region, stored))
        assert math.isnan(got[1])
        for i in (0, 2, 3):
            assert got[i] == pytest.approx(reference_region_share(resized[i], region), abs=1e-6)


def test_concentration_is_measured_on_the_map_as_stored(rng):
    maps = rng.uniform(0, 1, (5, 7, 7)) ** 4
    maps[1] = 0.0
    maps[1, 2, 5] = 0.3  # one cell: entropy 0, coverage 1/49
    maps[2] = 0.0  # empty
    maps[3] = 0.5  # flat: entropy 1, coverage 1, the first cell is the peak
    got = concentration(maps)
    for i in range(len(maps)):
        for name, value in reference_concentration(maps[i]).items():
            if math.isnan(value):
                assert math.isnan(got[name][i]), (i, name)
            else:
                assert got[name][i] == pytest.approx(value, abs=1e-12), (i, name)
    assert got["entropy"][1] == pytest.approx(0.0, abs=1e-12)
    assert got["coverage"][1] == pytest.approx(1 / 49)
    assert (got["peak_y"][1], got["peak_x"][1]) == (2.5 / 7, 5.5 / 7)
    # Resized first, the one-cell map would spread over interpolated pixels.
    resized = concentration(resize_maps(maps[1:2], (224, 224)))
    assert resized["entropy"][0] > 0.5 and resized["coverage"][0] > 2 / 49


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Class 0 looks at random cells, class 1 at the sky (the top rows) with a fixed sun;
    a few empty maps and ties; one run written with shards of 5 maps and one of 36."""
    rng = np.random.default_rng(3)
    labels = np.arange(COUNT) % 2
    keys = np.array([f"{CLASSES[label]}/{i:03d}.png" for i, label in enumerate(labels)])
    maps = rng.uniform(0, 0.05, (COUNT, 8, 8))
    cells = rng.integers(0, 8, (COUNT, 2))
    maps[np.arange(COUNT), cells[:, 0], cells[:, 1]] = rng.uniform(0.5, 1.0, COUNT)
    maps[labels == 1] = sky_maps(int((labels == 1).sum()), rng)
    maps[[4, 9]] = 0.0  # empty maps: no peak, no share
    maps[6] = 0.25  # flat: ties everywhere
    root = tmp_path_factory.mktemp("stored")
    outs = {shard: write_run(str(root / f"run-{shard}"), maps, labels, labels, keys,
                             shard_size=shard) for shard in (5, COUNT)}
    return {"outs": outs, "maps": maps, "labels": labels}


def _reference_audit(run, sky):
    """Per class, what audit.json must hold, from float64 references."""
    stored = stored_maps(run["maps"])
    resized = resize_maps(stored, SIZE)
    expected = {}
    for label in (0, 1):
        rows = [i for i in range(COUNT) if run["labels"][i] == label]
        per_image = [reference_concentration(stored[i]) for i in rows]
        full = [i for i in rows if stored[i].sum() > 0]

        def finite(name):
            return np.array([m[name] for m in per_image if not math.isnan(m[name])])

        ys, xs = finite("peak_y"), finite("peak_x")
        expected[label] = {
            "count": len(rows),
            "entropy": finite("entropy"), "coverage": finite("coverage"),
            "peak_spread": math.sqrt(ys.var() + xs.var()), "peak_mean": [ys.mean(), xs.mean()],
            "empty_maps": len(rows) - len(full),
            "mean_heatmap": resized[rows].mean(axis=0),
            "sky": np.array([reference_region_share(resized[i], sky) for i in full]),
        }
    return expected


def _quantiles(values):
    return {"mean": values.mean(), "median": np.median(values),
            "p10": np.quantile(values, 0.1), "p90": np.quantile(values, 0.9)}


def test_audit_without_masks_matches_the_reference_for_every_chunk_and_shard_size(run):
    sky = np.zeros(SIZE, bool)
    sky[:8] = True
    expected = _reference_audit(run, sky)
    audits = [run_audit(out, regions=["sky=0:8,0:32"], chunk=chunk)
              for out in run["outs"].values() for chunk in (1, 7, 4096)]
    for audit in audits:
        assert audit["stored_size"] == [8, 8] and audit["compared_at"] == list(SIZE)
        assert audit["num_images"] == COUNT and audit["empty_maps"] == 2
        for entry in audit["classes"]:
            want = expected[entry["class"]]
            assert entry["name"] == CLASSES[entry["class"]] and entry["count"] == want["count"]
            assert entry["empty_maps"] == want["empty_maps"]
            for name in ("entropy", "coverage"):
                for key, value in _quantiles(want[name]).items():
                    assert entry[name][key] == pytest.approx(value, abs=PER_IMAGE_ATOL), (name, key)
            for key, value in _quantiles(want["sky"]).items():
                assert entry["regions"]["sky"][key] == pytest.approx(value, abs=PER_IMAGE_ATOL)
            assert entry["peak_spread"] == pytest.approx(want["peak_spread"], abs=1e-9)
            assert entry["peak_mean"] == pytest.approx(want["peak_mean"], abs=1e-9)
            np.testing.assert_allclose(entry["mean_heatmap"], want["mean_heatmap"], atol=1e-6)
    # The sky class's peaks stay put (the sun), the other's wander.
    cross, disc = audits[0]["classes"]
    assert disc["peak_spread"] < 0.3 * cross["peak_spread"]
    # The clusters, too, are the same whatever the chunk and shard size.
    first = audits[0]["clusters"]
    for audit in audits[1:]:
        assert [(c["id"], c["class"], c["size"], c["flagged"]) for c in audit["clusters"]] == \
            [(c["id"], c["class"], c["size"], c["flagged"]) for c in first]


def test_a_chunk_that_is_not_a_whole_number_of_maps_is_refused(run):
    out = run["outs"][5]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="chunk must be a whole number of maps"):
            run_audit(out, chunk=bad)


def test_the_reader_finds_rows_by_sample_index_without_a_table_of_them(run):
    from sightline.store.results import open_results

    stored = stored_maps(run["maps"])
    with open_results(run["outs"][5]) as results:
        for index in (0, 4, 17, COUNT - 1):
            np.testing.assert_array_equal(results.heatmap("gradcam", index=index), stored[index])
            assert results.sample(index=index)["index"] == index
        for missing in (-1, COUNT, 10**9):
            with pytest.raises(KeyError, match=f"no sample with index {missing}"):
                results.row(index=missing)


def test_nearest_sample_maps_are_the_float64_brute_force_ones(rng):
    """ClassClusters.nearest takes its candidates from a float32 product: the neighbours
    must still be those of float64 distances to every sample map, ties by sample row,
    including maps with near and exact duplicates in the sample (where the fallback to
    the float64 product is needed)."""
    from sightline.audit.clusters import NEIGHBOURS, ClassClusters, embed_maps

    def unit(values):
        return np.sqrt(values / values.sum(axis=1, keepdims=True))  # Hellinger, as embed_maps

    spread = unit(rng.uniform(0, 1, (300, 64)) ** 4)
    base = rng.uniform(0, 1, (3, 64)) ** 4
    crowded = unit(base[rng.integers(0, 3, 300)] + rng.uniform(0, 1e-5, (300, 64)))
    crowded[:40] = crowded[0]  # exact duplicates: ties at every rank
    # 3x3 maps embedded on the 16x16 grid: 25 distinct columns of 256, so candidates are
    # ranked in 25 dimensions; queries off that subspace too.
    tiny = embed_maps(rng.uniform(0, 1, (300, 3, 3)) ** 3)[0].astype(np.float64)
    for sample in (spread, crowded, tiny):
        fit = ClassClusters(0, np.arange(len(sample)), sample, np.arange(len(sample)) % 2,
                            np.zeros((len(sample), 2)), np.zeros(3), 2)
        dims = sample.shape[1]
        queries = np.concatenate([unit(rng.uniform(0, 1, (50, dims)) ** 4), sample[:60],
                                  sample[:20] + 1e-7])
        distance, rows = fit.nearest(queries)
        for i, query in enumerate(queries):
            exact = np.sqrt(((query[None, :] - sample) ** 2).sum(axis=1))
            order = np.lexsort((np.arange(len(sample)), exact))[:NEIGHBOURS]
            # Equal distances may come in another order of rows only when they tie.
            np.testing.assert_allclose(distance[i], exact[order], rtol=0, atol=1e-15)
            assert sorted(rows[i]) == sorted(order) or np.allclose(
                exact[rows[i]], exact[order], rtol=0, atol=1e-15), i
        if sample is tiny:
            assert fit._rough[1].shape == (len(sample), 25)  # the fewer dimensions were used
