"""Every notebook's code reads as Python that names only what it imports or defines: a module
renamed in the package but not in a notebook fails here, in the fast suite, rather than in the
study's run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def code_of(notebook: Path) -> str:
    """The code cells joined in order, IPython magics and shell lines left out."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return "\n\n".join("\n".join(filter(_python, c.splitlines())) for c in code) + "\n"


def _python(line: str) -> bool:
    return not line.lstrip().startswith(("%", "!"))


def undefined_names(code: str, tmp_path: Path) -> str:
    """ruff's undefined-name, unused-import and redefinition findings ("" when none)."""
    f = tmp_path / "notebook.py"
    f.write_text(code, encoding="utf-8")
    cmd = [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache"]
    cmd += ["--select", "F821,F401,F811", "--config", "builtins = ['display']"]
    out = subprocess.run(
        [*cmd, "--output-format", "concise", str(f)], capture_output=True, text=True, check=False
    )
    assert out.returncode in (0, 1), out.stderr  # 2: ruff itself failed
    return "" if out.returncode == 0 else out.stdout


def test_the_check_catches_a_module_the_notebook_does_not_import(tmp_path):
    assert "F821" in undefined_names("from mi_llm import params\ngenerate.run(params)\n", tmp_path)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_code_names_only_what_it_imports(notebook, tmp_path):
    assert undefined_names(code_of(notebook), tmp_path) == ""
