"""The mask-free audit's "what" view: groups of a class that the model explains with other
channels than the rest of the class, wherever the evidence sits.

The step stores, per sample, each target-layer channel's relevance to the explained
class, r[k] = sum_ij A[i,j,k] * dy_c/dA[i,j,k] (sightline.compute.step). A mark that moves,
a tinted background or a texture lights the same channels wherever it is, so the images
that carry it point the same way in channel space even when their heatmaps share no
place. Pure NumPy / scikit-learn / SciPy, no TensorFlow, no file IO.

- Embedding: r / |r| (the direction of the evidence; its size follows the confidence).
  The evidence of an image is sum_k r[k], the first-order part of the explained logit
  that the image contributes (for a GAP + dense head exactly the logit minus its bias).
- No evidence: an image whose evidence is below NO_EVIDENCE of the median positive
  evidence of the whole sample (every class: a class whose every image carries a strong
  shortcut must not make its other images look empty) gets its class from the model's
  biases, not from anything in the image (a "default" class, predicted when nothing is
  seen). When the run explained the predictions, such images have no direction to
  cluster: they are counted apart, never flagged. When it explained the labels they
  stay: the images of a class the model does not see it in are then the rest that the
  images it sees it in (say, only under a cloudy sky) stand apart from.
- Groups: divisive spectral bisection of the class's sample. A node of at least
  2 x min_size maps is cut in two on the Fiedler vector of its symmetric
  NEIGHBOURS-nearest-neighbour graph (the normalised Laplacian's second eigenvector,
  k-means on the first two rows scaled to unit length), down to MAX_DEPTH levels, as long
  as both sides hold min_size maps. A group is then the highest node of this tree that,
  against the rest of its whole class, is a separate group and at most max_share of the
  class: a group that the tree cut into pieces (the pieces touch each other, not the
  rest) is found whole, a group inside a side that also holds a few other maps is found
  one level down, and a rare group that k-means with a global K would merge away is cut
  off where it stands apart. A separate node whose cut gives one side that is a separate
  group on its own and one that is not even apart from the class outside the node is
  not the group: that side is a bridge to the rest (a mark seen weakly, objects with a
  trace of the cue), and the side that stands apart is the group.
- Separateness (clusters._separateness) is judged against the whole rest of the class,
  the group's spread at k = min(NEIGHBOURS, half the group) neighbours: a rare group of
  15 is not measured by its 10th neighbour, two thirds of the way across it.
- The flag rule (describe_concepts; thresholds in clusters.ClusterRule): separate
  (silhouette >= concept_min_silhouette, separation >= concept_min_separation), large
  enough (min_size maps and min_share of the class; "rare" between rare_min_share and
  min_share), at most max_share, and with evidence of its own: its mean evidence at
  least min_evidence_ratio of the rest's, so a group the
  model calls by default is not taken for one it sees something in.
- Distinguishing channels: those whose mean relevance in the group exceeds the rest's,
  largest first, up to half of the positive difference (at most MAX_CHANNELS). Raw
  relevance, not unit: in unit vectors a group whose evidence sits in a few strong
  channels seems to gain on every channel where the rest's is negative.
"""

import numpy as np

from sightline.audit.clusters import (DEFAULT_RULE, NEIGHBOURS, ClassClusters, ClusterModel,
                                      _separateness, one_thread)
from sightline.errors import UsageError

NO_EVIDENCE = 0.1
MAX_DEPTH = 4
MAX_CHANNELS = 8
# The channels --verify replaces: those covering this share of the group's extra relevance
# (verify.py's feature test), at most a quarter of all channels.
ABLATION_COVER = 0.8


def embed_relevance(relevance):
    """relevance [n, K] -> (features float32 [n, K] = r / |r|, empty bool [n]: no relevance)."""
    relevance = np.asarray(relevance, np.float64)
    if relevance.ndim != 2:
        raise UsageError(f"relevance must be [n, channels]; received shape {relevance.shape}")
    norm = np.linalg.norm(relevance, axis=1)
    empty = ~(norm > 0)
    return (relevance / np.where(empty, 1.0, norm)[:, None]).astype(np.float32), empty


