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

MIN_DROP = 0.10
MIN_RATIO = 2.0
BATCH_SIZE = 64


def region_pixels(region, height, width):
    """[y0, y1, x0, x1] fractions of the side (half-open) -> pixel bounds, widened
    outwards to whole pixels (floor of the start, ceil of the end)."""
    y0, y1, x0, x1 = (float(v) for v in region)
    if not (0.0 <= y0 < y1 <= 1.0 and 0.0 <= x0 < x1 <= 1.0):
        raise ValueError(f"a region is [y0, y1, x0, x1] in fractions of the side with "
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
        raise ValueError(f"batch_size must be a positive number of images; received {batch_size!r}")
    target = int(target)
    drop_sum = np.zeros(len(regions))
    changed = np.zeros(len(regions))
    before_sum, count = 0.0, 0
    for batch in _batches(images, int(batch_size)):
        if batch.ndim != 4:
            raise ValueError(f"images must be [n, height, width, channels]; received shape "
                             f"{batch.shape}")
        original = np.asarray(probabilities(np.asarray(batch, np.float32)), np.float64)
        if original.ndim != 2 or not 0 <= target < original.shape[1]:
            raise ValueError(f"probabilities(images) must return [n, classes] with the "
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
        raise ValueError("no images to ablate: pass the cluster members' images, at least one")
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
        raise ValueError(f"cluster {cluster['id']} has no hot region (an empty mean heatmap): "
                         "nothing to ablate")
    control = control_region(cluster["mean_heatmap"], region)
    hot, controlled = ablation_drops(probabilities, images, cluster["class"], [region, control],
                                     batch_size=batch_size)
    control_drop = max(controlled["mean_drop"], 0.0) if controlled else 0.0
    depends = hot["mean_drop"] >= min_drop and hot["mean_drop"] >= min_ratio * control_drop
    rule = (f"depends when the hot region's mean drop >= {min_drop} and >= {min_ratio} x the "
            f"control's")
    return {"hot": hot, "control": controlled, "depends": bool(depends), "rule": rule}


def apply_verification(cluster, verification):
    """Attach `verification` to the cluster dict; downgrade its flag when the model does
    not depend on its region. Returns the cluster dict."""
    cluster["verification"] = verification
    cluster["downgraded"] = False
    hot, control = verification["hot"], verification["control"]
    control_text = (f"{control['mean_drop']:.2f} for a same-size control region"
                    if control else "no control region fits")
    summary = (f"hiding the region lowers the probability of class '{cluster.get('class_name', cluster['class'])}' "
               f"by {hot['mean_drop']:.2f} on average and changes {hot['changed_share']:.0%} "
               f"of predictions ({control_text})")
    if verification["depends"]:
        cluster["reasons"] = cluster["reasons"] + [f"verified: {summary}"]
    elif cluster["flagged"]:
        cluster["flagged"] = False
        cluster["downgraded"] = True
        cluster["reasons"] = cluster["reasons"] + [
            f"downgraded: the model does not depend on this region: {summary}"]
    return cluster
