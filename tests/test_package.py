"""The installed shape: one import package, `sightline`, and nothing generic beside it.

Run in a fresh interpreter started outside the checkout, so that the checkout's own
folders (engine/, kernels/) are not on sys.path the way pytest's rootdir puts them.
"""

import json
import os
import subprocess
import sys

import pytest

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import importlib.util, json, sys
found = {name: importlib.util.find_spec(name) is not None
         for name in ("engine", "kernels", "sightline", "sightline.kernels")}
import sightline, sightline.config, sightline.kernels.methods
found["dir"] = dir(sightline)
found["tensorflow_loaded_by_import"] = "tensorflow" in sys.modules
from sightline import explain, open_results, __version__
from importlib.metadata import version
found["version"] = __version__
found["distribution_version"] = version("sightline-explain")
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside-the-checkout")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=outside, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_only_sightline_is_importable(probe):
    assert probe["sightline"] and probe["sightline.kernels"]
    assert not probe["engine"], "a top-level package named engine is installed"
    assert not probe["kernels"], "a top-level package named kernels is installed"


def test_the_version_lives_in_one_place(probe):
    assert probe["version"] == probe["distribution_version"]


def test_importing_the_package_and_its_table_loads_no_tensorflow(probe):
    # explain and open_results load lazily, so `sightline --help` and the option checks
    # answer before TensorFlow loads.
    assert probe["tensorflow_loaded_by_import"] is False


def test_dir_lists_the_public_api_for_tab_completion(probe):
    # dir() answered before TensorFlow loaded (the probe checks that after it).
    public = {"explain", "open_results", "run_audit", "run_job", "overlay", "show",
              "make_config", "load_model", "__version__", "kernels", "audit"}
    assert public <= set(probe["dir"]), sorted(public - set(probe["dir"]))
    assert "importlib" not in probe["dir"]


def test_the_checkout_keeps_its_layout():
    for folder in ("engine", "kernels", "scripts", "benchmarks", "tests"):
        assert os.path.isdir(os.path.join(CHECKOUT, folder)), folder
    assert os.path.isfile(os.path.join(CHECKOUT, "pyproject.toml"))


# The public surface whose annotations a type checker or `typing.get_type_hints` reads.
ANNOTATED = ("explain", "adapt_model", "load_model", "open_results", "run_job", "run_audit")


def test_public_annotations_resolve_without_tf_keras():
    import typing

    import sightline
    from sightline.model.loading import KerasModel, ModelSource

    for name in ANNOTATED:
        hints = typing.get_type_hints(getattr(sightline, name))
        assert "return" in hints, f"{name} has no return annotation"
    assert typing.get_type_hints(sightline.explain)["model"] == ModelSource
    assert KerasModel in typing.get_args(ModelSource)


def test_both_keras_flavours_are_keras_models():
    import tensorflow as tf
    import tf_keras

    from sightline.model.loading import KerasModel

    for K in (tf.keras, tf_keras):
        inputs = K.Input((4, 4, 1))
        model = K.Model(inputs, K.layers.Dense(2)(K.layers.Flatten()(inputs)))
        assert isinstance(model, KerasModel), K.__name__
    assert not isinstance(tf.zeros(2), KerasModel)
    assert not isinstance("model.keras", KerasModel)
