"""A stage kernel as the runner starts it: IPC transport (no TCP warning), tqdm bars on the
runner's terminal and not in the notebook, library warnings in the run's log, not in the notebook."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import nbformat

from mi_llm.study import progress

CELL = """import warnings
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="coding batches"):
    pass
warnings.warn("an old keyword", FutureWarning)
import jieba
jieba.lcut("我想少喝点酒")  # jieba logs its dictionary loading on stderr unless told not to
from mi_llm.study import progress  # a warning raised in the study's own code
warnings.warn_explicit("the study's own note", UserWarning, progress.__file__, 1)
print("the cell's own output")"""


def _run(tmp_path, bars: bool):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    src, out, run = tmp_path / "in.ipynb", tmp_path / "out.ipynb", tmp_path / "run"
    nbformat.write(nb, src)
    script = textwrap.dedent(f"""
        import papermill as pm
        from mi_llm.study import progress
        pm.execute_notebook({str(src)!r}, {str(out)!r}, kernel_name="python3", progress_bar=False,
                            **progress.kernel_options({str(run)!r}, {bars!r}))
    """)
    # as from a terminal: ipykernel does not capture fd output when it finds PYTEST_CURRENT_TEST
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env=env,
    )
    return proc.stdout + proc.stderr, nbformat.read(out, as_version=4).cells[0].outputs, run


def test_bars_reach_the_terminal_and_the_notebook_keeps_only_its_output(tmp_path):
    terminal, outputs, run = _run(tmp_path, bars=True)
    assert "without encryption" not in terminal and "IPKernelApp" not in terminal
    assert "coding batches: 100%" in terminal
    text = {o["name"]: o["text"] for o in outputs}
    assert sorted(text) == ["stderr", "stdout"] and len(outputs) == 2
    assert "UserWarning: the study's own note" in text["stderr"]  # the study's own warning only:
    assert "old keyword" not in text["stderr"] and "coding batches" not in text["stderr"]
    assert "prefix dict" not in text["stderr"]
    assert text["stdout"] == "the cell's own output\n"
    log = (run / progress.WARNINGS_LOG).read_text()
    assert "FutureWarning: an old keyword" in log and "TqdmWarning" not in log
    assert "the study's own note" not in log
    assert progress.warnings_summary(run).startswith("1 library warning(s) logged")


def test_no_progress_draws_no_bar(tmp_path):
    terminal, outputs, _ = _run(tmp_path, bars=False)
    assert "coding batches" not in terminal
    assert "coding batches" not in "".join(o.get("text", "") for o in outputs)
