"""What an evaluation was asked to do, checked at the boundary (no TensorFlow here), and
how its samples are chosen."""

import dataclasses
from typing import Optional

import numpy as np

from sightline.audit.clusters import sample_priority
from sightline.errors import UsageError
from sightline.kernels.methods import METHODS

FILLS = ("mean", "blur", "road")  # the same tuple as sightline.evaluate.curves.FILLS
DEFAULT_STEPS = 20
# Images per explained class the sanity checks explain again at every randomisation step.
DEFAULT_SANITY_SAMPLE = 256
# Cells of the ranking grid when the run holds no CAM-family map (whose own grid is
# used otherwise): 8 x 8, at most the input's size.
DEFAULT_GRID = (8, 8)
MAX_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """steps S per curve, the deletion fill, `sample` images per explained class (None:
    every image), the seed (ties, random control, ROAD's noise, bootstrap, sanity checks),
    images per batch, the memory one model call may hold, samples per resumable part,
    images per class for the sanity checks (0: none)."""

    steps: int = DEFAULT_STEPS
    fill: str = "mean"
    sample: Optional[int] = None
    seed: int = 0
    batch_size: int = 32
    memory_budget_mb: int = 1024
    part_size: int = 256
    unsafe: bool = False
    methods: Optional[tuple] = None  # None: every method the run stored
    sanity_sample: int = DEFAULT_SANITY_SAMPLE

    def checked(self):
        """self, or a ValueError/TypeError of one line naming the bad setting."""
        if not _whole(self.steps, 1) or self.steps > MAX_STEPS:
            raise UsageError(f"--steps must be a whole number of steps from 1 to {MAX_STEPS}; "
                             f"received {self.steps!r} (default {DEFAULT_STEPS})")
        if self.fill not in FILLS:
            raise UsageError(f"--fill must be one of {', '.join(FILLS)}; received {self.fill!r}")
        if self.sample is not None and not _whole(self.sample, 1):
            raise UsageError(f"--sample must be a whole number of images per class >= 1; "
                             f"received {self.sample!r} (leave it out to evaluate every image)")
        if not _whole(self.seed, 0) or self.seed >= 2 ** 31:
            raise UsageError(f"--seed must be a whole number from 0 to 2**31 - 1; received "
                             f"{self.seed!r}")
        if not _whole(self.sanity_sample, 0):
            raise UsageError(f"--sanity-sample must be a whole number of images per class >= 0 "
                             f"(0 skips the sanity checks); received {self.sanity_sample!r} "
                             f"(default {DEFAULT_SANITY_SAMPLE})")
        for name in ("batch_size", "memory_budget_mb", "part_size"):
            if not _whole(getattr(self, name), 1):
                raise UsageError(f"--{name.replace('_', '-')} must be a whole number >= 1; "
                                 f"received {getattr(self, name)!r}")
        if self.methods is not None:
            unknown = [m for m in self.methods if m not in METHODS]
            if unknown or not self.methods:
                raise UsageError(f"--methods names unknown method(s) {', '.join(map(repr, unknown))}; "
                                 f"known: {', '.join(METHODS)}" if unknown else
                                 "--methods is empty; name at least one stored method")
        return self

    def chosen_methods(self, stored):
        """The methods to evaluate, in the run's order; a ValueError for one not stored."""
        if self.methods is None:
            return list(stored)
        missing = [m for m in self.methods if m not in stored]
        if missing:
            raise UsageError(f"the run did not store {', '.join(map(repr, missing))}; it holds "
                             f"{', '.join(stored)}")
        return [m for m in stored if m in self.methods]

    def recorded(self):
        """What evaluation.json records under "settings" (and what a resume must match)."""
        return {"steps": self.steps, "fill": self.fill, "sample": self.sample, "seed": self.seed,
                "sanity_sample": self.sanity_sample}


def _whole(value, lowest):
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= lowest


def choose_samples(indices, targets, per_class, seed):
    """The sample indices to evaluate (int64, ascending): all of them, or per explained
    class the `per_class` of lowest sample_priority (a hash of the sample index and the
    seed, ties to the lower index): the same images whatever the shards, batch size or
    workers."""
    indices = np.asarray(indices, np.int64)
    targets = np.asarray(targets, np.int64)
    if per_class is None:
        return np.sort(indices)
    priority = sample_priority(indices, seed)
    chosen = []
    for label in np.unique(targets):
        rows = np.nonzero(targets == label)[0]
        order = np.lexsort((indices[rows], priority[rows]))[:per_class]
        chosen.append(indices[rows[order]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def ranking_grid(methods, map_shapes, image_size, layer_methods):
    """(gh, gw): the grid of the run's CAM-family maps when it has one, else DEFAULT_GRID
    capped at the input's size."""
    for method in methods:
        if method in layer_methods:
            return tuple(int(v) for v in map_shapes[method])
    return tuple(min(int(g), int(s)) for g, s in zip(DEFAULT_GRID, image_size))
