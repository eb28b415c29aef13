"""Proof by ablation: does the model depend on the region a flagged cluster looks at?

For a flagged cluster, its members' images are shown to the model twice more: once with
the cluster's hot region replaced, once with a control region of the same size replaced,
and the explained class's probability is compared with the original's.

Replacement: every pixel of the region takes the image's own mean colour (per channel,
over the whole image). That removes what the region shows while keeping the image's
overall brightness and colour, so the model sees no new edge statistics beyond the box's
border; a blur would keep the region's low frequencies, a coloured patch or a watermark
would partly survive it.

Control region: the box of the same size (in cells of the cluster's mean heatmap) that
does not overlap the hot region, among those holding at most the median mean-map mass
(where the cluster does not look), farthest from the hot region (centre to centre); ties
go to the lower mass, then to the first in row-major order. Deterministic, no random box.

Numbers (per region): mean_drop = mean over members of p_c(original) - p_c(ablated), c the
explained class; changed_share = the share of members whose predicted class (argmax)
changes. Rule: the model DEPENDS on the hot region when its mean_drop is at least
MIN_DROP and at least MIN_RATIO times the control's (a control drop below zero counts as
zero). A flag whose region the model does not depend on is downgraded: not flagged any
more, `downgraded` true, and a reason with the numbers.

The model is reached through `probabilities(images[n,H,W,C]) -> [n, classes]`, a callable
the caller builds (compiled, on its device, with its preprocessing); it is called on
batches of at most `batch_size` images. No TensorFlow here.
"""

import numpy as np

from sightline.errors import UsageError

MIN_DROP = 0.10
MIN_RATIO = 2.0
BATCH_SIZE = 64


def region_pixels(region, height, width):
    """[y0, y1, x0, x1] fractions of the side (half-open) -> pixel bounds, widened
    outwards to whole pixels (floor of the start, ceil of the end)."""
    y0, y1, x0, x1 = (float(v) for v in region)
    if not (0.0 <= y0 < y1 <= 1.0 and 0.0 <= x0 < x1 <= 1.0):
        raise UsageError(f"a region is [y0, y1, x0, x1] in fractions of the side with "
                         f"0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1; received {list(region)}")
    # The tolerance keeps 0.3 * 10 = 3.0000000000000004 at pixel 3, not 4.
    return (int(np.floor(y0 * height + 1e-9)), int(np.ceil(y1 * height - 1e-9)),
            int(np.floor(x0 * width + 1e-9)), int(np.ceil(x1 * width - 1e-9)))


def ablate(images, region):
    """images [n,H,W,C] -> a float32 copy with `region` replaced by each image's mean
    colour (module docstring)."""
    images = np.array(images, np.float32)  # a copy: the caller's images stay as they were
    y0, y1, x0, x1 = region_pixels(region, images.shape[1], images.shape[2])
    mean_colour = images.mean(axis=(1, 2), keepdims=True)  # [n,1,1,C]
    images[:, y0:y1, x0:x1, :] = mean_colour
    return images


def control_region(mean_map, region):
    """The control box for `region` on the cluster's mean map [h,w] (module docstring):
    [y0, y1, x0, x1] fractions, or None when no same-size box avoids the hot region."""
    mean_map = np.asarray(mean_map, np.float64)
    height, width = mean_map.shape
    top, bottom, left, right = region_pixels(region, height, width)
    box_height, box_width = bottom - top, right - left
    hot_centre = ((top + bottom) / 2 / height, (left + right) / 2 / width)
    # Summed-area table: any box's mass in four look-ups, so full-size maps stay cheap.
    table = np.pad(mean_map, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)  # [h+1, w+1]
    candidates = []
    for row in range(height - box_height + 1):
        for col in range(width - box_width + 1):
            apart = (row >= bottom or row + box_height <= top or
                     col >= right or col + box_width <= left)
            if not apart:
                continue
            # Rounded, so boxes of equal mass tie as they should despite the table's
            # rounding (maps are scaled to [0, 1]: 1e-9 is far below any real difference).
            mass = round(float(table[row + box_height, col + box_width]
                               - table[row, col + box_width] - table[row + box_height, col]
                               + table[row, col]), 9)
            centre = ((row + box_height / 2) / height, (col + box_width / 2) / width)
            distance = np.hypot(centre[0] - hot_centre[0], centre[1] - hot_centre[1])
            candidates.append((mass, distance, row, col))
    if not candidates:
        return None
    low = np.median([c[0] for c in candidates])
    # Farthest first, then lowest mass, then row-major (the list's order).
    mass, distance, row, col = min((c for c in candidates if c[0] <= low),
                                   key=lambda c: (-c[1], c[0]))
    return [row / height, (row + box_height) / height, col / width, (col + box_width) / width]


