"""Mask-free clustering of heatmaps: known groups on hand-made maps, the continuum that must
not be flagged, the planted corner group, and determinism under order and chunking."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from sightline.audit.clusters import (ClassSample, ClusterModel, ClusterStatistics,
                                      _kth_smallest, _silhouettes, _smallest, add_rows,
                                      cluster_maps, embed_maps, fit_clusters, hot_region,
                                      place_name)
from tests.audit.planted_maps import SIDE, blob_maps, planted_corner

def one_class(maps, **options):
    count = len(maps)
    return cluster_maps(np.arange(count), np.zeros(count, int), maps, **options)


def assert_precision_and_recall(found, truth, least=0.9):
    """found, truth bool [n]: the found maps are mostly planted ones and hold most of them."""
    precision = (found & truth).sum() / found.sum()
    recall = (found & truth).sum() / truth.sum()
    assert precision >= least and recall >= least, (precision, recall)


# ----------------------------------------------------------------------------- embedding


@pytest.mark.parametrize("height, width", [(32, 32), (7, 7), (8, 20)])
def test_embedding_is_area_average_to_unit_mass_under_a_square_root(height, width):
    rng = np.random.default_rng(0)
    maps = rng.uniform(-0.2, 1.0, (3, height, width))
    features, empty = embed_maps(maps)
    # Reference: repeat every pixel SIDE times along each axis, then average blocks of
    # height x width: exact area averaging onto a SIDE x SIDE grid, whatever the sizes.
    fine = np.repeat(np.repeat(np.maximum(maps, 0), SIDE, axis=1), SIDE, axis=2)
    blocks = fine.reshape(3, SIDE, height, SIDE, width).mean(axis=(2, 4))
    unit = blocks / blocks.sum(axis=(1, 2), keepdims=True)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, np.sqrt(unit).reshape(3, -1), rtol=1e-6, atol=1e-7)
    assert not empty.any()


def test_maps_without_mass_are_not_clustered():
    rng = np.random.default_rng(1)
    maps = blob_maps([(0.5, 0.5)] * 40, rng)
    maps[[3, 17]] = 0.0
    maps[25] = -1.0  # negative evidence only: no mass either
    _, cluster, layout, _ = one_class(maps)
    assert set(np.nonzero(cluster < 0)[0]) == {3, 17, 25}
    assert np.isnan(layout[[3, 17, 25]]).all() and np.isfinite(layout[cluster >= 0]).all()


# ----------------------------------------------------------------------------- clustering


def test_three_groups_at_distinct_places_are_recovered():
    rng = np.random.default_rng(2)
    truth = rng.permutation(np.repeat([0, 1, 2], [100, 80, 60]))
    places = [(0.5, 0.5), (0.2, 0.8), (0.8, 0.2)]
    maps = blob_maps([places[t] for t in truth], rng, jitter=0.6)
    clusters, cluster, _, model = one_class(maps)
    assert model.fits[0].cluster_count == 3  # chosen by the eigengap, not told
    assert adjusted_rand_score(truth, cluster) > 0.99
    # Clusters are numbered by size: 100, 80, 60 maps.
    assert [c["size"] for c in clusters] == [100, 80, 60]
    for entry, place in zip(clusters, places):
        y0, y1, x0, x1 = entry["hot_region"]
        assert y0 < place[0] < y1 and x0 < place[1] < x1
        assert entry["flagged"], entry["reasons"]


@pytest.mark.parametrize("seed, clusters", [(3, None), (5, 2)])
def test_a_blob_sliding_across_the_image_is_one_continuum_not_groups(seed, clusters):
    rng = np.random.default_rng(seed)
    maps = blob_maps([(0.5, x) for x in rng.uniform(0.05, 0.95, 300)], rng)
    found, _, _, _ = one_class(maps, cluster_count=clusters)
    assert not any(c["flagged"] for c in found), [c["reasons"] for c in found]
    # It was cut into slices (the eigengap of a chain picks many; or we asked for two
    # halves, whose evidence sits a quarter of the image apart), and every slice was
    # recognised as touching its neighbours: the separation test, not only the distance.
    assert len(found) > 1
    for entry in found:
        assert any(r.startswith("a slice of a continuum") for r in entry["reasons"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_corner_group_is_flagged_with_precision_and_recall(seed):
    maps, corner = planted_corner(seed)
    clusters, cluster, _, _ = one_class(maps, class_names=["horse"])
    flagged = [c for c in clusters if c["flagged"]]
    assert len(flagged) == 1, [c["reasons"] for c in clusters]
    found = cluster == flagged[0]["id"]
    assert_precision_and_recall(found, corner)
    y0, y1, x0, x1 = flagged[0]["hot_region"]
    assert y0 >= 0.6 and x0 >= 0.6 and y1 == 1.0 and x1 == 1.0
    (reason,) = flagged[0]["reasons"]
    assert reason.startswith(f"{flagged[0]['share']:.0%} of class 'horse': the evidence sits "
                             "in the bottom-right corner")


def split_corner(seed, count=400, share=0.15):
    """Like planted_corner, but the tag comes in two variants a few cells apart inside the
    bottom-right corner (half the tagged maps each), which k-means with a K larger than
    needed cuts into two clusters. Returns (maps, truth bool [n])."""
    rng = np.random.default_rng(seed)
    variant = rng.choice(3, count, p=[1 - share, share / 2, share / 2])  # 0: untagged
    places = {1: (0.92, 0.84), 2: (0.84, 0.92)}
    centres = [places[v] if v else (rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65))
               for v in variant]
    return blob_maps(centres, rng, jitter=0.3), variant > 0


@pytest.mark.parametrize("seed, clusters", [(0, 4), (2, 3), (3, 6)])
def test_a_tag_group_cut_in_two_at_the_same_corner_is_flagged_as_one(seed, clusters):
    maps, corner = split_corner(seed)
    found_clusters, cluster, _, model = one_class(maps, cluster_count=clusters)
    # The two halves of the tag group were joined, so fewer clusters are left than asked.
    assert model.fits[0].cluster_count < clusters
    flagged = [c for c in found_clusters if c["flagged"]]
    assert len(flagged) == 1, [c["reasons"] for c in found_clusters]
    found = cluster == flagged[0]["id"]
    assert_precision_and_recall(found, corner)
    # Size and share describe the joined group, over every map of the class.
    assert flagged[0]["size"] == found.sum()
    assert flagged[0]["share"] == pytest.approx(found.sum() / len(maps))


@pytest.mark.parametrize("clusters", [None, 5])
def test_two_tags_in_two_corners_stay_two_groups(clusters):
    rng = np.random.default_rng(12)
    # Two shortcuts: ~10% of the maps on the top-right corner, ~10% on the bottom-right;
    # the object on the left. Joined, the two corners would look at the right side, far
    # from the object, yet they do not look at the same place.
    place = rng.choice(3, 400, p=[0.8, 0.1, 0.1])
    corners = {1: (0.12, 0.88), 2: (0.88, 0.88)}
    maps = blob_maps([corners[p] if p else (rng.uniform(0.4, 0.6), rng.uniform(0.2, 0.4))
                      for p in place], rng, jitter=0.3)
    found, cluster, _, _ = one_class(maps, cluster_count=clusters)
    flagged = [c for c in found if c["flagged"]]
    assert len(flagged) == 2, [c["reasons"] for c in found]
    for corner in (1, 2):
        members = place == corner
        best = max(flagged, key=lambda c: (cluster[members] == c["id"]).sum())
        assert_precision_and_recall(cluster == best["id"], members)


@pytest.mark.parametrize("seed, clusters", [(0, 6), (1, None)])
def test_slices_of_a_continuum_at_different_places_are_not_joined_into_a_flag(seed, clusters):
    rng = np.random.default_rng(seed)
    # The evidence slides along the diagonal from the middle into the bottom-right corner:
    # neighbouring slices look at neighbouring places, none is a group apart.
    along = rng.uniform(0, 1, 300)
    maps = blob_maps([(0.3 + 0.6 * t, 0.3 + 0.6 * t) for t in along], rng)
    found, _, _, model = one_class(maps, cluster_count=clusters)
    assert not any(c["flagged"] for c in found), [c["reasons"] for c in found]
    # Not chained end to end into one cluster: the slices far apart stay apart.
    assert model.fits[0].cluster_count >= 3
    centres = sorted(c["hot_centre"][0] for c in found)
    assert centres[-1] - centres[0] > 0.4
    for entry in found:
        assert any(r.startswith("a slice of a continuum") for r in entry["reasons"])


def test_nothing_is_flagged_when_every_map_looks_at_the_object():
    rng = np.random.default_rng(4)
    # The object sits somewhere in the middle half of each image, the map on it.
    maps = blob_maps(rng.uniform(0.25, 0.75, (400, 2)), rng, jitter=0.3)
    clusters, _, _, _ = one_class(maps)
    assert not any(c["flagged"] for c in clusters), [c["reasons"] for c in clusters]


def test_fitting_on_a_sample_assigns_the_rest_to_the_planted_group():
    maps, corner = planted_corner(5, count=600)
    clusters, cluster, layout, model = one_class(maps, sample_size=150)
    assert len(model.fits[0].indices) == 150
    (flagged,) = [c for c in clusters if c["flagged"]]
    found = cluster == flagged["id"]
    assert (found & corner).sum() / found.sum() >= 0.9
    assert (found & corner).sum() / corner.sum() >= 0.9
    assert flagged["size"] == found.sum() and sum(c["size"] for c in clusters) == 600
    # The sample's own maps keep the cluster and layout position the fit gave them.
    fit = model.fits[0]
    np.testing.assert_array_equal(cluster[fit.indices], fit.assignment)
    np.testing.assert_allclose(layout[fit.indices], fit.layout, rtol=1e-6)


def test_cluster_count_override():
    maps, _ = planted_corner(6)
    clusters, cluster, _, model = one_class(maps, cluster_count=2)
    assert model.fits[0].cluster_count == 2 and set(cluster) == {0, 1}
    # Without labels, predictions or scores there is no accuracy or mean score to give.
    assert all(c["accuracy"] is None and c["mean_score"] is None for c in clusters)
    with pytest.raises(ValueError, match="at least 1"):
        one_class(maps, cluster_count=0)


# ----------------------------------------------------------------------------- determinism


def test_same_result_for_shuffled_order_and_any_chunking():
    maps, _ = planted_corner(7, count=300)
    rng = np.random.default_rng(8)
    classes = rng.integers(0, 2, len(maps))
    indices = np.arange(1000, 1000 + len(maps))
    scores = rng.uniform(0.5, 1.0, len(maps))
    keys = np.array([f"k{i}" for i in indices])

    def run(order, chunk):
        clusters, cluster, layout, _ = cluster_maps(
            indices[order], classes[order], maps[order], scores=scores[order],
            keys=keys[order], sample_size=120, seed=3, chunk=chunk)
        back = np.argsort(order)
        return clusters, cluster[back], layout[back]

    first = run(np.arange(len(maps)), 4096)
    second = run(rng.permutation(len(maps)), 37)
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[2], second[2])
    for one, two in zip(first[0], second[0]):
        assert one["examples"] == two["examples"] and one["size"] == two["size"]
        assert one["mean_score"] == pytest.approx(two["mean_score"], rel=1e-12)
        np.testing.assert_allclose(one["mean_heatmap"], two["mean_heatmap"], rtol=1e-12)
    # A different seed draws a different sample.
    _, _, _, other = cluster_maps(indices, classes, maps, sample_size=120, seed=4)
    _, _, _, same = cluster_maps(indices, classes, maps, sample_size=120, seed=3)
    assert not np.array_equal(other.fits[0].indices, same.fits[0].indices)


def test_sample_keeps_the_same_maps_whatever_the_chunks():
    rng = np.random.default_rng(9)
    maps = rng.uniform(0, 1, (50, 4, 4))
    indices = rng.permutation(500)[:50]
    classes = np.zeros(50, int)
    whole, pieces = ClassSample(size=10, seed=1), ClassSample(size=10, seed=1)
    whole.add(indices, classes, maps)
    for start in range(0, 50, 7):
        pieces.add(indices[start:start + 7][::-1], classes[start:start + 7],
                   maps[start:start + 7][::-1])
    np.testing.assert_array_equal(whole.members(0)[0], pieces.members(0)[0])
    np.testing.assert_array_equal(whole.members(0)[1], pieces.members(0)[1])


def test_nearest_sample_maps_match_a_float64_brute_force():
    # 3x3 maps up-sampled to the 16x16 grid (columns in groups of equal values: the
    # fewer-dimension path), 7x7 maps, and unit vectors with dead channels that a few
    # queries do light (columns equal on the sample but not on those queries).
    rng = np.random.default_rng(12)
    cases = [embed_maps(rng.uniform(0, 1, (900, 3, 3)) ** 3)[0],
             embed_maps(rng.uniform(0, 1, (900, 7, 7)))[0]]
    vectors = rng.normal(size=(900, 24))
    vectors[:, 20:] = 0.0
    vectors[700:710, 21] = 0.5
    cases.append(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    for features in cases:
        features = np.asarray(features, np.float64)
        sample, queries = features[:600], features[600:]
        fit = fit_clusters(_sample_of(sample)).fits[0]
        distance, rows = fit.nearest(queries)
        brute = np.sqrt(((queries[:, None, :] - fit.features[None, :, :]) ** 2).sum(axis=2))
        expected = np.lexsort((np.broadcast_to(np.arange(600), brute.shape), brute), axis=1)[:, :10]
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_allclose(distance, np.take_along_axis(brute, expected, 1), atol=1e-12)


def _sample_of(features):
    """A ClassSample holding these embedded rows as they are (class 0, indices 0..m-1)."""
    sample = ClassSample(size=len(features), embed=lambda rows: (np.asarray(rows, np.float32),
                                                                 np.zeros(len(rows), bool)))
    sample.add(np.arange(len(features)), np.zeros(len(features), int), features)
    return sample


def test_block_selection_keeps_the_smallest_values_of_each_row():
    rng = np.random.default_rng(14)
    for columns in (57, 400, 2003):
        values = rng.random((30, columns)).astype(np.float32)
        values[::3] = np.round(values[::3] * 10) / 10  # ties
        chosen = _smallest(values, 20)
        picked = np.take_along_axis(values, chosen, 1)
        np.testing.assert_array_equal(np.sort(picked, axis=1), np.sort(values, axis=1)[:, :20])
        assert all(len(set(row)) == 20 for row in chosen)
        np.testing.assert_array_equal(_kth_smallest(values, 10), np.sort(values, axis=1)[:, 10])


def test_silhouettes_equal_scikit_learns():
    from sklearn.metrics import pairwise_distances, silhouette_samples
    rng = np.random.default_rng(15)
    points = rng.normal(size=(300, 4))
    assignment = rng.integers(0, 4, 300)
    assignment[7] = 9  # a cluster of one, and labels with a gap
    distance = pairwise_distances(points)
    np.testing.assert_allclose(_silhouettes(distance, assignment),
                               silhouette_samples(distance, assignment, metric="precomputed"),
                               atol=1e-12)


def test_rows_are_added_per_cluster_as_by_a_loop():
    rng = np.random.default_rng(16)
    ids, values = rng.integers(0, 5, 200), rng.normal(size=(200, 3, 3))
    total = np.ones((6, 3, 3))
    add_rows(total, ids, values)
    expected = np.ones((6, 3, 3))
    for row, cluster in enumerate(ids):
        expected[cluster] += values[row]
    np.testing.assert_allclose(total, expected, rtol=1e-12)


# ----------------------------------------------------------------------------- statistics


def test_statistics_match_a_per_cluster_reference():
    maps, corner = planted_corner(10, count=200)
    rng = np.random.default_rng(11)
    classes = np.where(rng.random(200) < 0.5, 2, 5)
    labels = np.where(rng.random(200) < 0.2, -1, rng.integers(0, 6, 200))
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 6, 200))
    scores = rng.uniform(0.3, 1.0, 200)
    clusters, cluster, _, model = cluster_maps(
        np.arange(200), classes, maps, labels=labels, predictions=predictions, scores=scores,
        class_names={2: "two", 5: "five"})
    assert [c["id"] for c in clusters] == list(range(model.count))
    for entry in clusters:
        members = np.nonzero(cluster == entry["id"])[0]
        assert set(classes[members]) == {entry["class"]}
        assert entry["class_name"] == {2: "two", 5: "five"}[entry["class"]]
        assert entry["size"] == len(members)
        assert entry["share"] == pytest.approx(len(members) / (classes == entry["class"]).sum())
        known = [i for i in members if labels[i] != -1]
        right = sum(1 for i in known if labels[i] == predictions[i])
        assert entry["accuracy"] == pytest.approx(right / len(known))
        assert entry["mean_score"] == pytest.approx(sum(scores[i] for i in members) / len(members))
        np.testing.assert_allclose(entry["mean_heatmap"], maps[members].mean(axis=0), rtol=1e-12)
        # Examples: the members closest to the cluster's centroid in the embedding.
        fit, local = model.locate(entry["id"])
        features, _ = embed_maps(maps[members])
        distance = np.sqrt(((features - fit.centroids[local]) ** 2).sum(axis=1))
        expected = members[np.lexsort((members, distance))][:8]
        assert [e["index"] for e in entry["examples"]] == list(expected)


def test_hot_region_and_place_by_hand():
    mean_map = np.zeros((4, 8))
    mean_map[2, 5] = 1.0
    mean_map[3, 6] = 0.5  # exactly half the peak: hot
    mean_map[0, 0] = 0.49  # below half: not hot
    box, centre = hot_region(mean_map)
    assert box == [2 / 4, 4 / 4, 5 / 8, 7 / 8]
    # Weighted centre of the two hot cells' centres: (2.5, 5.5) weight 1, (3.5, 6.5) weight 0.5.
    assert centre == pytest.approx([(2.5 + 0.5 * 3.5) / 1.5 / 4, (5.5 + 0.5 * 6.5) / 1.5 / 8])
    assert hot_region(np.zeros((3, 3))) == (None, None)
    assert place_name([0.9, 0.9]) == "bottom-right corner"
    assert place_name([0.1, 0.5]) == "top edge"
    assert place_name([0.5, 0.1]) == "left side"
    assert place_name([0.5, 0.5]) == "centre"


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match=r"maps must be \[n, height, width\]"):
        cluster_maps(np.arange(3), np.zeros(3), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="one row per sample.*3 indices, 2 classes"):
        cluster_maps(np.arange(3), np.zeros(2), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="sample size must be a positive"):
        ClassSample(size=0)
    model = fit_clusters(ClassSample())
    assert isinstance(model, ClusterModel) and model.count == 0
    with pytest.raises(ValueError, match="one explained class per map: received 2 classes for 3"):
        model.assign([0, 0], np.zeros((3, 4, 4)))
    statistics = ClusterStatistics(model)
    with pytest.raises(ValueError, match="cluster and features must have one row per map"):
        statistics.add([0, 1], [0, 0], np.zeros((2, 4, 4)), np.zeros(1, int), np.zeros((2, 256)))
    with pytest.raises(ValueError, match="cluster id 3 is not one"):
        model.locate(3)
