"""The store is the one owner of the on-disk format: no other room spells a dataset's
path or one of the output folder's file names; they name them through
sightline.store.layout.

The check reads string constants with ast (f-string pieces too), so docstrings and
comments may still describe the format in words."""

import ast
import pathlib
import re

import pytest

from sightline.store import layout

ENGINE = pathlib.Path(__file__).resolve().parents[2] / "engine"
# compute sits beside store in the layers and may not import it: its step names its
# outputs ("heatmaps/<method>", "scales/<method>", "relevance") in memory, and
# jobs/batches.py turns them into datasets through the layout.
OUTSIDE_THE_LAYOUT = ("store", "compute", "kernels")
DATASET_PATH = re.compile(r"^/?(heatmaps|sample|pred|relevance)/")
FILE_NAMES = {layout.MANIFEST_FILE, layout.INDEX_FILE, layout.CLUSTERS_FILE,
              layout.SHARD_DIRECTORY}


def _string_pieces(tree):
    """(line, text) of every string constant that is not a docstring."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            yield node.lineno, node.value


def _literals(path, root=ENGINE.parent):
    found = []
    for line, text in sorted(_string_pieces(ast.parse(path.read_text(), str(path)))):
        if DATASET_PATH.match(text) or text in FILE_NAMES:
            found.append(f"{path.relative_to(root)}:{line}: {text!r}")
    return found


def _engine_modules():
    return sorted(p for p in ENGINE.rglob("*.py")
                  if p.relative_to(ENGINE).parts[0] not in OUTSIDE_THE_LAYOUT)


def test_only_the_store_names_datasets():
    modules = _engine_modules()
    assert len(modules) > 40  # the walk found the rooms, not an empty folder
    found = [hit for path in modules for hit in _literals(path)]
    assert not found, "dataset or file names spelled outside sightline.store.layout:\n" + \
        "\n".join(found)


def test_the_check_sees_a_literal(tmp_path):
    # The detector itself: a plain literal, an f-string piece and a file name are caught,
    # a docstring is not.
    sample = tmp_path / "engine" / "audit" / "sample.py"
    sample.parent.mkdir(parents=True)
    sample.write_text('"""reads /sample/index"""\n'
                      'a = h["sample/index"]\n'
                      'b = f"heatmaps/{m}"\n'
                      'c = "manifest.json"\n')
    assert [hit.split(": ", 1)[1] for hit in _literals(sample, tmp_path)] == \
        ["'sample/index'", "'heatmaps/'", "'manifest.json'"]


@pytest.mark.parametrize("method", ["gradcam", "cam", "integrated_gradients"])
def test_heatmap_names_round_trip(method):
    assert layout.heatmap_method(layout.heatmap(method)) == method
    assert layout.heatmap_method(layout.heatmap_scale(method)) is None
    assert layout.heatmap_method(layout.SAMPLE_INDEX) is None
    assert layout.in_relevance_group(layout.RELEVANCE)
    assert not layout.in_relevance_group(layout.heatmap(method))


def test_run_source_reads_the_record_and_falls_back_to_the_description():
    from sightline.store.manifest import run_source, source_entry
    old = {"run": {"source": "h5 /abs/x.h5:images"}}
    assert run_source(old) == ("h5", "/abs/x.h5:images")
    # A path with a space survives the record; the description is never parsed then.
    new = {"run": {"source": "folder /abs/my images"}, **source_entry("folder", "/abs/my images")}
    assert run_source(new) == ("folder", "/abs/my images")
    moved = {**new, "run": {"source": "folder /elsewhere"}}
    assert run_source(moved) == ("folder", "/abs/my images")
    assert run_source({"run": {"source": "arrays in memory"}}) is None
    assert run_source({"run": {}}) is None
