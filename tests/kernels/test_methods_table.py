"""The table of methods: importable without TensorFlow, consistent with its kernels."""

import inspect
import subprocess
import sys

import pytest

from sightline.kernels import methods


def test_table_and_config_import_without_tensorflow():
    """The CLI checks options before TensorFlow loads: importing the table and the
    configuration must not pull it in (a fresh interpreter, so nothing is cached)."""
    code = ("import sys\n"
            "import sightline.config, sightline.kernels.methods\n"
            "from sightline.config import make_config\n"
            "make_config(('layercam', 'smoothgrad'), num_copies=3)\n"
            "print('tensorflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_row_matches_its_kernel_signature(name):
    """Each row's arguments fill the kernel's leading parameters and its options and
    chunk keyword are keywords the kernel takes: a wrong row fails here, not mid-run."""
    row = methods.METHODS[name]
    assert row.resolution in (methods.LAYER, methods.INPUT)
    assert set(row.arguments) <= set(methods.STEP_VALUES)
    assert set(row.option_names) <= set(methods.OPTIONS)
    parameters = inspect.signature(row.load_kernel()).parameters
    names = list(parameters)
    assert len(names) >= len(row.arguments)
    required = [p for p in parameters.values() if p.default is inspect.Parameter.empty]
    assert len(required) <= len(row.arguments), f"{name}: a required parameter has no argument"
    for keyword in row.options + ((row.chunk_keyword,) if row.chunk_keyword else ()):
        assert keyword in names[len(row.arguments):], f"{name} takes no keyword {keyword!r}"
        # The kernel's own default is the table's: a direct call means the same thing.
        if keyword in methods.OPTIONS:
            assert parameters[keyword].default == methods.OPTIONS[keyword].default, keyword


@pytest.mark.parametrize("option, bad, error", [
    ("num_copies", 0, ValueError), ("num_copies", 2.5, TypeError),
    ("noise_seed", 2 ** 32, ValueError), ("noise_sigma", -0.1, ValueError),
    ("baseline", "zero", TypeError), ("channel_reduce", "mean", ValueError),
    ("memory_budget_mb", True, TypeError),
])
def test_option_checks_give_one_line(option, bad, error):
    with pytest.raises(error, match=rf"^{option} must be .*got {bad!r}$"):
        methods.OPTIONS[option].check(bad)
    methods.OPTIONS[option].check(methods.OPTIONS[option].default)


def test_every_option_is_read_by_some_method():
    for option in methods.OPTIONS:
        assert methods.methods_using(option), option
