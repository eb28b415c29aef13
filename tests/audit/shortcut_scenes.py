"""Generated scenes with a shortcut of a known kind on part of one class, and the small
models that learn it: the cases the mask-free audit must find, and their clean twins.

Every scene is a small RGB image: a textured neutral ground and one object whose shape is
its class (a disc, a square, a cross, ...), anywhere. A share of the cue class carries a
cue over a faint object, and as many scenes of every other class are faint without it, so
on a faint scene only the cue tells the class: a model that fits the training split uses
the cue. Kinds of cue:

- "corner": a small magenta ring in the top-left corner (a photographer's mark);
- "mark": the same ring at a random place (a sticker, a mark that moves);
- "tint": the whole ground tinted blue (the tank story's sky: evidence with no place).

"none" gives the same scenes with no cue and no faint objects: the clean twin's training
data. `cued` says who carries the cue. Pure NumPy; the same arguments give the same bytes.

The cases (CASES), their models and the explain + audit round trip that scores them are
shared by tests/audit/test_discovery.py and benchmarks/discovery_scores.py.
"""

import os

import numpy as np

SIZE = 32
SHAPES = ("disc", "square", "cross", "ring", "hbar", "vbar", "triangle", "diamond", "x",
          "corners")
KINDS = ("none", "corner", "mark", "tint")
CUE_COLOUR = np.array([1.0, 0.1, 0.85])
TINT = np.array([-0.25, -0.05, 0.35])
FAINT = 0.06


