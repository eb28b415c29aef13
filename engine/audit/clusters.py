"""Mask-free shortcut discovery: cluster the heatmaps of each explained class and flag the
groups whose evidence sits somewhere else than the rest of their class (SpRAy-style).

Pure NumPy / scikit-learn / SciPy: no TensorFlow and no file IO; the audit streams the maps
in and writes what comes out. Three steps, each streaming, so memory stays flat in N:

1. ClassSample.add(indices, classes, maps) over the whole run keeps, per explained class,
   the SAMPLE_SIZE maps with the lowest priority, a hash of (seed, sample index): the same
   sample whatever the order or chunking of the input, and a different one per seed.
2. fit_clusters(sample) clusters each class's sample:
   - embedding: each map is area-averaged to GRID x GRID, clipped at 0, scaled to unit mass
     p, and embedded as sqrt(p) (Hellinger): distances are bounded (at most sqrt 2, for maps
     with no mass in common) so one very peaked map cannot dominate the graph;
   - graph: the symmetric k-nearest-neighbour connectivity graph, k = NEIGHBOURS;
   - number of clusters K: the eigengap of the normalised graph Laplacian
     L = I - D^-1/2 A D^-1/2, K = argmax_k (lambda_k - lambda_{k-1}) for k = 1..MAX_CLUSTERS
     (eigenvalues ascending, lambda_0 = 0; K separate groups give K near-zero eigenvalues
     and then a jump); `cluster_count=` overrides it;
   - clusters: k-means on the rows of the first K eigenvectors, each row scaled to unit
     length (Ng, Jordan and Weiss 2002), seeded;
   - joining: k-means may cut one group apart into pieces that look at the same place
     (a K larger than needed, two variants of one tag). Two clusters are joined when
     their mean maps look at the same place (hot centres less than min_distance apart,
     more than max_overlap of the smaller hot region inside the other) and, joined, they
     look somewhere else than the rest of the class (the flag's last two checks pass):
     closest pair first, repeated on the recomputed mean maps (_join_same_place). Slices
     of a continuum stay apart (the slices next to them look nearby), and so does a class
     cut in two. Done on the sample before the numbers below, so ids, sizes, shares,
     silhouette, separation and the flag all refer to the joined group;
   - clusters are numbered by size, largest first (ties: the one holding the lowest
     sample index first);
   - layout: the first two non-trivial eigenvectors, for the report's scatter plot.
   Maps with no mass are not clustered (cluster -1).
3. ClusterModel.assign(classes, maps) gives any map its cluster: the cluster of an
   identical sample map, else the vote of its NEIGHBOURS nearest sample maps (ties go to
   the nearer neighbours), and its layout position as the mean of theirs. Each map's
   result depends on that map alone, so chunking and order cannot change it.
   ClusterStatistics.add(...) accumulates per cluster over the assigned chunks and
   finish() returns the cluster dicts, flagged as follows.

A cluster is FLAGGED when all three hold (thresholds are arguments, defaults in ClusterRule):
- it is a separate group, not a slice of a continuum: the mean silhouette of its sample
  members is at least min_silhouette and its separation is at least min_separation.
  Separation = the 10th percentile over its members of the distance to the nearest map
  of another cluster, over the median distance of its members to their k-th nearest
  fellow member: a slice of a continuum touches its neighbours (about 1), a separate group
  has a gap around it (well above 1). The class's eigengap (lambda_K - lambda_{K-1}) is
  reported but is not a condition: when the rest of a class is a continuum (objects
  anywhere) its spectrum rises smoothly and shows no clear gap even though a group is cut
  off cleanly (a component of its own), which the planted-corner tests show;
- it matters: at least min_share of its class and min_size maps, and at most max_share
  (evidence that most of a class uses is the class's own, for the audit with masks);
- its evidence sits elsewhere: the hot centre of its mean map is at least min_distance
  (fractions of the image side) from the nearest hot cell of the mean map of the rest of
  its class (the nearest place the rest looks at: a rest that looks at two places has a
  centre between them where it never looks), and at most max_overlap of the smaller of
  the two hot regions lies inside the other.

Hot region: the bounding box [y0, y1, x0, x1] (fractions of the side, half-open) of the
cells of the mean map at or above HOT_FRACTION of its maximum; the hot centre is the
mass-weighted centre of those cells.
"""

import dataclasses
from typing import ClassVar

import numpy as np

from sightline.errors import UsageError

# scikit-learn and SciPy load when a fit runs, not when the module does: the command line
# imports this room to build its help, and importing scikit-learn costs most of a second,
# which a mistyped option should not wait for.

GRID = 16
NEIGHBOURS = 10
MAX_CLUSTERS = 8
SAMPLE_SIZE = 2000
MIN_FIT_SIZE = 20  # fewer maps than this in a class: one cluster, no graph
HOT_FRACTION = 0.5
EXAMPLES = 8
_EXACT = 1e-9  # a map this close to a sample map is that map


def one_thread():
    """A context in which BLAS and OpenMP run on one thread each, for the clustering's
    work: its matrices are small (a 2,000-map sample, a chunk of maps), so threads cost
    more in start-up and barrier waits than they save, and on a node shared with other
    work they wait on each other (k-means of one class's sample: 0.6 s with two threads
    on two loaded cores, 0.014 s with one; the dense eigen-solve 1.9 s and 0.56 s).
    SciPy's LAPACK and scikit-learn's OpenMP load first: a limit only holds for the
    libraries already loaded."""
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)
    import sklearn.cluster  # noqa: F401  (loads scikit-learn's OpenMP)
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1)



@dataclasses.dataclass(frozen=True)
class ClusterRule:
    """The flag rules' thresholds, in one place: the documented defaults of both views.
    The "where" view (describe_clusters: place and diffuse, module docstring) reads the
    shared and the where fields; the "what" view (concepts.describe_concepts: concept and
    rare) the concept_ ones and the shared ones. Overrides are keywords of the same names
    (--cluster-threshold NAME=VALUE); audit.json's rule records every field in force."""

    # where view: a separate group, not a slice of a continuum
    min_silhouette: float = 0.2  # mean silhouette of its sample members, in [-1, 1]
    min_separation: float = 1.5  # gap around it over its own spread (about 1: a slice)
    # both views: a group that matters
    min_share: float = 0.05  # of its class
    min_size: int = 10  # maps
    max_share: float = 0.5  # of its class: most of a class is the class's own evidence
    # where view: its evidence sits elsewhere (fractions of the image side)
    min_distance: float = 0.25  # from its hot centre to the rest's nearest hot cell
    max_overlap: float = 0.3  # of the smaller hot region inside the other
    diffuse_min_coverage: float = 0.5  # share of the image hot for a "diffuse" group
    # both views: evidence of its own, against the rest of its class's mean
    min_evidence_ratio: float = 0.5
    # what view: separate in channel space, and the "rare" floor below min_share
    concept_min_silhouette: float = 0.7
    concept_min_separation: float = 2.0
    rare_min_share: float = 0.02

    # Shares of a class or of the image side, within [0, 1].
    FRACTIONS: ClassVar[tuple] = ("min_share", "max_share", "min_distance", "max_overlap",
                                  "diffuse_min_coverage", "rare_min_share")
    # Silhouettes, within [-1, 1]; every other threshold is a size, share or ratio >= 0.
    SIGNED: ClassVar[tuple] = ("min_silhouette", "concept_min_silhouette")

    def as_dict(self):
        return dataclasses.asdict(self)


