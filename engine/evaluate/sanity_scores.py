"""The sanity checks' verdict from their numbers: the pass rule, and the summary that
evaluation.json carries. NumPy only (no TensorFlow), so the evaluation's summary and the
report read stored numbers without it.

The rule (`PASS_THRESHOLD`): on a 0-to-1 scale where 0 is the floor (the mean Spearman
correlation of two unrelated maps: each image's original map against another image's)
and 1 is the original map itself, a method **fails** when its mean Spearman correlation
with the original maps, once every layer its maps depend on is random, is still above
PASS_THRESHOLD, that is more than halfway from unrelated maps to the original ones.
Every layer its maps depend on: for maps read at the target layer (CAM and its
relatives), the whole network down to the target layer; for gradients of the input
(saliency and its relatives), the whole network, as Adebayo et al. randomise it. Read at
the target layer instead, a gradient map keeps the trained lower layers' edge detectors
and looks like the original (on the demo's CNN, saliency's mean Spearman was still 0.79
with the top down to the target layer random). A map that does not depend on the model
(the edge map, a control) stays at 1 and fails. On a small CNN trained on generated
images (tests/evaluate/test_sanity.py) saliency ends at -0.34 (the whole network random)
and Grad-CAM at -0.30 (down to its target layer) on that scale, the edge map at 1.

A pair where either map is constant (a Grad-CAM map that the ReLU emptied on the random
model) has no defined rank correlation; it counts as 0, no shared order, in the means,
and the summary says how many there were.
"""

import dataclasses
import json

import numpy as np

from sightline.store.layout import SAMPLE_INDEX
# A method fails when (final mean Spearman - floor) / (1 - floor) is above this.
PASS_THRESHOLD = 0.5
RULE = (f"fails when, after every layer its maps depend on is randomised (down to the "
        f"target layer for maps read there, the whole network for gradients of the input), "
        f"its mean Spearman correlation with the original maps is more than "
        f"{PASS_THRESHOLD:g} of the way from the floor (unrelated maps) to 1")


@dataclasses.dataclass(frozen=True)
class Similarity:
    """One method's (or control's) maps against its original maps, image by image.

    spearman, ssim: [S, N], after each of the S randomisation steps.
    floor_spearman, floor_ssim: [N], the original map against another image's.
    random_logit_spearman, random_logit_ssim: [N], the explained class against a random
        other class, on the trained model.
    strip: [S + 1, h, w], one image's maps scaled to [0, 1]: the original, then after
        each step.
    verdict_step: the step after which every layer the maps depend on is random, the one
        the verdict reads (-1: the last; for the target layer's methods the cascade may
        go on below it when gradient methods are checked beside them).
    """

    spearman: np.ndarray
    ssim: np.ndarray
    floor_spearman: np.ndarray
    floor_ssim: np.ndarray
    random_logit_spearman: np.ndarray
    random_logit_ssim: np.ndarray
    strip: np.ndarray
    verdict_step: int = -1

    @property
    def relative_similarity(self):
        """The verdict step's mean Spearman on the scale floor = 0, original = 1 (NaN when
        unrelated maps already agree as much as identical ones)."""
        floor = _mean(self.floor_spearman)
        if 1.0 - floor <= 1e-6:
            return float("nan")
        return (_mean(self.spearman[int(self.verdict_step)]) - floor) / (1.0 - floor)

    @property
    def passes(self):
        """The rule of the module's docstring; False when the floor leaves no room."""
        relative = self.relative_similarity
        return bool(np.isfinite(relative) and relative <= PASS_THRESHOLD)

    def summary(self, layers):
        """The JSON entry: passes, the rule, the floor, the means per randomised layer
        (top-down, as randomised) and the random-logit check."""
        return {
            "passes": self.passes,
            "rule": RULE,
            "threshold": PASS_THRESHOLD,
            "relative_similarity": _finite_or_none(self.relative_similarity),
            "verdict_layer": layers[int(self.verdict_step)] if len(layers) else None,
            "floor": {"spearman": _mean(self.floor_spearman), "ssim": _mean(self.floor_ssim)},
            "spearman_by_layer": [{"layer": layer, "mean": _mean(values)}
                                  for layer, values in zip(layers, self.spearman)],
            "ssim_by_layer": [{"layer": layer, "mean": _mean(values)}
                              for layer, values in zip(layers, self.ssim)],
            "random_logit": {"spearman": _mean(self.random_logit_spearman),
                             "ssim": _mean(self.random_logit_ssim)},
            "constant_pairs": int(np.isnan(self.spearman).sum()),
        }


def _mean(values):
    """The mean with undefined correlations (a constant map) counted as 0."""
    values = np.asarray(values, np.float64)
    return float(np.mean(np.where(np.isnan(values), 0.0, values)))


def _finite_or_none(value):
    return float(value) if np.isfinite(value) else None


# What evaluation.h5 holds per method and control under /sanity/<methods|controls>/<name>/.
FIELDS = tuple(field.name for field in dataclasses.fields(Similarity)
               if field.name != "verdict_step")
# ... and, as an attribute of each method's group, the step its verdict reads.
VERDICT_STEP = "verdict_step"
SANITY_GROUP = "sanity"


def write_sanity(handle, checks, sample_index):
    """Write the checks (`sanity.SanityChecks`) into an open h5py file or group:
    /sanity/sample/index [N] (the images checked), the attributes layers (JSON, top-down)
    and target_layer, and per method or control its `Similarity` arrays."""
    group = handle.create_group(SANITY_GROUP)
    group[SAMPLE_INDEX] = np.asarray(sample_index, np.int64)
    group.attrs["layers"] = json.dumps(list(checks.layers))
    group.attrs["target_layer"] = checks.target_layer or ""
    for name, result in checks.results.items():
        kind = "controls" if name in checks.controls else "methods"
        for field in FIELDS:
            group[f"{kind}/{name}/{field}"] = np.asarray(getattr(result, field))
        group[f"{kind}/{name}"].attrs[VERDICT_STEP] = int(result.verdict_step)


def read_sanity(handle):
    """What `write_sanity` wrote, or None: {"layers", "target_layer", "count",
    "methods": {name: Similarity}, "controls": {name: Similarity}}."""
    if SANITY_GROUP not in handle:
        return None
    group = handle[SANITY_GROUP]
    read = {"layers": json.loads(group.attrs["layers"]),
            "target_layer": str(group.attrs["target_layer"]) or None,
            "count": int(len(group[SAMPLE_INDEX]))}
    for kind in ("methods", "controls"):
        # Files written before verdict_step existed read the last step, as they did.
        read[kind] = {name: Similarity(**{field: group[f"{kind}/{name}/{field}"][:]
                                          for field in FIELDS},
                                       verdict_step=int(group[f"{kind}/{name}"].attrs.get(
                                           VERDICT_STEP, -1)))
                      for name in (group[kind] if kind in group else ())}
    return read
