"""The README's code works as written: every ```python block runs on its own, and CI runs the README's commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

# Runs every block in one fresh interpreter (importing torch dominates the time), each in an
# empty namespace and its own empty folder, so a block that needs a name it does not define
# or import fails. Writes {"stdout": ..., "error": ...} per block to the JSON file argv[2].
RUNNER = """
import contextlib, io, json, os, sys, traceback
blocks, results = json.load(open(sys.argv[1])), []
for i, code in enumerate(blocks):
    folder = os.path.join(os.path.dirname(sys.argv[1]), f"block{i}")
    os.mkdir(folder)
    os.chdir(folder)
    out, error = io.StringIO(), None
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"<README python block {i}>", "exec"), {"__name__": "__main__"})
    except BaseException:
        error = traceback.format_exc()
    results.append({"stdout": out.getvalue(), "error": error})
json.dump(results, open(sys.argv[2], "w"))
"""


def fenced_blocks(text: str, language: str) -> list:
    """The bodies of the ```language fenced blocks of a Markdown text, in order."""
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.MULTILINE | re.DOTALL)


PYTHON_BLOCKS = fenced_blocks(README, "python")


@pytest.fixture(scope="module")
def block_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    (folder / "blocks.json").write_text(json.dumps(PYTHON_BLOCKS))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    run = subprocess.run(
        [sys.executable, "-c", RUNNER, str(folder / "blocks.json"), str(folder / "results.json")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr
    return json.loads((folder / "results.json").read_text())


def test_fenced_blocks():
    assert len(PYTHON_BLOCKS) >= 3
    text = "text\n```python\nprint(1)\n```\n```bash\nls\n```\n```python\nx = 2\n```\n"
    assert fenced_blocks(text, "python") == ["print(1)\n", "x = 2\n"]


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_python_block_runs(block_results, index):
    result = block_results[index]
    assert result["error"] is None, f"README python block {index} failed:\n{PYTHON_BLOCKS[index]}\n{result['error']}"
    assert result["stdout"].strip(), f"README python block {index} prints nothing"


def test_runner_catches_a_block_that_needs_another_blocks_names(tmp_path):
    """A block using a name only an earlier block defines fails: the namespaces are separate."""
    (tmp_path / "blocks.json").write_text(json.dumps(["import math\nx = 1\nprint(x)\n", "print(x, math.pi)\n"]))
    subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp_path / "blocks.json"), str(tmp_path / "out.json")],
        check=True,
        timeout=60,
    )
    first, second = json.loads((tmp_path / "out.json").read_text())
    assert first == {"stdout": "1\n", "error": None}
    assert "NameError" in second["error"]


def test_ci_runs_the_readme_test_command():
    """.ci/run installs and tests with exactly the README's test command (``pip`` as ``python -m pip``)."""
    command = next(
        line
        for block in fenced_blocks(README, "bash")
        for line in block.splitlines()
        if "pytest" in line and line.startswith("pip install")
    )
    install, test = (part.strip() for part in command.split("&&"))
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert f"python -m {install}" in ci
    assert test in ci