def evidence_of(relevance):
    """relevance [n, K] -> float64 [n]: sum_k r[k], the image's first-order evidence."""
    return np.asarray(relevance, np.float64).sum(axis=1)


def no_evidence_limit(evidence):
    """The evidence below which an image has none (module docstring), from the evidence
    of every class's sample."""
    evidence = np.asarray(evidence, np.float64)
    positive = evidence[evidence > 0]
    return NO_EVIDENCE * float(np.median(positive)) if positive.size else 0.0


def _fiedler_split(features, seed):
    """bool [m]: one side of the spectral bisection of the kNN graph of `features`, and
    the first two non-trivial eigenvectors (for the layout)."""
    import scipy.sparse
    import scipy.sparse.linalg
    from sklearn.cluster import KMeans
    from sklearn.neighbors import kneighbors_graph
    size = len(features)
    graph = kneighbors_graph(features, min(NEIGHBOURS, size - 1), mode="connectivity",
                             include_self=False)
    affinity = 0.5 * (graph + graph.T)  # symmetric, sparse [m, m]
    scale = scipy.sparse.diags(1.0 / np.sqrt(np.asarray(affinity.sum(axis=1)).ravel()))
    normalised = (scale @ affinity @ scale).tocsr()
    # The largest eigenvalues of D^-1/2 A D^-1/2 are 1 - the smallest of the Laplacian.
    # Lanczos on the sparse graph, from a fixed start vector: the same cut on every run.
    start = np.full(size, 1.0 / np.sqrt(size))
    values, vectors = scipy.sparse.linalg.eigsh(normalised, k=3, which="LA", v0=start)
    vectors = vectors[:, np.argsort(-values)]  # [m, 3], the trivial one first
    rows = vectors[:, :2] / np.maximum(np.linalg.norm(vectors[:, :2], axis=1, keepdims=True),
                                       1e-12)
    side = KMeans(2, n_init=10, random_state=seed).fit_predict(rows) == 1
    return side, vectors[:, 1:3]


