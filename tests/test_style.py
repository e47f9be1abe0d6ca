"""Code habits the reviewers check: short functions in the package, the oracle as a leaf."""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pointcoc"
MAX_LINES = 60


def _functions(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_longer_than_60_lines():
    too_long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in _functions(path)
        if node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert not too_long, "functions longer than 60 lines:\n" + "\n".join(too_long)


def test_the_length_check_sees_a_long_function(tmp_path):
    source = tmp_path / "long.py"
    source.write_text("def f():\n" + "    x = 1\n" * MAX_LINES)
    assert [node.end_lineno - node.lineno + 1 for node in _functions(source)] == [MAX_LINES + 1]


def _imports(path):
    """Absolute names of the pointcoc modules ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name
            for alias in node.names:
                yield f"{name}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_only_the_checkpoint_converter_imports_the_reference():
    allowed = {"pointcoc/checkpoint.py"}
    importers = [
        str(path.relative_to(PACKAGE.parent))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "reference" not in path.relative_to(PACKAGE).parts
        and any(name == "pointcoc.reference" or name.startswith("pointcoc.reference.") for name in _imports(path))
    ]
    assert set(importers) <= allowed, importers


def test_the_shipped_package_does_not_load_the_reference():
    code = (
        "import sys, pointcoc, pointcoc.viz, pointcoc.training, pointcoc.checkpoint, pointcoc.data; "
        "assert 'pointcoc.reference' not in sys.modules; "
        "assert pointcoc.reference.create_model is not None"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)


def test_viz_does_not_reach_into_the_network():
    """pointcoc.viz reads clusters through forward_intermediates, never through module indices."""
    names = {
        node.attr if isinstance(node, ast.Attribute) else node.id
        for node in ast.walk(ast.parse((PACKAGE / "viz.py").read_text(encoding="utf-8")))
        if isinstance(node, (ast.Attribute, ast.Name))
    }
    assert not names & {"network", "token_mixer", "record_geometry", "stage_geometry", "last_assignment"}
    assert "forward_intermediates" in names
