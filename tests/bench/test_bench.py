"""`sightline bench` at a tiny size through the command line: the table, the JSON and
the report have their structure, and every accuracy guard passes. No speed is asserted."""

import json

import pytest

from sightline.bench import bench
from sightline.cli.main import main


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    output = folder / "bench.json"
    code = main(["bench", "--model", "fashion", "--size", "tiny", "--json", str(output),
                 "--report", str(folder / "report")])
    return code, json.loads(output.read_text()), folder


def test_bench_runs_and_every_guard_passes(bench_run):
    code, result, _ = bench_run
    assert code == 0
    guarded = [r for r in result["rows"] if r["guard"] is not None]
    assert guarded and all(r["guard"]["passed"] for r in guarded), \
        [(r["method"], r["mode"], r["guard"]) for r in guarded if not r["guard"]["passed"]]
    assert result["end_to_end"]["guard"]["passed"]


def test_bench_measures_every_method_and_mode(bench_run):
    _, result, _ = bench_run
    measured = {(r["method"], r["mode"]) for r in result["rows"]}
    assert {("inference", "graph"), ("inference", "xla"), ("inference", "bf16")} <= measured
    for method in bench.METHODS:
        for mode in bench.MODES:
            assert (method, mode) in measured
    for row in result["rows"]:
        assert row["images_per_second"] > 0
        assert row["startup_seconds"] >= 0
        assert row["x_ceiling"] is not None
        if row["method"] != "inference":
            assert row["x_eager_loop"] is not None
    assert result["ceiling"] == max(r["images_per_second"] for r in result["rows"]
                                    if r["method"] == "inference"
                                    and r["precision"] == "float32")


def test_bench_reports_every_target(bench_run):
    _, result, _ = bench_run
    names = " | ".join(t["target"] for t in result["targets"])
    for part in ("cam >=", "gradcam >=", "saliency >=", "the naive eager loop",
                 "mixed_bfloat16 faster", "end to end", "peak memory"):
        assert part in names
    for target in result["targets"]:
        assert target["met"] in (True, False, None)
    assert result["memory"]["ratio"] > 0
    assert set(result["memory"]["vmhwm_mb"]) == {str(result["memory"]["small"]),
                                                 str(result["memory"]["large"])}


def test_bench_prints_the_table_and_writes_the_report(bench_run, capsys):
    _, result, folder = bench_run
    markdown = (folder / "report" / "bench.md").read_text()
    assert "| method | mode | precision | images/s |" in markdown
    assert "| target | measured | threshold | met |" in markdown
    assert (folder / "report" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = bench.format_table(result)
    assert table.count("\n") >= len(result["rows"]) + 3


def test_bench_refuses_bad_input(capsys):
    assert main(["bench", "--model", "no_such_model"]) == 2
    assert "neither a file nor a built-in model" in capsys.readouterr().err
    assert main(["bench", "--model", "fashion", "--methods", "gradcam,nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
