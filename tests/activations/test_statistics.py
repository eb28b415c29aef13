"""sightline.activations.statistics: per-layer statistics against NumPy, on a model with channels built
to be dead, always on, saturated, or ordinary; files, report and command line."""

import json
import os

import keras
import numpy as np
import pytest

from sightline.activations.statistics import activation_statistics, read_activations
from sightline.report.activations import write_activations_output
from sightline.cli.main import main


def build(path):
    """conv 'relu_layer' (4 channels: 0 dead, 1 always on, 2-3 ordinary) then conv
    'sigmoid_layer' (3 channels: 0 saturated at 1, 1 at 0, 2 ordinary), GAP, dense."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 3))
    relu = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="relu_layer")
    sig = keras.layers.Conv2D(3, 1, activation="sigmoid", name="sigmoid_layer")
    x = sig(relu(inputs))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    kernel, bias = relu.get_weights()
    kernel[..., 0], bias[0] = 0.0, -1.0  # dead
    kernel[..., 1], bias[1] = 0.0, 2.0  # always on (never uses the ReLU's zero)
    relu.set_weights([kernel, bias])
    kernel, bias = sig.get_weights()
    kernel[..., 0], bias[0] = 0.0, 20.0  # sigmoid at its ceiling everywhere
    kernel[..., 1], bias[1] = 0.0, -20.0  # at its floor: not saturated at the top
    sig.set_weights([kernel, bias])
    model.save(path)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("activations")
    model = build(str(root / "model.keras"))
    images = np.random.default_rng(0).uniform(-1, 1, (21, 12, 12, 3)).astype(np.float32)
    np.save(root / "images.npy", images)
    return {"root": root, "model": model, "images": images}


def test_statistics_match_numpy(setup):
    root = setup["root"]
    result = activation_statistics(str(root / "model.keras"), str(root / "images.npy"),
                                   batch_size=4)
    probe = keras.Model(setup["model"].inputs, [setup["model"].get_layer(n).output
                                                for n in ("relu_layer", "sigmoid_layer")])
    expected = [np.asarray(v, np.float64) for v in probe.predict(setup["images"], verbose=0)]
    assert result["images"] == 21
    relu, sig = result["layers"]
    assert relu["layer"] == "relu_layer" and relu["activation"] == "relu"
    values = expected[0].reshape(-1, 4)
    assert relu["positions"] == 21 * 12 * 12
    np.testing.assert_allclose(relu["channel_mean"], values.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(relu["channel_active_fraction"], (values > 0).mean(axis=0),
                               atol=1e-6)
    np.testing.assert_allclose(relu["channel_max"], values.max(axis=0), atol=1e-5)
    assert relu["mean_activation"] == pytest.approx(values.mean(), abs=1e-6)
    assert relu["dead"] == [0] and relu["saturated"] == [1]
    assert relu["dead_fraction"] == 0.25
    assert sig["activation"] == "sigmoid" and sig["saturated"] == [0] and sig["dead"] == []
    np.testing.assert_allclose(sig["channel_mean"], expected[1].reshape(-1, 3).mean(axis=0),
                               atol=1e-5)


def test_files_report_and_reading_back(setup):
    root = setup["root"]
    out = str(root / "files")
    result = activation_statistics(str(root / "model.keras"), str(root / "images.npy"),
                                   batch_size=8, shown_images=2)
    written = write_activations_output(out, result)
    saved = read_activations(out)
    assert saved["files"] == written["files"]
    assert set(saved["files"]) == {"stats", "featuremaps/relu_layer", "featuremaps/sigmoid_layer"}
    for path in saved["files"].values():
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.exists(os.path.join(out, "report.html"))
    assert "samples" not in json.load(open(os.path.join(out, "activations.json")))


def test_chosen_layers_limit_and_errors(setup):
    root = setup["root"]
    result = activation_statistics(str(root / "model.keras"), str(root / "images.npy"),
                                   layers=["sigmoid_layer"], limit=5, batch_size=2)
    assert [layer["layer"] for layer in result["layers"]] == ["sigmoid_layer"]
    assert result["images"] == 5
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        activation_statistics(str(root / "model.keras"), str(root / "images.npy"), layers=["nope"])
    with pytest.raises(ValueError, match="do not give feature maps"):
        activation_statistics(str(root / "model.keras"), str(root / "images.npy"),
                              layers=[setup["model"].layers[-1].name])


def test_cli(setup, capsys):
    root = setup["root"]
    code = main(["activations", "--model", str(root / "model.keras"), "--data",
                 str(root / "images.npy"), "--out", str(root / "cli"), "--batch-size", "8"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "relu_layer (relu, 4 channels): 1 dead, 1 saturated" in printed
    assert main(["activations", "--model", str(root / "absent.keras"), "--data",
                 str(root / "images.npy")]) == 2
