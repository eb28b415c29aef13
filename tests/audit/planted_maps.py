"""Hand-made heatmaps for the clustering tests: Gaussian blobs at chosen places, and a class
with a planted corner group."""

import numpy as np


SIDE = 16


def blob_maps(centres, rng, *, noise=0.15, sigma=1.5, jitter=0.0, side=SIDE):
    """One Gaussian blob per map at centres [(y, x)] (fractions of the side), plus a
    uniform noise floor: float64 [n, side, side]."""
    rows, cols = np.mgrid[0:side, 0:side] + 0.5
    maps = []
    for y, x in centres:
        y = y * side + rng.normal(0, jitter)
        x = x * side + rng.normal(0, jitter)
        blob = np.exp(-((rows - y) ** 2 + (cols - x) ** 2) / (2 * sigma ** 2))
        maps.append(blob + rng.uniform(0, noise, (side, side)))
    return np.array(maps)


def planted_corner(seed, count=400, share=0.12):
    """A class whose maps look at an object near the centre, except a `share` whose maps
    look at the bottom-right corner. Returns (maps, truth bool [n])."""
    rng = np.random.default_rng(seed)
    corner = rng.random(count) < share
    centres = [(0.88, 0.88) if hit else (rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65))
               for hit in corner]
    return blob_maps(centres, rng, jitter=0.3), corner
