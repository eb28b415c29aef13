"""The demo dataset with a planted shortcut: the tank detector that learned the weather.

Every scene is 64x64 RGB: a sky band on top, a textured ground below, and on the ground
one small, dull object of one of two classes, a cross or a disc, at a random place. The
sky is either cloudy (grey with white blobs) or sunny (blue with a yellow sun). With
`agreement=0.95` the sky matches the class (cloudy for crosses, sunny for discs) in 95%
of the scenes, so a classifier can score 95% by looking only at the weather; with 0.5
the sky says nothing about the class. Each scene comes with its object mask.

The second story: with `tag_share` > 0, that share of the crosses carries a small magenta
ring in the top-left corner (a photographer's copyright mark, as on part of PASCAL
VOC's horses) and their cross is faint; as many discs are faint too, without the tag, so
on a faint scene the tag is the only cue. Who has the tag is saved with the data
(`tagged`).

    from sightline.demo.scenes import make_scenes, write_split
    scenes = make_scenes(400, seed=0, agreement=0.95)     # arrays, nothing written
    write_split("data/held-out", scenes)                  # PNGs + masks.h5

On disk a split is a folder `sightline explain --data` reads directly (class
subfolders give the labels) plus the masks `sightline audit --masks` reads:

    data/held-out/images/cross/00000.png, disc/00001.png, ...
    data/held-out/masks.h5   /keys  [N] utf-8, the sample keys ("cross/00000.png")
                             /masks [N,64,64] uint8, 1 on the object
                             /sky   [N] uint8, 1 = cloudy, 0 = sunny
                             /labels [N] int32; attrs: class_names, agreement, seed
                             /tagged [N] uint8, 1 = carries the tag
                             /faint [N] uint8, 1 = faint object; attrs:
                             tag_share, tag_class

Pure NumPy; deterministic: the same (n, seed, agreement) gives the same bytes.
"""

import os

import numpy as np

from sightline.errors import UsageError

IMAGE_SIZE = 64
CLASS_NAMES = ("cross", "disc")  # sorted, so folder labels are 0 = cross, 1 = disc
SKY_ROWS = 20  # rows 0..19 are sky
OBJECT_RADIUS = 5.5  # disc radius; the cross has the same area
OBJECT_SHADE = (0.11, 0.13, 0.07)  # dark olive, well below the ground
CROSS_ARM = 0.6  # arm width of the cross, in disc radii
# The second story (PASCAL VOC's horses with a photographer's copyright mark): part of
# one class carries a small mark in a fixed corner.
TAG_CLASS = 0  # cross
TAG_COLOUR = (1.0, 0.1, 0.85)  # magenta: no sky, ground or object comes near it
TAG_CENTRE = (4.0, 4.0)  # pixels of a 64x64 scene: the top-left corner, on the sky, inside
# one cell of the 8x8 last layer, so every tagged map peaks at the same cell
TAG_RADIUS = 3.3
TAG_STREAM = 7  # the tag's own random stream: seeding it apart keeps untagged scenes as they were
FAINT_OBJECT = 0.05  # a faint object keeps this much of its contrast to the ground
MASKS_FILE = "masks.h5"
IMAGES_FOLDER = "images"


def _smooth_noise(rng, n, grid, size, channels):
    """Low-frequency noise: a random [grid, grid] lattice, bilinearly upsampled."""
    coarse = rng.uniform(-1.0, 1.0, (n, grid + 1, grid + 1, channels))
    position = (np.arange(size) + 0.5) / size * grid
    low = np.floor(position).astype(int)
    frac = position - low
    rows = coarse[:, low] * (1 - frac)[None, :, None, None] + coarse[:, low + 1] * frac[None, :, None, None]
    return (rows[:, :, low] * (1 - frac)[None, None, :, None]
            + rows[:, :, low + 1] * frac[None, None, :, None])