def _batches(images, batch_size):
    """An array is cut into batches; any other iterable is taken as its own batches."""
    if isinstance(images, np.ndarray):
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]
    else:
        for chunk in images:
            chunk = np.asarray(chunk)
            for start in range(0, len(chunk), batch_size):
                yield chunk[start:start + batch_size]


def ablation_drops(probabilities, images, target, regions, *, batch_size=BATCH_SIZE):
    """Per region in `regions` (a list of [y0,y1,x0,x1], None entries skipped): the
    mean_drop and changed_share of ablating it, and count. `images` [n,H,W,C] or an
    iterable of such chunks (the members of one cluster); `target` the explained class."""
    if int(batch_size) < 1:
        raise UsageError(f"batch_size must be a positive number of images; received {batch_size!r}")
    target = int(target)
    drop_sum = np.zeros(len(regions))
    changed = np.zeros(len(regions))
    before_sum, count = 0.0, 0
    for batch in _batches(images, int(batch_size)):
        if batch.ndim != 4:
            raise UsageError(f"images must be [n, height, width, channels]; received shape "
                             f"{batch.shape}")
        original = np.asarray(probabilities(np.asarray(batch, np.float32)), np.float64)
        if original.ndim != 2 or not 0 <= target < original.shape[1]:
            raise UsageError(f"probabilities(images) must return [n, classes] with the "
                             f"explained class {target} among them; received shape "
                             f"{original.shape}")
        before_sum += original[:, target].sum()
        count += len(batch)
        for slot, region in enumerate(regions):
            if region is None:
                continue
            ablated = np.asarray(probabilities(ablate(batch, region)), np.float64)
            drop_sum[slot] += (original[:, target] - ablated[:, target]).sum()
            changed[slot] += (original.argmax(axis=1) != ablated.argmax(axis=1)).sum()
    if count == 0:
        raise UsageError("no images to ablate: pass the cluster members' images, at least one")
    return [None if region is None else
            {"region": [float(v) for v in region], "mean_drop": float(drop_sum[slot] / count),
             "changed_share": float(changed[slot] / count), "count": count,
             "mean_probability": float(before_sum / count)}
            for slot, region in enumerate(regions)]


def verify_cluster(probabilities, images, cluster, *, batch_size=BATCH_SIZE,
                   min_drop=MIN_DROP, min_ratio=MIN_RATIO):
    """The verification of one cluster dict (from clusters.describe_clusters: its class,
    hot_region and mean_heatmap), with `images` its members' images.

    Returns {"hot": numbers, "control": numbers or None, "depends": bool, "rule": str}."""
    region = cluster["hot_region"]
    if region is None:
        raise UsageError(f"cluster {cluster['id']} has no hot region (an empty mean heatmap): "
                         "nothing to ablate")
    control = control_region(cluster["mean_heatmap"], region)
    hot, controlled = ablation_drops(probabilities, images, cluster["class"], [region, control],
                                     batch_size=batch_size)
    control_drop = max(controlled["mean_drop"], 0.0) if controlled else 0.0
    depends = hot["mean_drop"] >= min_drop and hot["mean_drop"] >= min_ratio * control_drop
    rule = (f"depends when the hot region's mean drop >= {min_drop} and >= {min_ratio} x the "
            f"control's")
    return {"hot": hot, "control": controlled, "depends": bool(depends), "rule": rule}