def _shape_mask(shape, dy, dx, r):
    if shape == "disc":
        return dy ** 2 + dx ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)
    if shape == "cross":
        w = 0.6 * r
        return ((np.abs(dy) <= w / 2) & (np.abs(dx) <= 1.3 * r)) | (
            (np.abs(dx) <= w / 2) & (np.abs(dy) <= 1.3 * r))
    if shape == "ring":
        distance = np.hypot(dy, dx)
        return (distance <= r) & (distance >= 0.55 * r)
    if shape == "hbar":
        return (np.abs(dy) <= 0.35 * r) & (np.abs(dx) <= 1.3 * r)
    if shape == "vbar":
        return (np.abs(dx) <= 0.35 * r) & (np.abs(dy) <= 1.3 * r)
    if shape == "triangle":
        return (dy <= 0.8 * r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= 1.2 * r
    if shape == "x":
        return (np.abs(np.abs(dy) - np.abs(dx)) <= 0.45 * r) & (np.abs(dy) <= r)
    if shape == "corners":
        return ((np.abs(dy) >= 0.45 * r) & (np.abs(dx) >= 0.45 * r)
                & (np.abs(dy) <= r) & (np.abs(dx) <= r))
    raise ValueError(shape)


def _ring(yy, xx, cy, cx, radius=3.0):
    distance = np.hypot(yy - cy, xx - cx)
    return (distance <= radius) & (distance >= radius - 1.4)


def make_scenes(n, kind="none", *, share=0.4, num_classes=2, cue_class=0, seed=0,
                size=SIZE, draw_cue=True):
    """n scenes: dict of images float32 [n,size,size,3] in [0,1], labels int32 [n]
    (0, 1, ..., num_classes-1 in turn), cued bool [n], faint bool [n], masks bool [n,...].
    draw_cue=False: the same scenes, byte for byte, with the cue left out (what the
    model scores on the cued scenes without their cue)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    rng = np.random.default_rng([seed, KINDS.index(kind), num_classes])
    labels = (np.arange(n) % num_classes).astype(np.int32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    coarse = rng.uniform(-1, 1, (n, 5, 5, 1))
    blotches = np.repeat(np.repeat(coarse, int(np.ceil(size / 5)), 1), int(np.ceil(size / 5)), 2)
    ground = (np.array([0.45, 0.43, 0.36]) + 0.06 * blotches[:, :size, :size]
              + rng.normal(0, 0.03, (n, size, size, 3)))
    radius = size / 7 * rng.uniform(0.9, 1.15, n)
    margin = 1.4 * radius + 1
    cy, cx = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        masks[i] = _shape_mask(SHAPES[labels[i]], yy - cy[i], xx - cx[i], radius[i])
    shade = np.array([0.12, 0.13, 0.10]) + rng.uniform(-0.04, 0.04, (n, 1, 1, 1))
    cued, faint = np.zeros(n, bool), np.zeros(n, bool)
    if kind != "none":
        for label in range(num_classes):
            members = rng.permutation(np.flatnonzero(labels == label))
            faint[members[:int(round(share * len(members)))]] = True
        cued = faint & (labels == cue_class)
    if kind == "tint" and draw_cue:
        ground[cued] += TINT
    contrast = np.where(faint, FAINT, 1.0)[:, None, None, None]
    objects = ground + contrast * (shade - ground)
    scene = np.where(masks[..., None], objects, ground)
    for i in np.flatnonzero(cued):
        if kind == "corner":
            where = _ring(yy, xx, 4.0, 4.0)
        elif kind == "mark":
            # Anywhere but on the object.
            while True:
                my, mx = rng.uniform(4, size - 4, 2)
                if np.hypot(my - cy[i], mx - cx[i]) > 1.6 * radius[i] + 3:
                    break
            where = _ring(yy, xx, my, mx)
        else:
            continue
        if draw_cue:
            scene[i][where] = CUE_COLOUR
    return {"images": np.clip(scene, 0, 1).astype(np.float32), "labels": labels,
            "cued": cued, "faint": faint, "masks": masks}


def build_scene_model(num_classes, seed=0, size=SIZE):
    """conv/pool blocks, a last convolution (8x8 at 32 pixels), GAP, dense, softmax."""
    import keras
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((size, size, 3)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="last_conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(num_classes, activation="softmax", name="classifier"),
    ])


def train(scenes, *, seed=0, epochs=8):
    """A model fitted to the scenes (Adam, a fixed number of epochs: repeatable)."""
    import keras
    model = build_scene_model(int(scenes["labels"].max()) + 1, seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(scenes["images"], scenes["labels"], batch_size=32, epochs=epochs, verbose=0,
              shuffle=True)
    return model


def accuracy(model, scenes, rows=None):
    rows = slice(None) if rows is None else rows
    predicted = model.predict(scenes["images"][rows], verbose=0, batch_size=256).argmax(axis=1)
    return float((predicted == scenes["labels"][rows]).mean())


# name: (kind, share in training, share in the audited data, classes, training scenes,
# epochs). "ten": the many-class case, a corner tag on 40% of one of ten classes.
CASES = {
    "tint": ("tint", 0.4, 0.4, 2, 1600, 8),
    "mark": ("mark", 0.4, 0.4, 2, 1600, 8),
    "rare": ("corner", 0.2, 0.03, 2, 1600, 8),
    "ten": ("corner", 0.4, 0.4, 10, 3000, 8),
}
AUDITED = 1000
MIN_PRECISION, MIN_RECALL = 0.9, 0.8


def trained(name, folder, seed=0):
    """The case's model for a seed, and the path it is saved at in `folder`."""
    kind, train_share, _, classes, count, epochs = CASES[name]
    model = train(make_scenes(count, kind, share=train_share, num_classes=classes, seed=seed),
                  seed=seed, epochs=epochs)
    path = os.path.join(str(folder), f"{name}-{seed}.keras")
    model.save(path)
    return model, path


def audited_scenes(name, seed=0, draw_cue=True):
    """The case's audited scenes: other scenes than the model's (seed + 100)."""
    kind, _, share, classes, _, _ = CASES[name]
    return make_scenes(AUDITED, kind, share=share, num_classes=classes, seed=seed + 100,
                       draw_cue=draw_cue)


def explain_and_audit(model_path, data, out, method="gradcam", **job):
    """`sightline explain` of the scenes into `out`, then the audit with --verify. Job
    options as keywords (batch_size=16 -> --batch-size 16)."""
    from sightline.audit.audit import run_audit
    from sightline.audit.shortcuts import ShortcutOptions
    from sightline.cli.main import main
    out = str(out)
    np.save(out + ".npy", data["images"])
    extra = [item for key, value in job.items()
             for item in (f"--{key.replace('_', '-')}", str(value))]
    code = main(["explain", "--model", str(model_path), "--data", out + ".npy", "--out", out,
                 "--methods", method, "--quiet", *extra])
    if code != 0:
        raise RuntimeError(f"sightline explain exited with {code}")
    return run_audit(out, method=method, shortcuts=ShortcutOptions(verify=True))


def flagged_members(audit):
    """{flagged group id: sample indices of its members} from clusters.h5."""
    from sightline.audit.virelay import read_clusters
    table = read_clusters(audit["clusters_file"])
    columns = {"where": table["cluster"], "what": table.get("concept")}
    return {c["id"]: table["index"][columns[c["view"]] == c["id"]]
            for c in audit["clusters"] if c["flagged"]}


def precision_recall(audit, cued, cue_class=0):
    """(precision, recall, {flagged id: members}): the members of the cue class's
    flagged groups against the generator's cued scenes."""
    groups = flagged_members(audit)
    classes = {c["id"]: c["class"] for c in audit["clusters"]}
    found = np.zeros(len(cued), bool)
    for group, members in groups.items():
        if classes[group] == cue_class:
            found[members] = True
    hits = (found & cued).sum()
    return hits / max(found.sum(), 1), hits / cued.sum(), groups