DEFAULT_RULE = ClusterRule()


# ----------------------------------------------------------------------------- embedding


def area_matrix(size_out, size_in):
    """[size_out, size_in] weights of 1-D area averaging: output cell i averages input
    cells over [i, i+1) * size_in / size_out, partial cells by their overlap (rows sum to 1;
    up-sampling repeats cells)."""
    step = size_in / size_out
    out_low = np.arange(size_out)[:, None] * step
    in_low = np.arange(size_in)[None, :]
    overlap = np.minimum(out_low + step, in_low + 1) - np.maximum(out_low, in_low)
    return np.clip(overlap, 0.0, None) / step


def embed_maps(maps, grid=GRID):
    """maps [n,h,w] -> (features float32 [n, grid*grid], empty bool [n]).

    Features are sqrt of the unit-mass, area-averaged, non-negative map; a map with no
    positive mass is `empty` and its features are zero. float32 halves what the per-class
    samples hold; the distances are then computed in float64 from these exact values."""
    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3:
        raise UsageError(f"maps must be [n, height, width]; received shape {maps.shape}: "
                         "pass one 2-D heatmap per sample")
    rows = area_matrix(grid, maps.shape[1])
    cols = area_matrix(grid, maps.shape[2])
    # A matmul per map (stacked): each map's result is the same whatever else is in the
    # chunk, which assignment's independence of chunking relies on.
    small = rows @ np.maximum(maps, 0.0) @ cols.T  # [n, grid, grid]
    mass = small.reshape(len(maps), -1)  # [n, grid*grid]
    total = mass.sum(axis=1)
    empty = ~(total > 0)
    unit = mass / np.where(empty, 1.0, total)[:, None]
    return np.sqrt(unit).astype(np.float32), empty


# ----------------------------------------------------------------------------- sampling