def apply_verification(cluster, numbers, *, min_drop=MIN_DROP, min_ratio=MIN_RATIO):
    """Attach the verification to the cluster dict and downgrade its flag when the model
    does not depend on what the group uses. Returns the cluster dict.

    numbers: "region" (verify_cluster's result, for a place), "own_spot" (own_spot_drops
    with "depends"), "features" (feature_drops with "depends"); any may be missing. A
    place stands or falls with its region; any other kind stands when hiding the
    members' own hot spots or replacing the group's channels shows the dependence. With
    no test at all (no separable head, no channels, no hot spot) the flag stays, said
    to be unverified."""
    region = numbers.get("region")
    spot, features = numbers.get("own_spot"), numbers.get("features")
    verification = dict(region) if region else {"hot": None, "control": None}
    verification.update({"own_spot": spot, "features": features})
    name = cluster.get("class_name", cluster["class"])
    parts = []
    if region:
        hot, control = region["hot"], region["control"]
        control_text = (f"{control['mean_drop']:.2f} for a same-size control region"
                        if control else "no control region fits")
        parts.append(f"hiding the region lowers the probability of class '{name}' by "
                     f"{hot['mean_drop']:.2f} on average and changes {hot['changed_share']:.0%} "
                     f"of predictions ({control_text})")
    if spot:
        parts.append(f"hiding each member's own hot spot lowers it by {spot['mean_drop']:.2f} "
                     f"vs {spot['control_drop']:.2f} for a same-size spot elsewhere")
    if features:
        parts.append(f"replacing its {len(features['channels'])} distinguishing channel(s) with "
                     f"the rest of the class's mean lowers it by {features['mean_drop']:.2f} vs "
                     f"{features['control_drop']:.2f} for as many random channels (log-odds "
                     f"{features['log_odds_drop']:.1f} of its {features['excess_log_odds']:.1f} "
                     f"above the rest vs {features['control_log_odds_drop']:.1f})")
    if region:
        dependent = region["depends"]
        rule = region["rule"]
    else:
        dependent = bool((spot and spot["depends"]) or (features and features["depends"]))
        rule = (f"depends when hiding the members' own hot spots or replacing the group's "
                f"channels lowers the class's probability by >= {min_drop} and >= {min_ratio} "
                f"x its control")
    verification["depends"], verification["rule"] = dependent, rule
    cluster["verification"] = verification
    cluster["downgraded"] = False
    summary = "; ".join(parts)
    if not parts:
        cluster["reasons"] = cluster["reasons"] + [
            "not verified: the model's head cannot be separated and no hot spot was found"]
    elif dependent:
        cluster["reasons"] = cluster["reasons"] + [f"verified: {summary}"]
    elif cluster["flagged"]:
        cluster["flagged"] = False
        cluster["downgraded"] = True
        cluster["reasons"] = cluster["reasons"] + [
            f"downgraded: the model does not depend on "
            f"{'this region' if region else 'what this group uses'}: {summary}"]
    return cluster


# ----------------------------------------------------------------------------- per image

# A flagged group is verified on at most this many of its members (the lowest sample
# priorities: the same ones whatever the shards), so --verify costs the same at any N.
VERIFY_MEMBERS = 512
# Random control channel sets drawn for the feature-space ablation.
CONTROL_DRAWS = 3
# The share of a group's excess log-odds over the rest of its class that replacing its
# channels must take away (features_depend).
MIN_EXCESS_SHARE = 0.5
# How far above the rest's log-odds a group must score for the log-odds rule: a group
# the model calls no surer than the rest of its class (its default, faint objects) has
# no extra evidence to take away.
MIN_EXCESS_RATIO = 1.0