def _two_way(distance, members):
    """(silhouette, separation) of `members` (bool [m]) against the rest, on a
    precomputed distance matrix [m, m] (clusters._separateness's definitions). The
    group's spread is each member's k-th nearest fellow member at k = min(NEIGHBOURS,
    half the group): the 10th neighbour of a rare group of 15 is two thirds of the way
    across it, which makes a tight group look as wide as itself."""
    assignment = members.astype(int)
    neighbours = max(1, min(NEIGHBOURS, int(members.sum()) // 2))
    silhouette, separation = _separateness(None, assignment, 2, distance=distance,
                                           neighbours=neighbours)
    return silhouette[1], separation[1]


def find_groups(features, *, min_size, max_share, min_silhouette, min_separation, seed=0,
                evidence=None):
    """features [m, K] (unit relevance of one class's sample) -> (groups: list of bool
    [m] masks, numbered by size, largest first; their silhouettes; separations; layout
    float64 [m, 2]). See the module docstring. evidence [m]: when the groups cover the
    whole class, the one with the least mean evidence is the rest (else the largest)."""
    from sklearn.metrics import pairwise_distances
    features = np.asarray(features, np.float64)
    size = len(features)
    layout = np.zeros((size, 2))
    if size < 2 * min_size or size <= NEIGHBOURS:
        return [], [], [], layout
    distance = pairwise_distances(features)  # [m, m]
    tree = []  # (depth, parent number or -1, member rows)

    def cut(rows, depth, parent):
        number = len(tree)
        tree.append((depth, parent, rows))
        if depth >= MAX_DEPTH or len(rows) < 2 * min_size or len(rows) <= NEIGHBOURS:
            return
        side, vectors = _fiedler_split(features[rows], seed)
        if depth == 0:
            layout[:] = vectors * np.sqrt(size)
        sides = (rows[side], rows[~side])
        if min(len(part) for part in sides) < min_size:
            return
        # Every cut is explored, kept or not: a group may sit inside a side that is not a
        # group itself (a few other maps came along with it); only the final check,
        # against the whole rest of the class, decides.
        for part in sides:
            cut(part, depth + 1, number)

    cut(np.arange(size), 0, -1)
    children = {}
    for number, (_, parent, _) in enumerate(tree):
        children.setdefault(parent, []).append(number)
    judged = {}

    def mask(number):
        members = np.zeros(size, bool)
        members[tree[number][2]] = True
        return members

    def judge(number):
        """(separate from the rest of the class, silhouette, separation) of a node."""
        if number not in judged:
            silhouette, separation = _two_way(distance, mask(number))
            judged[number] = (silhouette >= min_silhouette and separation >= min_separation,
                              silhouette, separation)
        return judged[number]

    def bridged(number):
        """True when the node's cut has one side that is a separate group on its own and
        one that is not apart from the class outside the node: that side touches the rest
        (a bridge), so the group is the side that stands apart, not the node. A side
        apart from the outside that only touches its sibling is a piece of the group,
        which is then found whole."""
        sides = children.get(number, [])
        if len(sides) != 2:
            return False
        separate = [judge(side)[0] for side in sides]
        if sum(separate) != 1:
            return False
        other = sides[separate.index(False)]
        near = mask(other) | ~mask(number)  # the other side and the class outside the node
        silhouette, separation = _two_way(distance[np.ix_(near, near)], mask(other)[near])
        return not (silhouette >= min_silhouette and separation >= min_separation)

    chosen, taken = [], set()
    for number, (depth, parent, rows) in enumerate(tree):
        if depth == 0 or parent in taken or not min_size <= len(rows) <= max_share * size:
            if parent in taken:
                taken.add(number)  # inside a chosen group: never a group of its own
            continue
        separate, silhouette, separation = judge(number)
        if separate and not bridged(number):
            chosen.append((mask(number), silhouette, separation))
            taken.add(number)
    chosen.sort(key=lambda item: (-item[0].sum(), int(np.argmax(item[0]))))
    if chosen and sum(int(c[0].sum()) for c in chosen) == size:
        # The groups cover the class: one of them is what the others are measured by, the
        # one with the least evidence (the ordinary images; the others have something
        # more), else the largest.
        rest = 0
        if evidence is not None:
            rest = int(np.argmin([np.asarray(evidence)[c[0]].mean() for c in chosen]))
        chosen = chosen[:rest] + chosen[rest + 1:]
    # Eigenvectors have no sign: the largest entry of each is made positive.
    signs = np.sign(layout[np.abs(layout).argmax(axis=0), np.arange(2)])
    layout = layout * np.where(signs == 0, 1.0, signs)
    return [c[0] for c in chosen], [c[1] for c in chosen], [c[2] for c in chosen], layout


def fit_concepts(label, indices, features, evidence, limit, *, min_size, max_share,
                 min_silhouette, min_separation, seed=0, set_apart=True):
    """One class's "what" view: a ClassClusters whose local cluster 0 is the rest of the
    class, 1..G the groups of find_groups and, when any, G+1 the images whose evidence is
    below `limit` (no_evidence_limit); `groups`, `no_evidence` (local id or None) and
    `no_evidence_limit` are added. set_apart=False (the run explained the labels, not
    the predictions) keeps them in the clustering: there "the model does not see this
    class in these images" is half of the story, the images it does see it in the other.
    """
    features = np.asarray(features, np.float64)
    evidence = np.asarray(evidence, np.float64)
    seen = evidence >= limit if set_apart else np.ones(len(evidence), bool)
    rows = np.flatnonzero(seen)
    groups, silhouettes, separations, layout_seen = find_groups(
        features[rows], min_size=min_size, max_share=max_share,
        min_silhouette=min_silhouette, min_separation=min_separation, seed=seed,
        evidence=evidence[rows])
    assignment = np.zeros(len(features), int)
    for number, members in enumerate(groups, start=1):
        assignment[rows[members]] = number
    cluster_count = len(groups) + 1
    no_evidence = None
    if not seen.all():
        no_evidence = cluster_count
        assignment[~seen] = no_evidence
        cluster_count += 1
    layout = np.zeros((len(features), 2))
    layout[rows] = layout_seen
    # Each group's numbers against the rest of its class, as find_groups judged it.
    tail = [float("nan")] if no_evidence else []
    fit = ClassClusters(label, indices, features, assignment, layout, np.zeros(0), cluster_count,
                        separateness=([float("nan"), *silhouettes] + tail,
                                      [float("nan"), *separations] + tail))
    fit.groups, fit.no_evidence, fit.no_evidence_limit = len(groups), no_evidence, limit
    return fit


class ConceptModel(ClusterModel):
    """The "what" view's fitted classes; assign() takes relevance [n, K], not maps: a map
    below its class's no-evidence limit goes to the class's no-evidence cluster, any
    other to the vote of its nearest sample maps (ClassClusters.assign)."""

    def __init__(self, fits, channels):
        super().__init__(fits, 0, embed=embed_relevance)
        self.channels = channels

    def assign(self, classes, relevance):
        cluster, layout, features = super().assign(classes, relevance)
        evidence = evidence_of(relevance)
        classes = np.asarray(classes, np.int64).reshape(-1)
        for label, fit in self.fits.items():
            if fit.no_evidence is None:
                continue
            rows = (classes == label) & (evidence < fit.no_evidence_limit)
            cluster[rows] = self.offsets[label] + fit.no_evidence
        return cluster, layout, features


def fit_concept_model(sample, *, min_size, max_share, min_silhouette, min_separation, seed=0,
                      set_apart=True):
    """ClassSample of unit relevance (scalars: evidence) -> ConceptModel; set_apart: see
    fit_concepts."""
    with one_thread():
        return _fit_concept_model(sample, min_size, max_share, min_silhouette, min_separation,
                                  seed, set_apart)


def _fit_concept_model(sample, min_size, max_share, min_silhouette, min_separation, seed,
                       set_apart):
    fits, channels = {}, 0
    labels = sample.classes()
    limit = no_evidence_limit(np.concatenate([sample.scalars(label) for label in labels])
                              if labels else [])
    for label in labels:
        indices, features = sample.members(label)
        channels = features.shape[1]
        fits[label] = fit_concepts(label, indices, features, sample.scalars(label), limit,
                                   min_size=min_size, max_share=max_share,
                                   min_silhouette=min_silhouette, min_separation=min_separation,
                                   seed=seed, set_apart=set_apart)
    return ConceptModel(fits, channels)


def distinguishing_channels(group_mean, rest_mean, limit=MAX_CHANNELS, cover=0.5):
    """Channels the group relies on more than the rest: indices (largest difference
    first) covering `cover` of the positive difference of the mean relevances, at most
    `limit`; and their differences."""
    difference = np.asarray(group_mean, np.float64) - np.asarray(rest_mean, np.float64)
    order = np.argsort(-difference, kind="stable")
    positive = difference[order][difference[order] > 0]
    if positive.size == 0:
        return [], []
    count = int(np.searchsorted(np.cumsum(positive), cover * positive.sum() * (1 - 1e-12)) + 1)
    chosen = order[:min(count, limit, positive.size)]
    return [int(c) for c in chosen], [float(difference[c]) for c in chosen]


def describe_concepts(statistics, class_names=None, *, relevance_sums=None, evidence=None,
                      id_offset=0, concept_min_silhouette=DEFAULT_RULE.concept_min_silhouette,
                      concept_min_separation=DEFAULT_RULE.concept_min_separation,
                      min_share=DEFAULT_RULE.min_share,
                      rare_min_share=DEFAULT_RULE.rare_min_share, min_size=DEFAULT_RULE.min_size,
                      max_share=DEFAULT_RULE.max_share,
                      min_evidence_ratio=DEFAULT_RULE.min_evidence_ratio, **other_thresholds):
    """The "what" view's cluster dicts, in the shape of clusters.describe_clusters's (id
    offset by `id_offset` so that the two views' ids never meet): view "what", kind
    "concept", "rare" or None, plus channels (the distinguishing channels, most
    distinguishing first), channel_lift (their mean relevance minus the rest's),
    no_evidence (true for a class's images with no evidence) and evidence_ratio. The
    rest of a class (local cluster 0) and its no-evidence images are never flagged.

    relevance_sums [clusters, K]: the sum over each cluster's members of their
    relevance; evidence [clusters]: the members' mean evidence."""
    from sightline.audit.clusters import _class_name, hot_region, place_name
    model = statistics.model
    relevance_sums = np.asarray(relevance_sums, np.float64)
    evidence = np.asarray(evidence, np.float64)
    sizes = statistics.size
    result = []
    for label, fit in sorted(model.fits.items()):
        name = _class_name(class_names, label)
        offset = model.offsets[label]
        ids = list(range(offset, offset + fit.cluster_count))
        seen = [i for i in ids if i - offset != fit.no_evidence]
        class_size = statistics.class_size.get(label, 0)
        for cluster in ids:
            local = cluster - offset
            size = int(sizes[cluster])
            share = size / class_size if class_size else 0.0
            rest = [i for i in seen if i != cluster]
            rest_size = sum(int(sizes[i]) for i in rest)
            rest_relevance = sum(relevance_sums[i] for i in rest) / rest_size if rest_size else None
            rest_evidence = (sum(evidence[i] * sizes[i] for i in rest) / rest_size
                             if rest_size else float("nan"))
            ratio = (evidence[cluster] / rest_evidence if rest_size and rest_evidence > 0
                     else float("nan"))
            channels, lifts, ablation = [], [], []
            if size and rest_relevance is not None:
                channels, lifts = distinguishing_channels(relevance_sums[cluster] / size,
                                                          rest_relevance)
                ablation, _ = distinguishing_channels(
                    relevance_sums[cluster] / size, rest_relevance,
                    limit=max(1, relevance_sums.shape[1] // 4), cover=ABLATION_COVER)
            silhouette, separation = fit.silhouette[local], fit.separation[local]
            mean_map = statistics.map_sum[cluster] / size if size else None
            region, centre = hot_region(mean_map) if size else (None, None)
            is_group = 0 < local <= fit.groups
            checks = [
                (is_group, "the rest of the class" if local == 0 else
                 "images with no evidence (the class's biases decide)"),
                (silhouette >= concept_min_silhouette,
                 f"not a separate group in channel space (silhouette {silhouette:.2f} < "
                 f"{concept_min_silhouette})"),
                (separation >= concept_min_separation,
                 f"not apart in channel space (separation {separation:.2f} < "
                 f"{concept_min_separation})"),
                (share >= rare_min_share and size >= min_size,
                 f"too small ({size} maps, {share:.0%} of the class; needs {min_size} and "
                 f"{rare_min_share:.0%})"),
                (share <= max_share, f"most of the class ({share:.0%} > {max_share:.0%})"),
                (not ratio < min_evidence_ratio,
                 f"no evidence of its own (its evidence is {ratio:.2f} of the rest's < "
                 f"{min_evidence_ratio}: the model calls these by default)"),
            ]
            failed = [reason for passed, reason in checks if not passed]
            kind = None if failed else ("concept" if share >= min_share else "rare")
            if kind:
                where = f"looking mostly at the {place_name(centre)}" if centre else "anywhere"
                reasons = [f"{share:.0%} of class '{name}'{' (a rare group)' if kind == 'rare' else ''}: "
                           f"the model explains them with other channels than the rest of the "
                           f"class (channels {', '.join(map(str, channels[:5]))}), {where}"]
            else:
                reasons = failed[:1]
            examples = statistics.typical[cluster]
            labelled = int(statistics.labelled[cluster])
            result.append({
                "id": cluster + id_offset, "view": "what", "kind": kind, "class": int(label),
                "class_name": name, "size": size, "share": share, "flagged": kind is not None,
                "reasons": reasons, "hot_region": region,
                "accuracy": statistics.correct[cluster] / labelled if labelled else None,
                "mean_score": (statistics.score[cluster] / size if size and statistics.scored
                               else None),
                "verification": None,
                "examples": [{"index": index, "key": key} for _, index, key in examples],
                "silhouette": silhouette, "separation": separation,
                "channels": channels, "channel_lift": lifts, "ablation_channels": ablation,
                "no_evidence": local == fit.no_evidence, "evidence_ratio": ratio,
                "hot_centre": centre, "mean_heatmap": mean_map,
            })
    return result