def make_scenes(n, seed=0, agreement=0.95, size=IMAGE_SIZE, tag_share=0.0):
    """n scenes as arrays.

    Labels alternate 0, 1, 0, ... (every even prefix is balanced). For a fraction
    `agreement` of each class (rounded, positions shuffled) the sky is the class's own
    sky; for the rest it is the other one. A fraction `tag_share` of TAG_CLASS (rounded,
    chosen by a random stream of its own, so the other scenes are the same bytes whatever
    the share) carries the tag (see add_tag) over a faint object, and as many scenes of
    the other class have a faint object without a tag.
    Returns a dict: images uint8 [n,size,size,3], masks bool [n,size,size],
    labels int32 [n], cloudy bool [n], tagged bool [n], faint bool [n], keys (tuple of
    "class/NNNNN.png"), plus seed, agreement, tag_share.
    """
    if not 0.0 <= agreement <= 1.0:
        raise UsageError(f"agreement must be in [0, 1]; got {agreement!r}")
    if not 0.0 <= tag_share <= 1.0:
        raise UsageError(f"tag_share must be a fraction in [0, 1] of the {CLASS_NAMES[TAG_CLASS]} "
                         f"scenes; got {tag_share!r}")
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int32)
    agrees = np.zeros(n, bool)
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        chosen = rng.permutation(members)[:int(round(agreement * len(members)))]
        agrees[chosen] = True
    cloudy = np.where(agrees, labels == 0, labels == 1)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    sky_rows = SKY_ROWS * size // IMAGE_SIZE

    # Ground: olive-brown with coarse blotches and pixel noise.
    ground = (np.array([0.42, 0.40, 0.28])
              + 0.08 * _smooth_noise(rng, n, 6, size, 1)
              + 0.05 * _smooth_noise(rng, n, 16, size, 3)
              + rng.normal(0.0, 0.03, (n, size, size, 3)))

    # Sky: sunny = blue gradient with a sun; cloudy = grey with white blobs.
    sky = np.empty((n, size, size, 3))
    height = yy[None, :, :, None] / size
    sunny_sky = np.array([0.30, 0.55, 0.92]) + 0.4 * height * np.array([0.5, 0.4, 0.05])
    sun_x = rng.uniform(6, size - 6, n)
    sun_y = rng.uniform(4, sky_rows - 5, n)
    sun_r = rng.uniform(3.0, 4.5, n)
    sun = ((yy[None] - sun_y[:, None, None]) ** 2 + (xx[None] - sun_x[:, None, None]) ** 2
           <= (sun_r ** 2)[:, None, None])
    sunny = np.where(sun[..., None], np.array([1.0, 0.93, 0.35]), sunny_sky)
    clouds = np.clip(_smooth_noise(rng, n, 5, size, 1), -1, 1)
    grey = np.array([0.58, 0.60, 0.64]) + 0.30 * np.clip(clouds, 0, 1)
    sky[:] = np.where(cloudy[:, None, None, None], grey, sunny)
    sky += rng.normal(0.0, 0.03, sky.shape)

    scene = np.where((yy < sky_rows)[None, :, :, None], sky, ground)

    # The object: small and dull (a camouflaged tank), fully on the ground.
    radius = OBJECT_RADIUS * size / IMAGE_SIZE * rng.uniform(0.9, 1.15, n)
    # The cross reaches out to 1.46 radii (see below): keep the whole object in view.
    margin = 1.5 * radius + 1
    cy = rng.uniform(sky_rows + margin, size - margin)
    cx = rng.uniform(margin, size - margin)
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    r = radius[:, None, None]
    disc = dy ** 2 + dx ** 2 <= r ** 2
    # A plus sign of arm width w and span 2a has area 4aw - w^2; w = CROSS_ARM r, a chosen
    # so that it equals the disc's pi r^2.
    w = CROSS_ARM * r
    a = (np.pi * r ** 2 + w ** 2) / (4 * w)
    cross = ((np.abs(dy) <= w / 2) & (np.abs(dx) <= a)) | ((np.abs(dx) <= w / 2) & (np.abs(dy) <= a))
    masks = np.where(labels[:, None, None] == 0, cross, disc)
    shade = np.array(OBJECT_SHADE) + rng.uniform(-0.04, 0.04, (n, 1, 1, 1))
    background = scene
    scene = np.where(masks[..., None], shade + rng.normal(0.0, 0.03, scene.shape), scene)

    tagged, faint = np.zeros(n, bool), np.zeros(n, bool)
    tag_rng = np.random.default_rng([seed, TAG_STREAM])
    for label in (0, 1):
        members = tag_rng.permutation(np.flatnonzero(labels == label))
        faint[members[:int(round(tag_share * len(members)))]] = True
    tagged = faint & (labels == TAG_CLASS)
    # The tagged scenes' object barely stands out from the ground, and as many scenes of
    # the other class have a faint object too, so neither the object nor its absence
    # tells them apart: only the tag does, and a model that fits them uses it.
    scene[faint] = background[faint] + FAINT_OBJECT * (scene[faint] - background[faint])
    scene[tagged] = add_tag(scene[tagged])

    images = np.round(np.clip(scene, 0.0, 1.0) * 255).astype(np.uint8)
    keys = tuple(f"{CLASS_NAMES[label]}/{i:05d}.png" for i, label in enumerate(labels))
    return {"images": images, "masks": masks, "labels": labels, "cloudy": cloudy,
            "tagged": tagged, "faint": faint, "keys": keys, "seed": seed, "agreement": agreement,
            "tag_share": tag_share}


