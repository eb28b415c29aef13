"""--resize stretch|pad|crop: one resizing rule (sightline.data.decode.resize_images) for
the folder pipeline, the compiled array path and the audit's replay, checked against
hand-placed geometry and against PIL's resampling with the crop or letterbox written out.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sightline.cli.main import main
from sightline.data.decode import resize_images

MODES = ("stretch", "pad", "crop")


def bar_image(tall=False):
    """8x32 (or 32x8) black with a bright 4-pixel bar across it at 14..17."""
    image = np.zeros((8, 32), np.float32)
    image[:, 14:18] = 255.0
    return image.T.copy() if tall else image


# Where each mode puts the bar of an 8x32 image in a 16x16 input, worked out by hand:
# stretch halves the columns (bar at 7..8) over every row; pad halves both sides (4x16)
# and centres the rows at 6..9 on black; crop keeps the middle 8 columns (12..19: the
# bar at 2..5 of them) and doubles them (bar at 4..11) over every row.
BRIGHT = {"stretch": (slice(0, 16), slice(7, 9)),
          "pad": (slice(6, 10), slice(7, 9)),
          "crop": (slice(0, 16), slice(4, 12))}


@pytest.mark.parametrize("tall", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_puts_the_bar_where_its_geometry_says(mode, tall):
    out = resize_images(bar_image(tall)[..., None], 16, 16, mode).numpy()[..., 0]
    assert out.shape == (16, 16)
    expected = np.zeros((16, 16), bool)
    expected[BRIGHT[mode]] = True
    if tall:
        expected = expected.T
    np.testing.assert_array_equal(out > 127.5, expected)
    if mode == "pad":  # the letterbox is PAD_VALUE, black, exactly
        rows = np.ones(16, bool)
        rows[6:10] = False
        assert np.all((out.T if tall else out)[rows] == 0.0)


def pil_reference(image, size, mode):
    """float64 [H,W]: PIL's bilinear resampling (antialiased when shrinking) of the
    stretched, centre-cropped or letterboxed image."""
    height, width = size
    h, w = image.shape
    picture = Image.fromarray(image.astype(np.float32), mode="F")

    def resized(p, new_w, new_h):
        return np.asarray(p.resize((new_w, new_h), Image.BILINEAR), np.float64)

    if mode == "stretch":
        return resized(picture, width, height)
    if mode == "crop":
        if w / h > width / height:
            keep = round(h * width / height)
            box = ((w - keep) // 2, 0, (w - keep) // 2 + keep, h)
        else:
            keep = round(w * height / width)
            box = (0, (h - keep) // 2, w, (h - keep) // 2 + keep)
        return resized(picture.crop(box), width, height)
    scale = min(height / h, width / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.zeros(size)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized(picture, new_w, new_h)
    return out


@pytest.mark.parametrize("shape", [(30, 17), (9, 31), (12, 8), (16, 16)])
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_matches_pil_on_odd_sizes(rng, mode, shape):
    image = rng.uniform(0, 255, shape).astype(np.float32)
    out = resize_images(image[..., None], 16, 16, mode).numpy()[..., 0]
    np.testing.assert_allclose(out, pil_reference(image, (16, 16), mode), atol=0.02)
    batch = resize_images(np.stack([image, image[::-1]])[..., None], 16, 16, mode).numpy()
    np.testing.assert_allclose(batch[1, ..., 0],
                               pil_reference(image[::-1], (16, 16), mode), atol=0.02)


# ----------------------------------------------------------------- the job and the replay


def probe_model(path):
    """16x16x1 -> a 1x1 convolution of weight 1 (no bias, ReLU) -> GAP -> dense: class 0's
    CAM is the input itself, so each stored map is the resized image over its maximum."""
    import keras
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(1, 1, use_bias=False, activation="relu", name="identity",
                            kernel_initializer="ones")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, name="logits", kernel_initializer=keras.initializers.Constant(
        [[1.0, -1.0]]), bias_initializer="zeros")(x)
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("resize")
    rng = np.random.default_rng(5)
    images = rng.integers(1, 256, (6, 8, 32)).astype(np.uint8)  # wide, grey
    images[:, :, 14:18] = 255
    np.save(root / "wide.npy", images[..., None])
    os.makedirs(root / "folder")
    for i, image in enumerate(images):
        tf.io.write_file(str(root / "folder" / f"{i:02d}.png"), tf.io.encode_png(image[..., None]))
    return {"root": root, "model": probe_model(str(root / "probe.keras")), "images": images}


def explain_job(workspace, data, out, *extra):
    root = workspace["root"]
    return main(["explain", "--model", workspace["model"], "--data", str(root / data),
                 "--out", str(root / out), "--methods", "cam", "--target", "0", "--quiet",
                 "--devices", "1", "--batch-size", "4", *extra])


def stored_maps(out):
    from sightline import open_results
    with open_results(out) as results:
        order = np.argsort(results.sample_indices)
        return results.read("heatmaps/cam").astype(np.float64)[order], results.manifest


@pytest.mark.parametrize("data", ["wide.npy", "folder"])
@pytest.mark.parametrize("mode", MODES)
def test_the_job_resizes_arrays_and_files_by_the_chosen_mode(workspace, data, mode):
    out = workspace["root"] / f"out-{mode}-{data}"
    extra = () if mode == "stretch" else ("--resize", mode)  # stretch is the default
    assert explain_job(workspace, data, out.name, *extra) == 0
    maps, manifest = stored_maps(str(out))
    assert manifest["run"]["resize"] == mode
    for stored, image in zip(maps, workspace["images"]):
        expected = pil_reference(image.astype(np.float32), (16, 16), mode)
        # float16 storage of a map in [0, 1]: 2^-11 relative.
        np.testing.assert_allclose(stored, expected / expected.max(), atol=2e-3)

    # The audit's replay reads the run's images again by the mode its manifest records.
    from sightline.audit.replay import open_run_source, read_images, run_resize
    source = open_run_source(manifest)
    replayed = np.concatenate(list(read_images(
        source, np.arange(6), image_shape=manifest["run"]["image_shape"], preprocess="none",
        resize=run_resize(manifest))))
    for again, image in zip(replayed[..., 0], workspace["images"]):
        # PNG files hold the same 8-bit pixels as the array.
        np.testing.assert_allclose(again, pil_reference(image.astype(np.float32), (16, 16), mode),
                                   atol=0.05)


def test_the_resize_mode_comes_from_toml_and_help_says_stretch_is_the_default(workspace,
                                                                              capsys):
    root = workspace["root"]
    (root / "job.toml").write_text('resize = "crop"\n')
    assert explain_job(workspace, "wide.npy", "out-toml", "--config", str(root / "job.toml")) == 0
    with open(root / "out-toml" / "manifest.json") as handle:
        assert json.load(handle)["run"]["resize"] == "crop"
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--resize" in text and "non-square images are stretched" in text
    assert "pad" in text and "crop" in text
