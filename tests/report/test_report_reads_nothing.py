"""The report only draws: no module of sightline.report opens a file of the run (the
store, masks, clusters.h5, evaluation.h5, the source images); what it draws comes in
the dicts it is given and through its reader (sightline.evaluate.report_inputs)."""

import ast
import pathlib

REPORT = pathlib.Path(__file__).resolve().parents[2] / "engine" / "report"
FORBIDDEN_MODULES = ("h5py", "sightline.store.results", "sightline.data",
                     "sightline.audit.masks", "sightline.audit.replay",
                     "sightline.audit.virelay", "sightline.audit.metrics")
FORBIDDEN_CALLS = ("open_results", "open_masks", "read_clusters", "read_sanity",
                   "open_run_source", "read_images")


def _forbidden(name):
    return any(name == module or name.startswith(module + ".") for module in FORBIDDEN_MODULES)


def reads(source, filename="<source>"):
    """[(line, what)] of every forbidden import (anywhere: top level or in a function)
    and every call of a reader by name, in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if _forbidden(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, node.module) for _ in [0] if _forbidden(node.module)]
            found += [(node.lineno, alias.name) for alias in node.names
                      if alias.name in FORBIDDEN_CALLS]
        elif isinstance(node, ast.Call):
            function = node.func
            name = (function.id if isinstance(function, ast.Name) else
                    function.attr if isinstance(function, ast.Attribute) else None)
            if name in FORBIDDEN_CALLS:
                found.append((node.lineno, f"{name}()"))
    return sorted(found)


def test_the_report_imports_no_reader_and_calls_none():
    paths = sorted(REPORT.glob("*.py"))
    assert {"page.py", "clusters.py", "evaluation.py"} <= {path.name for path in paths}
    found = [f"{path.name}:{line}: {what}" for path in paths
             for line, what in reads(path.read_text(), str(path))]
    assert not found, ("the report reads the run's files itself (move the read into "
                       "ReportInputs):\n" + "\n".join(found))


def test_the_check_finds_a_planted_read():
    planted = ("import os\n"
               "from sightline.report import figures\n"
               "from sightline.store.results import open_results\n"
               "def draw(audit):\n"
               "    import h5py\n"
               "    from sightline.data.decode import resize_images\n"
               "    masks = sightline.audit.masks.open_masks(audit)\n"
               "    return read_clusters(audit['out'])\n")
    assert reads(planted) == [(3, "open_results"), (3, "sightline.store.results"),
                              (5, "h5py"), (6, "sightline.data.decode"),
                              (7, "open_masks()"), (8, "read_clusters()")]
    assert reads("import os\nfrom sightline.report.markup import table\n"
                 "def draw(inputs, audit):\n    return inputs.worst_items(audit)\n") == []