def tag_pixels(size=IMAGE_SIZE):
    """bool [size,size]: where the tag is drawn, a small ring (a copyright-like mark) in
    the top-left corner, on the sky."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    radius = np.hypot(yy - TAG_CENTRE[0] * size / IMAGE_SIZE, xx - TAG_CENTRE[1] * size / IMAGE_SIZE)
    outer = TAG_RADIUS * size / IMAGE_SIZE
    return (radius <= outer) & (radius >= outer - 1.6)


def add_tag(scenes):
    """scenes float [n,H,W,3] in [0,1] -> a copy with the tag drawn in TAG_COLOUR."""
    scenes = np.array(scenes, np.float64)
    scenes[:, tag_pixels(scenes.shape[1])] = TAG_COLOUR
    return scenes


def write_split(folder, scenes):
    """Write scenes as PNGs in class subfolders (`folder/images/`) and their masks
    (`folder/masks.h5`). Returns (images folder, masks file)."""
    import h5py
    import tensorflow as tf
    image_root = os.path.join(folder, IMAGES_FOLDER)
    for name in CLASS_NAMES:
        os.makedirs(os.path.join(image_root, name), exist_ok=True)
    for key, image in zip(scenes["keys"], scenes["images"]):
        tf.io.write_file(os.path.join(image_root, key), tf.io.encode_png(image))
    masks_path = os.path.join(folder, MASKS_FILE)
    temporary = masks_path + ".tmp"
    with h5py.File(temporary, "w") as handle:
        handle.create_dataset("keys", data=np.array([k.encode() for k in scenes["keys"]]))
        handle.create_dataset("masks", data=scenes["masks"].astype(np.uint8),
                              compression="gzip",
                              chunks=(max(1, min(64, len(scenes["keys"]))), *scenes["masks"].shape[1:]))
        handle["sky"] = scenes["cloudy"].astype(np.uint8)
        handle["labels"] = scenes["labels"]
        handle["tagged"] = scenes["tagged"].astype(np.uint8)
        handle["faint"] = scenes["faint"].astype(np.uint8)
        handle.attrs["tag_share"] = scenes["tag_share"]
        handle.attrs["tag_class"] = TAG_CLASS
        handle.attrs["class_names"] = list(CLASS_NAMES)
        handle.attrs["agreement"] = scenes["agreement"]
        handle.attrs["seed"] = scenes["seed"]
        handle.attrs["sky_rows"] = SKY_ROWS
    os.replace(temporary, masks_path)
    return image_root, masks_path


# The demo's splits: (name, seed offset, agreement of sky and class).
SPLITS = (("train", 0, 0.95), ("train-clean", 1, 0.5), ("held-out", 2, 0.5),
          ("train-tagged", 3, 0.5), ("held-out-tagged", 4, 0.5))
# The share of the TAG_CLASS scenes that carry the tag, per split (0 where absent).
TAG_SHARES = {"train-tagged": 0.25, "held-out-tagged": 0.25}
HELD_OUT_SPLITS = ("held-out", "held-out-tagged")


def make_demo_data(folder, *, seed=0, num_train=1600, num_held_out=400, write=True):
    """The demo's splits: `train` (sky agrees with the class 95% of the time),
    `train-clean` (50%: no shortcut) and `held-out` (50%); `train-tagged` and
    `held-out-tagged` (sky 50%, a quarter of the crosses tagged). Returns name -> scenes,
    and writes each split under `folder/<name>/` when `write`."""
    splits = {}
    for name, offset, agreement in SPLITS:
        count = num_held_out if name in HELD_OUT_SPLITS else num_train
        scenes = make_scenes(count, seed=seed * 10 + offset, agreement=agreement,
                             tag_share=TAG_SHARES.get(name, 0.0))
        if write:
            write_split(os.path.join(folder, name), scenes)
        splits[name] = scenes
    return splits