def own_regions(maps, grid=None):
    """maps [n,h,w] -> (hot, control): per member its own hot region (the box of its
    cells at half its peak or more) and a same-size control box elsewhere in the same
    image (control_region on its own map); None where a map has no mass or no box fits.

    grid (rows, cols): the target layer's. On a map finer than it (saliency's, at the
    input size) the hot box is widened outwards to whole cells of the layer (layer_box)
    and the control drawn on the map area-averaged to those cells: a pixel map's hot
    cells are the few pixels of largest gradient, part of a mark, and a cell of the
    layer is what one of its features sees, so hiding the cells hides the whole of what
    the model read there. A map at the layer's grid or coarser is taken as it is."""
    from sightline.audit.clusters import hot_region
    from sightline.audit.virelay import resize_cells
    maps = np.asarray(maps, np.float64)
    finer = (grid is not None and maps.ndim == 3
             and (maps.shape[1] > grid[0] or maps.shape[2] > grid[1]))
    cells = (min(maps.shape[1], int(grid[0])), min(maps.shape[2], int(grid[1]))) if finer else None
    coarse = resize_cells(maps, cells).astype(np.float64) if finer else maps
    hot, control = [], []
    for heatmap, layer_map in zip(maps, coarse):
        region, _ = hot_region(heatmap)
        if region is not None and finer:
            region = layer_box(region, cells)
        hot.append(region)
        control.append(None if region is None else control_region(layer_map, region))
    return hot, control


def layer_box(region, grid):
    """[y0, y1, x0, x1] fractions -> the same box widened outwards to whole cells of a
    grid (rows, cols), in fractions."""
    top, bottom, left, right = region_pixels(region, grid[0], grid[1])
    return [top / grid[0], bottom / grid[0], left / grid[1], right / grid[1]]


def _call(function, values, batch_size):
    """function over `values` in batches of at most batch_size rows, concatenated."""
    return np.concatenate([np.asarray(function(values[start:start + batch_size]))
                           for start in range(0, len(values), batch_size)])


def own_spot_drops(probabilities, images, target, hot, control, *, batch_size=BATCH_SIZE):
    """Each member's own hot region hidden, against its own control region: the mean
    drop of the explained class's probability over the members that have both, for
    both, and how many that was. images [n,H,W,C]; hot, control: lists of n regions."""
    images = np.asarray(images, np.float32)
    usable = [i for i in range(len(images)) if hot[i] is not None and control[i] is not None]
    if not usable:
        return None
    def explained(values):
        return _call(probabilities, values, batch_size).astype(np.float64)[:, int(target)]

    original = explained(images[usable])
    hot_drop = original - explained(np.stack([ablate(images[i:i + 1], hot[i])[0] for i in usable]))
    control_drop = original - explained(np.stack([ablate(images[i:i + 1], control[i])[0]
                                                  for i in usable]))
    return {"mean_drop": float(hot_drop.mean()), "control_drop": float(control_drop.mean()),
            "count": len(usable), "mean_probability": float(original.mean())}


def log_odds(logits, target, output_kind):
    """float64 [n]: the log-odds of the explained class, log p_c - log(1 - p_c), from the
    logits (they do not saturate where the probability reads 1.000 for a margin of 20 or
    of 300). softmax: l_c - logsumexp of the others; a sigmoid unit per class, and one
    sigmoid unit for two classes (the adapter's logits [-z, z]): l_c."""
    logits = np.asarray(logits, np.float64)
    target = int(target)
    if output_kind in ("sigmoid", "binary_sigmoid"):
        return logits[:, target]
    others = np.delete(logits, target, axis=1)
    peak = others.max(axis=1, keepdims=True)
    return logits[:, target] - (peak[:, 0] + np.log(np.exp(others - peak).sum(axis=1)))