def sample_priority(indices, seed):
    """uint64 [n]: a hash of (seed, sample index) (splitmix64 finaliser). The lowest
    priorities form the sample: the same maps whatever the input order."""
    with np.errstate(over="ignore"):
        value = np.asarray(indices, np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        value = (value ^ (value >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        value = (value ^ (value >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return value ^ (value >> np.uint64(31))


class ClassSample:
    """Per explained class, the `size` non-empty maps of lowest sample_priority, kept as
    embedded features (memory: classes x size x GRID^2 floats, flat in N).

    embed: values [n,...] -> (features float32 [n, D], empty bool [n]); by default
    embed_maps at `grid` (the "where" view). With `scalars` [n] given to add(), each
    kept row keeps its scalar too (scalars(label))."""

    def __init__(self, size=SAMPLE_SIZE, seed=0, grid=GRID, embed=None):
        if int(size) < 1:
            raise UsageError(f"sample size must be a positive number of maps per class; "
                             f"received {size!r}")
        self.size, self.seed, self.grid = int(size), int(seed), int(grid)
        self.embed = embed or (lambda maps: embed_maps(maps, self.grid))
        self._kept = {}  # class -> (priority [m], index [m], features [m, D], scalar [m])

    def add(self, indices, classes, maps, scalars=None):
        """Offer a chunk: indices int [n] (stable sample positions), classes int [n] (the
        explained class), maps [n,h,w] (or what `embed` takes), scalars float [n]."""
        indices, classes = _check_rows(indices, classes, maps)
        scalars = (np.zeros(len(indices)) if scalars is None
                   else np.asarray(scalars, np.float64).reshape(-1))
        priority = sample_priority(indices, self.seed)
        # Once a class's sample is full, only a map of no higher priority than its last
        # can enter: the others are not embedded (after the first few thousand maps of a
        # class, almost all of them).
        offered = np.flatnonzero(priority <= self._limits(classes))
        if not offered.size:
            return
        indices, classes, scalars, priority = (indices[offered], classes[offered],
                                               scalars[offered], priority[offered])
        features, empty = self.embed(np.asarray(maps)[offered])
        for label in np.unique(classes[~empty]):
            rows = (classes == label) & ~empty
            kept = self._kept.get(int(label))
            merged = (priority[rows], indices[rows], features[rows], scalars[rows])
            if kept is not None:
                merged = tuple(np.concatenate(pair) for pair in zip(kept, merged))
            # Lowest priority first; the index breaks ties, so the choice never depends
            # on which chunk a map came in.
            order = np.lexsort((merged[1], merged[0]))[:self.size]
            self._kept[int(label)] = tuple(part[order] for part in merged)

    def _limits(self, classes):
        """uint64 [n]: the highest priority a map of each row's class can enter with."""
        limits = np.full(len(classes), np.iinfo(np.uint64).max, np.uint64)
        full = sorted(label for label, kept in self._kept.items() if len(kept[0]) >= self.size)
        if full:
            labels = np.array(full, np.int64)
            # kept is in (priority, index) order: its last row has the highest priority.
            highest = np.array([self._kept[label][0][-1] for label in full], np.uint64)
            at = np.minimum(np.searchsorted(labels, classes), len(labels) - 1)
            known = labels[at] == classes
            limits[known] = highest[at[known]]
        return limits

    def classes(self):
        return sorted(self._kept)

    def members(self, label):
        """(indices int64 [m], features [m, D]) of one class, in index order."""
        _, indices, features, _ = self._kept[label]
        order = np.argsort(indices, kind="stable")
        return indices[order], features[order]

    def scalars(self, label):
        """float64 [m]: the scalars of members(label), in the same order."""
        _, indices, _, scalars = self._kept[label]
        return scalars[np.argsort(indices, kind="stable")]


def _check_rows(indices, classes, maps):
    indices = np.asarray(indices, np.int64).reshape(-1)
    classes = np.asarray(classes, np.int64).reshape(-1)
    count = np.shape(maps)[0]
    if len(indices) != count or len(classes) != count:
        raise UsageError(f"indices, classes and maps must have one row per sample; received "
                         f"{len(indices)} indices, {len(classes)} classes, {count} maps")
    return indices, classes


# ----------------------------------------------------------------------------- fitting


class ClassClusters:
    """The fitted clustering of one explained class (see fit_clusters)."""

    def __init__(self, label, indices, features, assignment, layout, eigenvalues, cluster_count,
                 *, separateness=None):
        """separateness: (silhouettes, separations) per cluster when the caller has judged
        the clusters already (the "what" view's find_groups): the [m, m] distances are
        then not computed a second time."""
        self.label = label
        self.indices = indices  # int64 [m] sample indices
        self.features = features = np.asarray(features, np.float64)  # [m, D], float32 values
        self.assignment = assignment  # int [m] local cluster 0..K-1
        self.layout = layout  # float64 [m, 2]
        self.eigenvalues = eigenvalues  # ascending, of the normalised Laplacian
        self.cluster_count = cluster_count  # K
        self.centroids = np.stack([features[assignment == c].mean(axis=0)
                                   if (assignment == c).any() else np.zeros(features.shape[1])
                                   for c in range(cluster_count)])
        self.eigengap = _eigengap(eigenvalues, cluster_count)
        self.silhouette, self.separation = (
            separateness if separateness is not None
            else _separateness(features, assignment, cluster_count))
        self.compactness = [float(np.linalg.norm(features[assignment == c] - self.centroids[c],
                                                 axis=1).mean())
                            if (assignment == c).any() else float("nan")
                            for c in range(cluster_count)]
        self._squares = (features ** 2).sum(axis=1)
        self._largest_square = float(self._squares.max(initial=0.0))
        self._rough = None  # (projection or None, sample float32, squares float32): nearest
        self._exact = None  # (first column, count, representative per column, sample): _squared

    def nearest(self, features):
        """features [n, D] -> (distance [n, k], sample row [n, k]) of the k = NEIGHBOURS
        nearest sample maps, nearest first, ties by sample index.

        Candidates come from one matrix product (fast, but its rounding depends on the
        chunk's shape); their distances are then recomputed element-wise and sorted, so the
        answer for a map never depends on which chunk it came in. The product runs in
        float32 and in the fewest dimensions that keep the ranking (_rough_space), and the
        2k lowest of each row are picked by block minima (_smallest): with the exact sums
        (_squared), the assignment's largest costs. A row whose candidates float32 rounding could have cut
        a nearer map from (the margin to the first map left out below a bound on that
        rounding) takes its candidates from the float64 product instead, so the answer is
        the float64 one."""
        features = np.asarray(features, np.float64)
        neighbours = min(NEIGHBOURS, len(self.indices))
        candidates = min(2 * neighbours, len(self.indices))
        projection, sample, sample_squares = self._rough or self._rough_space()
        squares = (features ** 2).sum(axis=1)  # [n]
        reduced = features if projection is None else features @ projection  # [n, G]
        # |s|^2 - 2 x.s [n, m]; the factor -2 is exact in the product.
        rough = (-2.0 * reduced).astype(np.float32) @ sample.T
        rough += sample_squares
        pool = _smallest(rough, candidates)  # [n, c]
        distance, rows = self._closest(features, pool, neighbours)
        if candidates < len(self.indices):
            # Any map outside the pool has a float32 rough value >= the pool's largest, so
            # its squared distance is at least that - slack + |x|^2 (in the fewer
            # dimensions too: the rest of |x|^2 is the same for every sample map).
            top = _along(rough, pool).max(axis=1).astype(np.float64)
            scale = squares + self._largest_square + 2.0 * np.sqrt(squares * self._largest_square)
            slack = 4.0 * (features.shape[1] + 4) * float(np.finfo(np.float32).eps) * scale
            unsure = ~(top - slack + squares > distance[:, -1] ** 2)
            if unsure.any():
                rough = self._squares[None, :] - 2.0 * features[unsure] @ self.features.T
                pool = np.argpartition(rough, candidates - 1, axis=1)[:, :candidates]
                distance[unsure], rows[unsure] = self._closest(features[unsure], pool, neighbours)
        return distance, rows

    def _rough_space(self):
        """Where nearest ranks its candidates: the sample's features, float32, in as few
        dimensions as keep every distance.

        An embedding that up-samples a small map repeats its cells (a 3x3 map on the
        16x16 grid has 25 distinct columns of 256). Columns equal on every sample map span
        a subspace the sample lies in; a group of m equal columns becomes one, scaled by
        sqrt(m). For any query q, its distance to every sample map is then its distance
        in that space plus |q - Pq|^2, the same for all of them (Pythagoras; P projects on
        the subspace), so the ranking, the pool and its margin are those of the full
        distances, at a tenth of the product's cost for 3x3 maps."""
        dims = self.features.shape[1]
        # [D] group per column; first: each group's first column
        _, first, group = np.unique(self.features.T, axis=0, return_index=True,
                                    return_inverse=True)
        group = group.reshape(-1)
        projection = None
        if group.max(initial=-1) + 1 < dims:
            counts = np.bincount(group)
            projection = np.zeros((dims, len(counts)))  # [D, G]
            projection[np.arange(dims), group] = 1.0 / np.sqrt(counts[group])
            self._exact = (first, counts.astype(np.float64), first[group],
                           np.ascontiguousarray(self.features[:, first]))
        sample = self.features if projection is None else self.features @ projection
        self._rough = (projection, sample.astype(np.float32),
                       (sample ** 2).sum(axis=1).astype(np.float32))
        return self._rough

    def _closest(self, features, pool, neighbours):
        """The `neighbours` nearest of the candidate rows pool [n, c], exactly."""
        exact = np.sqrt(self._squared(features, pool))
        order = np.lexsort((pool, exact), axis=1)[:, :neighbours]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(pool, order, 1)

    def _squared(self, features, pool):
        """Squared distances [n, c] of features [n, D] to the sample rows pool [n, c]: each
        map's own sums, the same whatever else is in its chunk.

        Where the sample's columns come in groups of equal values (_rough_space), a map
        whose columns are equal in the same groups (every map of a small size, up-sampled
        the same way) is at sum_g count_g * (x_g - s_g)^2 from sample map s, the same
        distance summed over one column per group: a tenth of the work for 3x3 maps."""
        space = self._exact
        if space is None:
            return _squared_distances(features, self.features, pool)
        first, counts, representative, sample = space
        same = (features == features[:, representative]).all(axis=1)
        if same.all():
            return _squared_distances(features[:, first], sample, pool, counts)
        squared = np.empty(pool.shape)
        squared[same] = _squared_distances(features[same][:, first], sample, pool[same], counts)
        squared[~same] = _squared_distances(features[~same], self.features, pool[~same])
        return squared

    def assign(self, features, block=512):
        """features [n, D] -> (local cluster int [n], layout float64 [n, 2]), `block` maps
        at a time (the memory of nearest grows with it)."""
        if len(features) > block:
            parts = [self.assign(features[start:start + block], block)
                     for start in range(0, len(features), block)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        distance, nearest = self.nearest(features)
        count, neighbours = nearest.shape
        # One vote per neighbour; a hair more for nearer ones, so ties go to them. Summed
        # in neighbour order per map, as np.add.at would, by one bincount.
        weight = 1.0 + 1e-6 * (neighbours - np.arange(neighbours))
        slots = (np.arange(count)[:, None] * self.cluster_count
                 + self.assignment[nearest]).reshape(-1)
        votes = np.bincount(slots, weights=np.tile(weight, count),
                            minlength=count * self.cluster_count)
        assignment = votes.reshape(count, self.cluster_count).argmax(axis=1)
        layout = self.layout[nearest].mean(axis=1)
        exact = distance[:, 0] <= _EXACT
        assignment[exact] = self.assignment[nearest[exact, 0]]
        layout[exact] = self.layout[nearest[exact, 0]]
        return assignment, layout


def _squared_distances(features, sample, pool, weights=None):
    """[n, c]: sum_d weights_d * (features[i, d] - sample[pool[i, j], d])^2."""
    if features.shape[1] <= 64:  # an [n, c, D] block that stays in the cache
        difference = sample[pool]
        difference -= features[:, None, :]
        difference *= difference
        if weights is not None:
            difference *= weights
        return difference.sum(axis=2)
    # One candidate column at a time: the same sums as over an [n, c, D] block, bit for
    # bit, without writing and reading it (4x faster for D = 256).
    squared = np.empty(pool.shape)
    for column in range(pool.shape[1]):
        difference = features - sample[pool[:, column]]  # [n, D]
        difference *= difference
        if weights is not None:
            difference *= weights
        squared[:, column] = difference.sum(axis=1)
    return squared


def _smallest(values, count):
    """values [n, m] -> columns int [n, count]: the `count` smallest of each row (in no
    order; ties either way), such that every column left out is at least the largest
    chosen, as np.argpartition's, at a fraction of its cost for count << m.

    Blocks of width about sqrt(m / count) keep both selections small (among m / width
    block minima, among count x width values).

    The first width * blocks columns form `blocks` blocks (column j in block j % blocks);
    the rest, fewer than `width`, are always candidates. The `count` blocks of lowest
    minimum hold the `count` smallest values: a value outside them is at least its
    block's minimum, so at least the largest of the chosen blocks' minima, and those
    `count` minima are candidates, so the `count` smallest candidates are no larger. One
    pass over the row for the minima, then two small selections."""
    rows, total = values.shape
    width = max(2, int(np.sqrt(total / count)))
    blocks = total // width
    if blocks < 2 * count:
        return np.argpartition(values, count - 1, axis=1)[:, :count]
    body = blocks * width
    lowest = values[:, :body].reshape(rows, width, blocks).min(axis=1)  # [n, blocks]
    chosen = np.argpartition(lowest, count - 1, axis=1)[:, :count]  # [n, count]
    columns = (chosen[:, :, None] + blocks * np.arange(width)).reshape(rows, -1)
    if body < total:
        columns = np.concatenate([columns, np.broadcast_to(np.arange(body, total),
                                                           (rows, total - body))], axis=1)
    best = np.argpartition(_along(values, columns), count - 1, axis=1)
    return _along(columns, best[:, :count])


def _along(values, columns):
    """values[i, columns[i, j]] [n, c] for a C-ordered values [n, m]: np.take_along_axis
    by one flat take, without its index grids."""
    flat = columns + (np.arange(len(values)) * values.shape[1])[:, None]
    return np.ascontiguousarray(values).reshape(-1)[flat]


def _kth_smallest(values, k):
    """float [n]: the k-th smallest (from 0) of each row of values [n, m]."""
    chosen = _smallest(values, k + 1)
    return _along(values, chosen).max(axis=1)


def _eigengap(eigenvalues, cluster_count):
    if cluster_count < 2 or len(eigenvalues) <= cluster_count:
        return float("nan")
    return float(eigenvalues[cluster_count] - eigenvalues[cluster_count - 1])


def _separateness(features, assignment, cluster_count, distance=None, neighbours=NEIGHBOURS):
    """Per cluster: mean silhouette and separation (module docstring); NaN with one cluster.
    distance: the [m, m] distances of `features`, when the caller has them already;
    neighbours: the k of the spread (each member's k-th nearest fellow member), NEIGHBOURS
    unless the caller judges a small group (concepts.py)."""
    present = np.unique(assignment)
    if cluster_count < 2 or len(present) < 2:
        return [float("nan")] * max(cluster_count, 1), [float("nan")] * max(cluster_count, 1)
    from sklearn.metrics import pairwise_distances
    if distance is None:
        distance = pairwise_distances(features)  # [m, m]
    silhouette = _silhouettes(distance, assignment)
    silhouettes, separations = [], []
    for c in range(cluster_count):
        members = assignment == c
        if not members.any():  # a "what" view class whose every image has no evidence
            silhouettes.append(float("nan"))
            separations.append(float("nan"))
            continue
        silhouettes.append(float(silhouette[members].mean()))
        fellows = distance[members]  # [members, m]
        outside = fellows[:, ~members].min(axis=1)
        # The k-th nearest fellow member (column 0 of the sorted row: itself), the others
        # out of the way at +inf: the same value as a full sort's, in linear time.
        k = min(int(neighbours), members.sum() - 1)
        fellows[:, ~members] = np.inf
        kth = _kth_smallest(fellows, k)
        scale = np.median(kth)
        separations.append(float(np.quantile(outside, 0.1) / scale) if scale > 0 else float("inf"))
    return silhouettes, separations


def _silhouettes(distance, assignment):
    """float64 [m]: each map's silhouette (b - a) / max(a, b) on the distances [m, m]: a
    its mean distance to the other members of its cluster, b the least mean distance to
    the members of another cluster; 0 in a cluster of one (the definition of
    sklearn.metrics.silhouette_samples). The per-cluster sums come from one product with
    the cluster indicators, where scikit-learn sums row by row in Python (40 ms for a
    2,000-map sample, against 2: find_groups asks for some thirty per class)."""
    _, labels = np.unique(assignment, return_inverse=True)
    labels = labels.reshape(-1)
    rows = np.arange(len(labels))
    counts = np.bincount(labels)
    indicator = np.zeros((len(labels), len(counts)))
    indicator[rows, labels] = 1.0
    sums = distance @ indicator  # [m, K]
    fellows = counts[labels] - 1
    own = sums[rows, labels] / np.maximum(fellows, 1)
    means = sums / counts
    means[rows, labels] = np.inf
    nearest = means.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        silhouette = (nearest - own) / np.maximum(own, nearest)
    return np.where(fellows > 0, np.nan_to_num(silhouette), 0.0)


def _spectrum(features, count):
    """Normalised Laplacian eigenvalues (ascending) and eigenvectors of the kNN graph.
    A dense [m, m] eigen-decomposition (scipy.linalg.eigh), not a sparse solver: m is at
    most the sample size, and K separate groups give K eigenvalues at 1 that a Lanczos
    solver (concepts.py's bisection, which needs one vector only) can miss."""
    size = len(features)
    import scipy.linalg
    from sklearn.neighbors import kneighbors_graph
    graph = kneighbors_graph(features, min(NEIGHBOURS, size - 1), mode="connectivity",
                             include_self=False)
    affinity = (0.5 * (graph + graph.T)).toarray()  # symmetric [m, m]
    scale = 1.0 / np.sqrt(affinity.sum(axis=1))
    normalised = affinity * scale[:, None] * scale[None, :]
    # The largest eigenvalues of D^-1/2 A D^-1/2 are 1 - the smallest of L.
    values, vectors = scipy.linalg.eigh(normalised, subset_by_index=[size - count, size - 1])
    return 1.0 - values[::-1], vectors[:, ::-1]


def fit_class(label, indices, features, *, cluster_count=None, seed=0,
              min_distance=DEFAULT_RULE.min_distance, max_overlap=DEFAULT_RULE.max_overlap):
    """Cluster one class's sample: indices int64 [m], features [m, D] from embed_maps;
    k-means clusters that look at the same place are then joined (_join_same_place)."""
    features = np.asarray(features, np.float64)
    size = len(indices)
    if size < MIN_FIT_SIZE:
        assignment = np.zeros(size, int)
        return ClassClusters(label, indices, features, assignment, np.zeros((size, 2)),
                             np.zeros(0), 1)
    count = min(MAX_CLUSTERS + 1, size - 1)
    eigenvalues, vectors = _spectrum(features, count)
    if cluster_count is None:
        cluster_count = int(np.argmax(np.diff(eigenvalues)[:MAX_CLUSTERS])) + 1
    cluster_count = int(min(cluster_count, count))
    if cluster_count == 1:
        assignment = np.zeros(size, int)
    else:
        rows = vectors[:, :cluster_count]
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        from sklearn.cluster import KMeans
        assignment = KMeans(cluster_count, n_init=10, random_state=seed).fit_predict(rows)
        assignment, cluster_count = _join_same_place(
            features, _by_size(assignment, cluster_count), cluster_count, min_distance,
            max_overlap)
    layout = vectors[:, 1:3] * np.sqrt(size)
    # Eigenvectors have no sign: make each one's largest entry positive, so the picture
    # is the same on every run.
    signs = np.sign(layout[np.abs(layout).argmax(axis=0), np.arange(layout.shape[1])])
    layout = layout * np.where(signs == 0, 1.0, signs)
    return ClassClusters(label, indices, features, assignment, layout, eigenvalues, cluster_count)


def _join_same_place(features, assignment, cluster_count, min_distance, max_overlap):
    """Join k-means clusters that are pieces of one group apart, then number by size.

    features [m, grid*grid] (Hellinger), assignment int [m] in 0..cluster_count-1 ->
    (assignment, cluster_count). On the mean unit-mass maps (features squared), two clusters
    are pieces of one group apart when
    - they look at the same place: their hot centres are less than `min_distance` apart
      and more than `max_overlap` of the smaller hot region lies inside the other (each
      fails the flag's "elsewhere" checks against the other), and
    - together they look somewhere else than the rest of their class: the joined group
      passes those checks against the clusters left (so there must be some left).
    The second condition keeps slices of a continuum apart (their neighbours in the rest
    look next to them) and leaves a class cut in two as asked. The closest such pair is
    joined first and the mean maps recomputed before the next. Pairs are scanned in size
    order, which depends only on the sample and the seed."""
    grid = int(round(np.sqrt(features.shape[1])))
    unit = (features ** 2).reshape(len(features), grid, grid)  # [m, grid, grid], mass 1
    groups = [assignment == c for c in range(cluster_count)]  # bool [m] per cluster
    while len(groups) > 2:
        best = None
        for first in range(len(groups)):
            for second in range(first + 1, len(groups)):
                apart = _pieces_apart(unit, groups, first, second, min_distance, max_overlap)
                if apart is not None and (best is None or apart < best[0]):
                    best = (apart, first, second)
        if best is None:
            break
        _, first, second = best
        groups[first] = groups[first] | groups.pop(second)
    joined = np.zeros(len(assignment), int)
    for number, group in enumerate(groups):
        joined[group] = number
    return _by_size(joined, len(groups)), len(groups)


def _pieces_apart(unit, groups, first, second, min_distance, max_overlap):
    """The distance between the hot centres of groups[first] and groups[second] when they
    are pieces of one group apart (_join_same_place), else None. unit [m, grid, grid]."""
    one, two = unit[groups[first]].mean(axis=0), unit[groups[second]].mean(axis=0)
    centre_one, centre_two = hot_region(one)[1], hot_region(two)[1]
    apart = float(np.hypot(centre_one[0] - centre_two[0], centre_one[1] - centre_two[1]))
    if not (apart < min_distance and hot_overlap(one, two) > max_overlap):
        return None
    together = groups[first] | groups[second]
    joined, rest = unit[together].mean(axis=0), unit[~together].mean(axis=0)
    if (distance_to_hot(hot_region(joined)[1], rest) >= min_distance
            and hot_overlap(joined, rest) <= max_overlap):
        return apart
    return None


def _by_size(assignment, cluster_count):
    """Renumber clusters by size, largest first; ties by first member (sample index order)."""
    sizes = np.bincount(assignment, minlength=cluster_count)
    first = np.array([np.argmax(assignment == c) for c in range(cluster_count)])
    order = np.lexsort((first, -sizes))
    rename = np.empty(cluster_count, int)
    rename[order] = np.arange(cluster_count)
    return rename[assignment]


class ClusterModel:
    """The fitted clusters of every class; cluster ids are unique across classes."""

    def __init__(self, fits, grid, embed=None):
        self.fits = fits  # class -> ClassClusters, ascending class
        self.grid = grid
        self.embed = embed or (lambda maps: embed_maps(maps, grid))
        self.offsets, start = {}, 0
        for label in sorted(fits):
            self.offsets[label] = start
            start += fits[label].cluster_count
        self.count = start
        self.centroids = np.concatenate([fits[label].centroids for label in sorted(fits)]) \
            if fits else np.zeros((0, grid * grid))  # [clusters, D], global ids

    def assign(self, classes, maps):
        """classes int [n], maps [n,h,w] -> (cluster int32 [n] (-1: empty map or a class
        never fitted), layout float32 [n,2] (NaN where -1), features [n, D])."""
        classes = np.asarray(classes, np.int64).reshape(-1)
        if len(classes) != np.shape(maps)[0]:
            raise UsageError(f"one explained class per map: received {len(classes)} classes "
                             f"for {np.shape(maps)[0]} maps")
        features, empty = self.embed(maps)
        cluster = np.full(len(classes), -1, np.int32)
        layout = np.full((len(classes), 2), np.nan, np.float32)
        for label in np.unique(classes):
            rows = (classes == label) & ~empty
            if int(label) not in self.fits or not rows.any():
                continue
            local, position = self.fits[int(label)].assign(features[rows])
            cluster[rows] = local + self.offsets[int(label)]
            layout[rows] = position
        return cluster, layout, features

    def locate(self, cluster):
        """Global cluster id -> (ClassClusters, local id)."""
        for label, offset in self.offsets.items():
            fit = self.fits[label]
            if offset <= cluster < offset + fit.cluster_count:
                return fit, cluster - offset
        raise UsageError(f"cluster id {cluster} is not one of this model's 0..{self.count - 1}")


def fit_clusters(sample, *, cluster_count=None, seed=0, min_distance=DEFAULT_RULE.min_distance,
                 max_overlap=DEFAULT_RULE.max_overlap):
    """ClassSample -> ClusterModel. `cluster_count` overrides the eigengap's K for every class
    (an int) or per class ({class: K}); k-means clusters closer than `min_distance` that
    overlap more than `max_overlap` are joined (the flag's thresholds)."""
    with one_thread():
        return _fit_clusters(sample, cluster_count, seed, min_distance, max_overlap)


def _fit_clusters(sample, cluster_count, seed, min_distance, max_overlap):
    fits = {}
    for label in sample.classes():
        indices, features = sample.members(label)
        wanted = cluster_count.get(label) if isinstance(cluster_count, dict) else cluster_count
        if wanted is not None and int(wanted) < 1:
            raise UsageError(f"the number of clusters must be at least 1; received {wanted!r} "
                             f"for class {label}")
        fits[label] = fit_class(label, indices, features, cluster_count=wanted, seed=seed,
                                min_distance=min_distance, max_overlap=max_overlap)
    return ClusterModel(fits, sample.grid)


# ----------------------------------------------------------------------------- statistics


class ClusterStatistics:
    """Per cluster and per class running sums over assigned chunks (flat in N)."""

    def __init__(self, model, examples=EXAMPLES):
        self.model, self.examples = model, examples
        self.size = np.zeros(model.count, np.int64)
        self.labelled = np.zeros(model.count, np.int64)
        self.correct = np.zeros(model.count, np.int64)
        self.score = np.zeros(model.count)
        self.scored = False
        self.map_sum = None  # [clusters, h, w]
        self.class_size = {}  # every map of the class, clustered or not
        self.typical = [[] for _ in range(model.count)]  # sorted (distance, index, key)

    def add(self, indices, classes, maps, cluster, features, *, labels=None, predictions=None,
            scores=None, keys=None):
        """One assigned chunk: cluster and features from ClusterModel.assign; labels int
        [n] (-1 unknown), predictions int [n] (predicted class), scores [n] (its
        probability), keys [n] str or UTF-8 bytes (as the shards hold them)."""
        indices, classes = _check_rows(indices, classes, maps)
        cluster = np.asarray(cluster)
        if len(cluster) != len(indices) or len(features) != len(indices):
            raise UsageError(f"cluster and features must have one row per map: received "
                             f"{len(cluster)} and {len(features)} for {len(indices)} maps; "
                             "pass what ClusterModel.assign returned for this chunk")
        maps = np.maximum(np.asarray(maps, np.float64), 0.0)
        if self.map_sum is None:
            self.map_sum = np.zeros((self.model.count, *maps.shape[1:]))
        for label, count in zip(*np.unique(classes, return_counts=True)):
            self.class_size[int(label)] = self.class_size.get(int(label), 0) + int(count)
        clustered = cluster >= 0
        ids = cluster[clustered]
        self.size += np.bincount(ids, minlength=self.model.count)
        add_rows(self.map_sum, ids, maps[clustered])
        if labels is not None and predictions is not None:
            labels, predictions = np.asarray(labels)[clustered], np.asarray(predictions)[clustered]
            known = labels >= 0
            self.labelled += np.bincount(ids[known], minlength=self.model.count)
            self.correct += np.bincount(ids[known & (labels == predictions)],
                                        minlength=self.model.count)
        if scores is not None:
            self.scored = True
            self.score += np.bincount(ids, weights=np.asarray(scores, np.float64)[clustered],
                                      minlength=self.model.count)
        rows = np.nonzero(clustered)[0]
        distance = np.linalg.norm(features[rows] - self.model.centroids[ids], axis=1)
        # The `examples` smallest (distance, index) per cluster: the same whatever the
        # chunking. Sorted by cluster, then distance, then index: each cluster's first
        # `examples` rows are its only candidates from this chunk.
        order = np.lexsort((indices[rows], distance, ids))
        present, starts = np.unique(ids[order], return_index=True)
        for cluster_id, start in zip(present.tolist(), starts.tolist()):
            chosen = order[start:start + self.examples]
            chosen = chosen[ids[chosen] == cluster_id]
            candidates = [(float(distance[c]), int(indices[rows[c]]),
                           None if keys is None else _text(keys[rows[c]])) for c in chosen]
            self.typical[cluster_id] = sorted(self.typical[cluster_id] + candidates,
                                              key=lambda entry: entry[:2])[:self.examples]

    def finish(self, class_names=None, **thresholds):
        """Cluster dicts (see describe_clusters), flags applied."""
        return describe_clusters(self, class_names, **thresholds)


def _text(key):
    return key.decode("utf-8") if isinstance(key, bytes) else str(key)


def add_rows(total, ids, values):
    """total[ids[i]] += values[i] for every row i (np.add.at's sums, to rounding): one
    sort and one reduceat, where np.add.at goes one row at a time (a quarter of the
    assignment pass's time on 3x3 maps)."""
    if not len(ids):
        return
    order = np.argsort(ids, kind="stable")
    present, starts = np.unique(ids[order], return_index=True)
    total[present] += np.add.reduceat(np.asarray(values)[order], starts, axis=0)


def hot_coverage(maps, fraction=HOT_FRACTION):
    """maps [n,h,w] -> float64 [n]: the share of each map's cells at `fraction` of its
    peak or more (NaN for a map with no mass)."""
    maps = np.asarray(maps, np.float64)
    peak = maps.reshape(len(maps), -1).max(axis=1) if len(maps) else np.zeros(0)
    hot = maps >= fraction * peak[:, None, None]
    return np.where(peak > 0, hot.mean(axis=(1, 2)), np.nan)


# ----------------------------------------------------------------------------- regions


def hot_region(mean_map, fraction=HOT_FRACTION):
    """mean_map [h,w] -> ([y0, y1, x0, x1] fractions of the side, half-open; [y, x] hot
    centre). None, None for a map with no mass."""
    mean_map = np.asarray(mean_map, np.float64)
    peak = mean_map.max()
    if not peak > 0:
        return None, None
    height, width = mean_map.shape
    hot = mean_map >= fraction * peak
    rows, cols = np.nonzero(hot)
    box = [rows.min() / height, (rows.max() + 1) / height, cols.min() / width,
           (cols.max() + 1) / width]
    weight = mean_map * hot
    centre = [float(((rows + 0.5) / height * weight[rows, cols]).sum() / weight.sum()),
              float(((cols + 0.5) / width * weight[rows, cols]).sum() / weight.sum())]
    return [float(v) for v in box], centre


def hot_cells(mean_map, fraction=HOT_FRACTION):
    """bool [h,w]: the cells at or above `fraction` of the map's maximum (none when the
    map has no mass)."""
    mean_map = np.asarray(mean_map, np.float64)
    peak = mean_map.max()
    return mean_map >= fraction * peak if peak > 0 else np.zeros(mean_map.shape, bool)


def distance_to_hot(centre, mean_map, fraction=HOT_FRACTION):
    """Distance (fractions of the side) from `centre` [y, x] to the nearest hot cell centre
    of `mean_map`: to the nearest place the map looks at, so that a rest of the class that
    looks at two places is not averaged into a third place it never looks at. NaN when the
    map has no mass."""
    rows, cols = np.nonzero(hot_cells(mean_map, fraction))
    if rows.size == 0:
        return float("nan")
    height, width = np.shape(mean_map)
    return float(np.hypot((rows + 0.5) / height - centre[0], (cols + 0.5) / width - centre[1]).min())


def hot_overlap(first, second, fraction=HOT_FRACTION):
    """Share of the smaller hot region (hot_cells) that lies inside the other: 0 = the two
    maps look at different places, 1 = one looks inside where the other looks. Hot cells
    rather than whole maps, so a flat noise floor does not count as looking at the same
    place. NaN when a map has no mass."""
    first, second = hot_cells(first, fraction), hot_cells(second, fraction)
    smaller = min(first.sum(), second.sum())
    return float((first & second).sum() / smaller) if smaller else float("nan")


def place_name(centre):
    """[y, x] in fractions -> 'top-left corner', 'top edge', 'centre', ..."""
    row = ("top", "middle", "bottom")[min(int(centre[0] * 3), 2)]
    col = ("left", "centre", "right")[min(int(centre[1] * 3), 2)]
    if row == "middle":
        return "centre" if col == "centre" else f"{col} side"
    if col == "centre":
        return f"{row} edge"
    return f"{row}-{col} corner"


# ----------------------------------------------------------------------------- flags


def _rest_mean(values, sizes, ids, cluster):
    """The size-weighted mean of `values` over the class's clusters `ids` but `cluster`."""
    others = [i for i in ids if i != cluster and sizes[i] > 0 and np.isfinite(values[i])]
    weight = sum(sizes[i] for i in others)
    return sum(values[i] * sizes[i] for i in others) / weight if weight else float("nan")


def describe_clusters(statistics, class_names=None, *,
                      min_silhouette=DEFAULT_RULE.min_silhouette,
                      min_separation=DEFAULT_RULE.min_separation,
                      min_share=DEFAULT_RULE.min_share, min_size=DEFAULT_RULE.min_size,
                      max_share=DEFAULT_RULE.max_share, min_distance=DEFAULT_RULE.min_distance,
                      max_overlap=DEFAULT_RULE.max_overlap,
                      diffuse_min_coverage=DEFAULT_RULE.diffuse_min_coverage,
                      min_evidence_ratio=DEFAULT_RULE.min_evidence_ratio, coverage=None,
                      evidence=None,
                      **other_thresholds):
    """The cluster dicts: id, view ("where"), kind ("place", "diffuse" or None when not
    flagged), class, size, share, flagged, reasons, hot_region, accuracy (None without
    labels), mean_score (None without scores), verification (None until verify),
    examples ([{"index", "key"}], most typical first), and the numbers behind the flag:
    eigengap, silhouette, separation, compactness, hot_centre, distance, overlap,
    coverage, rest_coverage, evidence_ratio, mean_heatmap (float64 [h,w]).

    coverage [clusters]: the mean over members of each map's hot share (cells at half
    its peak or more); evidence [clusters]: the members' mean evidence (the sum of their
    channel relevances), NaN where the run stored none. A separate group that matters
    but does not look elsewhere is DIFFUSE when its maps are hot over at least
    diffuse_min_coverage of the image while the rest of its class's are not (a tinted
    background, the tank story's sky). Every kind needs evidence of its own: at least
    min_evidence_ratio of the rest's mean evidence, so a group the model calls by default
    (nothing seen, the class's biases decide) is not flagged. other_thresholds: the "what"
    view's, ignored here."""
    model = statistics.model
    count = model.count
    coverage = np.full(count, np.nan) if coverage is None else np.asarray(coverage, np.float64)
    evidence = np.full(count, np.nan) if evidence is None else np.asarray(evidence, np.float64)
    result = []
    for label, fit in sorted(model.fits.items()):
        name = _class_name(class_names, label)
        offset = model.offsets[label]
        ids = range(offset, offset + fit.cluster_count)
        class_sum = sum(statistics.map_sum[i] for i in ids) if statistics.map_sum is not None else None
        class_clustered = int(sum(statistics.size[i] for i in ids))
        for local, cluster in enumerate(ids):
            size = int(statistics.size[cluster])
            share = size / statistics.class_size.get(label, 0) if size else 0.0
            mean_map = statistics.map_sum[cluster] / size if size else None
            region, centre = hot_region(mean_map) if size else (None, None)
            rest_size = class_clustered - size
            distance = together = float("nan")
            if centre is not None and rest_size:
                rest = (class_sum - statistics.map_sum[cluster]) / rest_size
                distance = distance_to_hot(centre, rest)
                together = hot_overlap(mean_map, rest)
            sizes = statistics.size
            rest_coverage = _rest_mean(coverage, sizes, ids, cluster)
            rest_evidence = _rest_mean(evidence, sizes, ids, cluster)
            ratio = (evidence[cluster] / rest_evidence if np.isfinite(evidence[cluster])
                     and np.isfinite(rest_evidence) and rest_evidence > 0 else float("nan"))
            checks = [
                (fit.cluster_count > 1, "the class forms a single group"),
                (fit.silhouette[local] >= min_silhouette,
                 f"not a separate group (silhouette {fit.silhouette[local]:.2f} < {min_silhouette})"),
                (fit.separation[local] >= min_separation,
                 f"a slice of a continuum (separation {fit.separation[local]:.2f} < {min_separation})"),
                (share >= min_share and size >= min_size,
                 f"too small ({size} maps, {share:.0%} of the class; needs {min_size} and {min_share:.0%})"),
                (share <= max_share, f"most of the class ({share:.0%} > {max_share:.0%})"),
                (not ratio < min_evidence_ratio,
                 f"no evidence of its own (its evidence is {ratio:.2f} of the rest's < "
                 f"{min_evidence_ratio}: the model calls these by default)"),
            ]
            place = [
                (distance >= min_distance,
                 f"its evidence sits near the rest's ({distance:.2f} < {min_distance} of the image)"),
                (together <= max_overlap,
                 f"its evidence overlaps the rest's ({together:.2f} > {max_overlap})"),
            ]
            diffuse = (coverage[cluster] >= diffuse_min_coverage
                       and rest_coverage < diffuse_min_coverage)
            failed = [reason for passed, reason in checks if not passed]
            failed_place = [reason for passed, reason in place if not passed]
            kind = None if failed else ("place" if not failed_place else
                                        "diffuse" if diffuse else None)
            flagged = kind is not None
            if kind == "place":
                reasons = [f"{share:.0%} of class '{name}': the evidence sits in the "
                           f"{place_name(centre)}, {distance:.1f} of the image away from where "
                           f"the rest of the class looks"]
            elif kind == "diffuse":
                reasons = [f"{share:.0%} of class '{name}': the evidence covers the image "
                           f"({coverage[cluster]:.0%} of it hot on average) where the rest of "
                           f"the class looks at a part ({rest_coverage:.0%}): a background, "
                           f"a tint or a texture"]
            else:
                failed = failed + failed_place
                if failed_place and not diffuse and np.isfinite(coverage[cluster]):
                    failed.append(f"not diffuse either (hot over {coverage[cluster]:.0%} of the "
                                  f"image, the rest {rest_coverage:.0%}; needs "
                                  f">= {diffuse_min_coverage:.0%} and the rest below)")
                reasons = failed[:1] if fit.cluster_count == 1 else failed
            examples = statistics.typical[cluster]
            labelled = int(statistics.labelled[cluster])
            result.append({
                "id": cluster, "view": "where", "kind": kind, "class": int(label),
                "class_name": name, "size": size,
                "share": share, "flagged": flagged, "reasons": reasons, "hot_region": region,
                "accuracy": statistics.correct[cluster] / labelled if labelled else None,
                "mean_score": statistics.score[cluster] / size if size and statistics.scored else None,
                "verification": None,
                "examples": [{"index": index, "key": key} for _, index, key in examples],
                "eigengap": fit.eigengap, "silhouette": fit.silhouette[local],
                "separation": fit.separation[local], "compactness": fit.compactness[local],
                "hot_centre": centre, "distance": distance, "overlap": together,
                "coverage": coverage[cluster], "rest_coverage": rest_coverage,
                "evidence_ratio": ratio, "mean_heatmap": mean_map,
            })
    return result


def _class_name(class_names, label):
    if class_names is None:
        return f"class {label}"
    if isinstance(class_names, dict):
        return str(class_names.get(label, f"class {label}"))
    return str(class_names[label]) if 0 <= label < len(class_names) else f"class {label}"


# ----------------------------------------------------------------------------- in memory


def cluster_maps(indices, classes, maps, *, labels=None, predictions=None, scores=None,
                 keys=None, class_names=None, cluster_count=None, sample_size=SAMPLE_SIZE,
                 seed=0, chunk=4096):
    """Everything at once for maps that fit in memory (tests, small runs): returns
    (cluster dicts, cluster int32 [n], layout float32 [n,2], model). The audit streams the
    same steps (ClassSample, fit_clusters, ClusterModel.assign, ClusterStatistics)."""
    with one_thread():
        return _cluster_maps(indices, classes, maps, labels, predictions, scores, keys,
                             class_names, cluster_count, sample_size, seed, chunk)


def _cluster_maps(indices, classes, maps, labels, predictions, scores, keys, class_names,
                  cluster_count, sample_size, seed, chunk):
    indices, classes = _check_rows(indices, classes, maps)
    sample = ClassSample(sample_size, seed)
    for start in range(0, len(maps), chunk):
        part = slice(start, start + chunk)
        sample.add(indices[part], classes[part], maps[part])
    model = fit_clusters(sample, cluster_count=cluster_count, seed=seed)
    statistics = ClusterStatistics(model)
    cluster = np.full(len(maps), -1, np.int32)
    layout = np.full((len(maps), 2), np.nan, np.float32)

    def rows(values, part):
        return None if values is None else np.asarray(values)[part]

    for start in range(0, len(maps), chunk):
        part = slice(start, start + chunk)
        cluster[part], layout[part], features = model.assign(classes[part], maps[part])
        statistics.add(indices[part], classes[part], maps[part], cluster[part], features,
                       labels=rows(labels, part), predictions=rows(predictions, part),
                       scores=rows(scores, part), keys=rows(keys, part))
    return statistics.finish(class_names), cluster, layout, model
