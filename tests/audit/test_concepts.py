"""The "what" view's math on hand-made relevance vectors (no model): groups found against
the whole rest of their class, rare ones included, none in a continuum; images with no
evidence set apart; distinguishing channels; the feature-space ablation and the own hot
spot test against eager references."""

import numpy as np
import pytest

from sightline.audit.concepts import (describe_concepts, distinguishing_channels,
                                      embed_relevance, evidence_of, find_groups,
                                      fit_concept_model, no_evidence_limit)
from sightline.audit.clusters import ClassSample, ClusterStatistics
from sightline.audit.verify import features_depend, feature_drops, log_odds, own_spot_drops

RULE = dict(min_size=10, max_share=0.5, min_silhouette=0.7, min_separation=2.0)


def relevance_class(rng, count, group=0, channels=16, group_channel=3, spread=0.15):
    """Relevance of `count` images using channels 0..2 (the object), the first `group` of
    them also channel `group_channel` (a cue), strongly. Returns (relevance [n,K], truth)."""
    relevance = np.zeros((count, channels))
    relevance[:, :3] = 1.0 + spread * rng.normal(size=(count, 3))
    relevance[:, 3:] = 0.05 * rng.normal(size=(count, channels - 3))
    truth = np.zeros(count, bool)
    truth[:group] = True
    relevance[:group, group_channel] = 4.0 + 0.2 * rng.normal(size=group)
    order = rng.permutation(count)
    return relevance[order], truth[order]


@pytest.mark.parametrize("share", [0.03, 0.1, 0.4])
def test_a_group_using_another_channel_is_found_whatever_its_share(share):
    rng = np.random.default_rng(1)
    relevance, truth = relevance_class(rng, 600, group=int(share * 600))
    features, _ = embed_relevance(relevance)
    groups, silhouettes, separations, _ = find_groups(features, **RULE)
    assert len(groups) == 1
    np.testing.assert_array_equal(groups[0], truth)
    assert silhouettes[0] >= 0.7 and separations[0] >= 2.0


def test_a_continuum_has_no_group():
    rng = np.random.default_rng(2)
    angle = rng.uniform(0, np.pi / 2, 500)  # evidence drifting from channel 0 to channel 1
    relevance = np.stack([np.cos(angle), np.sin(angle)] + [0.02 * rng.normal(size=500)] * 6,
                         axis=1)
    groups, _, _, _ = find_groups(embed_relevance(relevance)[0], **RULE)
    assert groups == []


def test_images_with_no_evidence_are_set_apart_and_never_flagged():
    rng = np.random.default_rng(3)
    relevance, truth = relevance_class(rng, 400, group=60)
    # A fifth of the class: the model sees nothing (relevance near zero).
    empty = rng.permutation(400)[:80]
    relevance[empty] *= 1e-3
    truth[empty] = False
    sample = ClassSample(size=1000, embed=embed_relevance)
    indices = np.arange(400)
    sample.add(indices, np.zeros(400, int), relevance, scalars=evidence_of(relevance))
    model = fit_concept_model(sample, **RULE)
    fit = model.fits[0]
    assert fit.no_evidence is not None
    assert set(np.flatnonzero(fit.assignment == fit.no_evidence)) == set(empty)
    statistics = ClusterStatistics(model)
    cluster, _, features = model.assign(np.zeros(400, int), relevance)
    statistics.add(indices, np.zeros(400, int), np.ones((400, 4, 4)), cluster, features)
    sums = np.zeros((model.count, 16))
    np.add.at(sums, cluster, relevance)
    size = np.maximum(np.bincount(cluster, minlength=model.count), 1)
    evidence = np.bincount(cluster, weights=evidence_of(relevance), minlength=model.count) / size
    found = describe_concepts(statistics, relevance_sums=sums, evidence=evidence)
    flagged = [c for c in found if c["flagged"]]
    assert len(flagged) == 1 and flagged[0]["channels"][0] == 3
    members = cluster == flagged[0]["id"]
    np.testing.assert_array_equal(members, truth)
    assert not [c for c in found if c["no_evidence"] and c["flagged"]]