def feature_drops(activations, head_outputs, images, target, channels, rest_mean, *,
                  output_kind="softmax", rest_log_odds=None, seed=0, draws=CONTROL_DRAWS,
                  batch_size=BATCH_SIZE):
    """Ablation in feature space: the group's `channels` at the target layer replaced by
    the rest of the class's mean activation map (rest_mean [h,w,K]), against as many
    random other channels (`draws` seeded sets), on the group's images [n,H,W,C].

    activations(images) -> [n,h,w,K]; head_outputs(activations) -> [n, 2 * classes]
    (probabilities, then logits). Returns {"mean_drop", "control_drop" (probability of
    the explained class, the control's the mean over the draws), "log_odds_drop",
    "control_log_odds_drop", "excess_log_odds" (the group's mean log-odds over the rest's,
    rest_log_odds: what the rest of the class scores on its own images), "channels",
    "control_channels", "count", "mean_probability"}.

    Replacing channels with the rest's mean makes the images look like the rest there,
    and the rest is mostly of the same class: where the model is sure of both, the
    probability stays at 1.000 even when every bit of the group's extra evidence is gone.
    The log-odds show it: removing the group's excess over the rest is the dependence."""
    channels = [int(c) for c in channels]
    rest_mean = np.asarray(rest_mean, np.float32)
    others = np.setdiff1d(np.arange(rest_mean.shape[-1]), channels)
    rng = np.random.default_rng(seed)
    controls = [sorted(int(c) for c in rng.choice(others, min(len(channels), len(others)),
                                                  replace=False)) for _ in range(draws)]
    values = _call(activations, np.asarray(images, np.float32), batch_size).astype(np.float32)
    target = int(target)

    def scores(features):
        outputs = _call(head_outputs, features, batch_size).astype(np.float64)
        classes = outputs.shape[1] // 2
        return outputs[:, target], log_odds(outputs[:, classes:], target, output_kind)

    probability, odds = scores(values)

    def drop(chosen):
        replaced = values.copy()
        replaced[..., chosen] = rest_mean[..., chosen]
        after, after_odds = scores(replaced)
        return float((probability - after).mean()), float((odds - after_odds).mean())

    hot = drop(channels)
    control = [drop(c) for c in controls] or [(0.0, 0.0)]
    excess = (float(odds.mean() - rest_log_odds) if rest_log_odds is not None
              else float("nan"))
    return {"mean_drop": hot[0], "control_drop": float(np.mean([c[0] for c in control])),
            "log_odds_drop": hot[1],
            "control_log_odds_drop": float(np.mean([c[1] for c in control])),
            "excess_log_odds": excess, "rest_log_odds": rest_log_odds,
            "channels": channels, "control_channels": controls,
            "count": len(values), "mean_probability": float(probability.mean())}


def features_depend(numbers, min_drop=MIN_DROP, min_ratio=MIN_RATIO,
                    min_excess_share=MIN_EXCESS_SHARE, min_excess_ratio=MIN_EXCESS_RATIO):
    """Feature-space dependence: the probability rule (depends), or, where the model is
    too sure for the probability to move, the log-odds rule: the group scores well above
    the rest of its class (excess_log_odds at least min_excess_ratio of the rest's
    |log-odds|: what the group has, the rest has not) and replacing its channels takes
    at least min_excess_share of that excess away, and min_ratio times what random
    channels take."""
    if depends(numbers, min_drop, min_ratio):
        return True
    excess, drop = numbers["excess_log_odds"], numbers["log_odds_drop"]
    rest = abs(numbers.get("rest_log_odds", 0.0))
    return bool(np.isfinite(excess) and excess > 0 and excess >= min_excess_ratio * rest
                and drop >= min_excess_share * excess
                and drop >= min_ratio * max(numbers["control_log_odds_drop"], 0.0))


def depends(numbers, min_drop=MIN_DROP, min_ratio=MIN_RATIO):
    """The rule of the module docstring on {"mean_drop", "control_drop"}."""
    return bool(numbers["mean_drop"] >= min_drop
                and numbers["mean_drop"] >= min_ratio * max(numbers["control_drop"], 0.0))
