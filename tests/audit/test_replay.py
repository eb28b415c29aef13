"""The run's model loaded again from its manifest at the precision the run's maps used."""

import keras
import pytest

from sightline.audit.replay import load_run_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3, name="features"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3),
                              keras.layers.Softmax()])
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    model.save(path)
    return path


@pytest.mark.parametrize("choice", ["float32", "mixed_bfloat16"])
def test_an_auto_run_loads_at_the_precision_it_chose(saved_model, choice):
    manifest = {"model": saved_model, "run": {"layer": "features", "precision": "auto"},
                "precision_auto": {"choice": choice, "reason": "measured"}}
    adapter = load_run_model(manifest)
    assert adapter.precision == choice
    compute = "bfloat16" if choice == "mixed_bfloat16" else "float32"
    assert adapter.model.get_layer("features").compute_dtype == compute


def test_a_fixed_precision_run_loads_at_it(saved_model):
    manifest = {"model": saved_model, "run": {"layer": "features", "precision": "mixed_bfloat16"}}
    assert load_run_model(manifest).precision == "mixed_bfloat16"


def test_an_auto_run_without_its_choice_is_refused_with_one_clear_line(saved_model):
    manifest = {"model": saved_model, "run": {"layer": "features", "precision": "auto"}}
    with pytest.raises(ValueError, match="records no choice"):
        load_run_model(manifest)
