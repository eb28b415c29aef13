"""No function imports another room: a room's dependencies stand at the top of its
modules, where import-linter sees them and a reader finds them.

The one kind of import a function may hold is a lazy TensorFlow one: of TensorFlow
itself, or of a sightline module that loads TensorFlow when it is imported (found here
from the modules' own top-level imports), so that `sightline --help`, a usage error and
the store's reader start without it."""

import ast
import pathlib

ENGINE = pathlib.Path(__file__).resolve().parents[2] / "engine"
HEAVY = ("tensorflow", "tf_keras", "keras")


def _module_name(path, root):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["sightline", *parts])


def _imported(node):
    """The modules an import statement names (for `from a import b`, a and a.b)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level or not node.module:
        return []
    return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]


def _function_imports(tree):
    """(line, module) of every import inside a function."""
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    for name in _imported(node):
                        yield node.lineno, name


def _top_level_imports(tree):
    """Modules imported when the module itself is (its body, outside functions)."""
    names = []
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names += _imported(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            pending += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
    return names


def _modules(root):
    """{module name: (path, tree)} of engine/ and of kernels/ beside it (mapped into the
    package as sightline.kernels, whether or not engine/ holds a link to it)."""
    trees = {}
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] != "kernels":
            trees[_module_name(path, root)] = (path, ast.parse(path.read_text(), str(path)))
    kernels = root.parent / "kernels"
    for path in sorted(kernels.rglob("*.py")):
        name = _module_name(path, kernels).replace("sightline", "sightline.kernels", 1)
        trees[name.rstrip(".")] = (path, ast.parse(path.read_text(), str(path)))
    return trees


def _loads_tensorflow(trees):
    """The sightline modules whose import loads TensorFlow, directly or through others."""
    loads = {}

    def visit(name, seen):
        if name in loads:
            return loads[name]
        if name not in trees or name in seen:
            return False
        seen = seen | {name}
        found = False
        parent = name.rpartition(".")[0]
        for imported in _top_level_imports(trees[name][1]) + ([parent] if parent in trees else []):
            if imported.split(".")[0] in HEAVY or visit(imported, seen):
                found = True
                break
        loads[name] = found
        return found

    for name in trees:
        visit(name, frozenset())
    return {name for name, heavy in loads.items() if heavy}


def _room(name):
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "sightline" else None


def crossings(root):
    trees = _modules(root)
    heavy = _loads_tensorflow(trees)
    found = []
    for name, (path, tree) in trees.items():
        for line, imported in _function_imports(tree):
            target = _room(imported)
            if target is None or target == _room(name) or imported not in trees:
                continue
            if imported in heavy:
                continue
            found.append(f"{path.relative_to(root.parent)}:{line}: {imported}")
    return sorted(set(found))


def test_no_function_imports_another_room():
    assert len(_modules(ENGINE)) > 40  # the walk found the rooms
    found = crossings(ENGINE)
    assert not found, ("imports of another room inside a function (move them to the top of "
                       "the module):\n" + "\n".join(found))


def test_the_check_tells_a_lazy_tensorflow_import_from_a_crossing(tmp_path):
    root = tmp_path / "engine"
    for room in ("store", "model", "cli"):
        (root / room).mkdir(parents=True)
        (root / room / "__init__.py").write_text("")
    (root / "store" / "light.py").write_text("import json\n")
    (root / "model" / "heavy.py").write_text("import tensorflow as tf\n")
    (root / "cli" / "main.py").write_text(
        "def run():\n"
        "    from sightline.store.light import json\n"
        "    from sightline.model.heavy import tf\n"
        "    import sightline.cli\n"
        "    import tensorflow\n")
    assert crossings(root) == ["engine/cli/main.py:2: sightline.store.light"]


def test_the_command_line_still_starts_without_tensorflow():
    # The imports moved to the tops of modules are of rooms that do not load TensorFlow:
    # the command line (which imports every subcommand) must still start without it.
    import subprocess
    import sys
    probe = "import sys, sightline.cli.main; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