def test_no_evidence_limit_is_a_tenth_of_the_median_positive_evidence():
    assert no_evidence_limit([-1.0, 0.0, 2.0, 4.0, 6.0]) == pytest.approx(0.4)
    assert no_evidence_limit([-1.0, 0.0]) == 0.0


def test_distinguishing_channels_cover_half_of_the_positive_difference():
    channels, lifts = distinguishing_channels([5.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 2.0])
    assert channels == [0] and lifts == [4.0]  # 4 of the positive 6 covers half
    channels, _ = distinguishing_channels([5.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 2.0], cover=0.8)
    assert channels == [0, 2]


def test_log_odds_from_softmax_logits_do_not_saturate():
    logits = np.array([[300.0, 0.0, -5.0], [1.0, 2.0, 3.0]])
    got = log_odds(logits, 0, "softmax")
    p = np.exp(logits[1] - logits[1].max()) / np.exp(logits[1] - logits[1].max()).sum()
    assert got[0] == pytest.approx(300.0 - np.logaddexp(0.0, -5.0))
    assert got[1] == pytest.approx(np.log(p[0] / (1 - p[0])))


def test_feature_drops_equal_a_hand_computed_linear_head():
    """A head that averages the map and applies a linear layer: replacing channels by the
    rest's mean changes the logits by W^T (mean rest - mean group) on those channels."""
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(6, 3))
    features = rng.uniform(0, 2, (20, 4, 4, 6)).astype(np.float32)
    rest_mean = rng.uniform(0, 1, (4, 4, 6)).astype(np.float32)

    def head(values):
        logits = values.mean(axis=(1, 2)) @ weights
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.concatenate([exp / exp.sum(axis=1, keepdims=True), logits], axis=1)

    numbers = feature_drops(lambda images: images, head, features, 1, [2, 4], rest_mean,
                            rest_log_odds=0.5, draws=2, batch_size=7)
    replaced = features.copy()
    replaced[..., [2, 4]] = rest_mean[..., [2, 4]]
    before, after = head(features.astype(np.float64)), head(replaced.astype(np.float64))
    assert numbers["mean_drop"] == pytest.approx((before[:, 1] - after[:, 1]).mean(), abs=1e-6)
    odds = log_odds(before[:, 3:], 1, "softmax") - log_odds(after[:, 3:], 1, "softmax")
    assert numbers["log_odds_drop"] == pytest.approx(odds.mean(), abs=1e-5)
    assert numbers["excess_log_odds"] == pytest.approx(
        log_odds(before[:, 3:], 1, "softmax").mean() - 0.5, abs=1e-5)
    assert len(numbers["control_channels"]) == 2
    assert all(not set(c) & {2, 4} for c in numbers["control_channels"])


def test_features_depend_rule():
    base = {"mean_drop": 0.0, "control_drop": 0.0, "log_odds_drop": 8.0,
            "control_log_odds_drop": 1.0, "excess_log_odds": 10.0, "rest_log_odds": 5.0}
    assert features_depend(base)  # saturated probabilities, the log-odds show it
    assert not features_depend({**base, "excess_log_odds": 3.0})  # below the rest's 5
    assert not features_depend({**base, "log_odds_drop": 4.0})  # less than half the excess
    assert not features_depend({**base, "control_log_odds_drop": 5.0})  # random does as much
    assert features_depend({**base, "mean_drop": 0.5, "excess_log_odds": 0.0})


def test_own_spot_drops_hide_each_members_own_region():
    images = np.zeros((3, 8, 8, 1), np.float32)
    images[0, 0:2, 0:2] = 1.0
    images[1, 6:8, 6:8] = 1.0
    images[2, 0:2, 6:8] = 1.0

    def probabilities(batch):  # class 0's probability is the image's maximum pixel
        peak = np.asarray(batch).reshape(len(batch), -1).max(axis=1)
        return np.stack([peak, 1 - peak], axis=1)

    hot = [[0, 0.25, 0, 0.25], [0.75, 1, 0.75, 1], [0, 0.25, 0.75, 1]]
    control = [[0.75, 1, 0.75, 1], [0, 0.25, 0, 0.25], [0.75, 1, 0, 0.25]]
    numbers = own_spot_drops(probabilities, images, 0, hot, control, batch_size=2)
    # Hiding the bright patch fills it with the image's mean (1/16): the drop is 15/16.
    assert numbers["mean_drop"] == pytest.approx(15 / 16)
    assert numbers["control_drop"] == pytest.approx(0.0)
    assert numbers["count"] == 3


