"""The table of methods: importable without TensorFlow, consistent with its kernels."""

import inspect
import re
import subprocess
import sys

import pytest

from sightline.kernels import methods


def run_fresh_python(code, cwd=None):
    """Run `code` in a new interpreter (nothing imported yet) -> CompletedProcess."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_table_and_config_import_without_tensorflow():
    """The CLI checks options before TensorFlow loads: importing the table and the
    configuration must not pull it in (a fresh interpreter, so nothing is cached)."""
    code = ("import sys\n"
            "import sightline.config, sightline.kernels.methods\n"
            "from sightline.config import make_config\n"
            "make_config(('layercam', 'smoothgrad'), num_copies=3)\n"
            "print('tensorflow' in sys.modules)\n")
    result = run_fresh_python(code)
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
    default = methods.OPTIONS[option].default
    with pytest.raises(error, match=rf"^{option} must be .*got {bad!r}; the default is "
                                    rf"{re.escape(repr(default))}$"):
        methods.OPTIONS[option].check(bad)
    methods.OPTIONS[option].check(methods.OPTIONS[option].default)


def test_every_option_is_read_by_some_method():
    for option in methods.OPTIONS:
        assert methods.methods_using(option), option


def test_every_method_option_is_settable_from_flags_and_toml(tmp_path):
    """Flags and TOML keys are generated from the table: each option, set to a value
    other than its default, reaches the configuration."""
    from sightline.cli.explain import config_from_options, explain_options
    from sightline.cli.main import build_parser
    values = {"channel_reduce": "sum", "num_copies": 3, "noise_sigma": 0.5, "noise_seed": 9,
              "num_steps": 5, "baseline": 0.25, "memory_budget_mb": 64}
    assert set(values) == set(methods.OPTIONS)
    assert all(values[name] != option.default for name, option in methods.OPTIONS.items())
    flags = [part for name, value in values.items()
             for part in ("--" + name.replace("_", "-"), str(value))]
    args = build_parser().parse_args(["explain", "--methods", "smoothgrad", *flags])
    config = config_from_options(explain_options(args))
    assert {name: getattr(config, name) for name in values} == values
    toml = tmp_path / "job.toml"
    toml.write_text("".join(f"{name} = {value!r}\n".replace("'", '"')
                            for name, value in values.items()) + 'map_size = "input"\n')
    args = build_parser().parse_args(["explain", "--config", str(toml)])
    config = config_from_options(explain_options(args))
    assert {name: getattr(config, name) for name in values} == values
    assert config.map_size == "input"
    assert config_from_options({}).map_size == "native"


def test_cli_rejects_a_bad_option_before_loading_tensorflow(tmp_path):
    code = ("import sys\n"
            "from sightline.cli.main import main\n"
            "code = main(['explain', '--model', 'm.keras', '--data', 'd', '--out', 'o',\n"
            "             '--methods', 'smoothgrad', '--num-copies', '0'])\n"
            "print(code, 'tensorflow' in sys.modules)\n")
    result = run_fresh_python(code, cwd=tmp_path)
    assert result.stdout.strip() == "2 False", result.stderr
    assert "num_copies must be an integer >= 1" in result.stderr