def test_cluster_threshold_items_are_parsed_or_refused_in_one_line():
    from sightline.cli.audit import cluster_thresholds
    assert cluster_thresholds(["concept_min_silhouette=0.5", "rare_min_share=0.01"]) == {
        "concept_min_silhouette": 0.5, "rare_min_share": 0.01}
    assert cluster_thresholds(None) == {}
    with pytest.raises(ValueError, match="unknown threshold 'bogus'; known: min_silhouette"):
        cluster_thresholds(["bogus=1"])
    with pytest.raises(ValueError, match="must be a number, as in min_size=10"):
        cluster_thresholds(["min_size=abc"])


def cue_images(rng, count, cue, channels=16):
    """Relevance of images seeing the object (channels 0..2) plus `cue` on channel 3."""
    relevance = np.zeros((count, channels))
    relevance[:, :3] = 1.0 + 0.15 * rng.normal(size=(count, 3))
    relevance[:, 3:] = 0.05 * rng.normal(size=(count, channels - 3))
    relevance[:, 3] += cue
    return relevance


def test_a_bridge_to_the_rest_is_left_out_of_the_group_that_stands_apart():
    """A tight group (a strong cue on channel 3) and images whose cue runs from almost
    none to most of the group's: the first cut puts the bridge with the group, the next
    cuts it off. The bridge touches the rest of the class, so the group is the side
    that stands apart on its own, not the side the bridge came with."""
    rng = np.random.default_rng(0)
    relevance = np.concatenate([cue_images(rng, 300, 0.0),
                                cue_images(rng, 150, 4.0 + 0.2 * rng.normal(size=150)),
                                cue_images(rng, 60, np.linspace(0.1, 2.5, 60))])
    truth = np.r_[np.zeros(300, bool), np.ones(150, bool), np.zeros(60, bool)]
    groups, silhouettes, separations, _ = find_groups(embed_relevance(relevance)[0], **RULE)
    assert len(groups) == 1
    np.testing.assert_array_equal(groups[0], truth)
    assert silhouettes[0] >= 0.7 and separations[0] >= 2.0


def separation_reference(features, members, neighbours):
    """The separation of clusters.py's docstring, by loops in float64: the 10th
    percentile over members of the distance to the nearest non-member, over the median
    of each member's distance to its `neighbours`-th nearest fellow member."""
    features = np.asarray(features, np.float64)
    inside, outside = [], []
    for i in np.flatnonzero(members):
        fellows, others = [], []
        for j in range(len(features)):
            if j != i:
                distance = np.sqrt(sum((features[i] - features[j]) ** 2))
                (fellows if members[j] else others).append(distance)
        inside.append(sorted(fellows)[neighbours - 1])
        outside.append(min(others))
    return np.quantile(outside, 0.1) / np.median(inside)


def test_a_rare_group_is_judged_by_its_neighbours_within_half_of_it():
    """Fifteen images with a cue, spread along one channel: their 10th neighbour is two
    thirds of the way across the group, their 7th (half of it) is the group's own
    spread, which puts it over a separation bar that the 10th keeps it under."""
    rng = np.random.default_rng(0)
    relevance = cue_images(rng, 500, 0.0)
    relevance[:15, 3] = 3.0
    relevance[:15, 4] = np.linspace(-1.0, 1.0, 15)
    truth = np.arange(500) < 15
    features = embed_relevance(relevance)[0]
    strict = {**RULE, "min_separation": 3.5}
    groups, _, separations, _ = find_groups(features, **strict)
    assert len(groups) == 1
    np.testing.assert_array_equal(groups[0], truth)
    assert separations[0] == pytest.approx(separation_reference(features, truth, 7), rel=1e-9)
    assert separation_reference(features, truth, 10) < 3.5 <= separations[0]
