"""The study runner: stages in order, --only, and a clear stop at the first failing notebook."""

import nbformat
import pytest

from mi_llm.study import runner


def _nb(path, code):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("name = 'x'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.fixture
def fake_project(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    monkeypatch.setattr(runner, "NOTEBOOKS", nbs)
    monkeypatch.setenv("MI_LLM_RUNS", str(tmp_path / "runs"))
    pfile = tmp_path / "tiny.yaml"
    pfile.write_text("name: tiny\n")
    return nbs, pfile


def test_select_by_number_and_name(fake_project):
    nbs, _ = fake_project
    for n in ["01_a", "02_b", "03_c"]:
        _nb(nbs / f"{n}.ipynb", "pass")
    assert [p.stem for p in runner.select(["02"])] == ["02_b"]
    assert [p.stem for p in runner.select(["03_c", "1"])] == ["01_a", "03_c"]
    with pytest.raises(SystemExit, match="no such stage"):
        runner.select(["09"])


def test_runner_stops_at_first_failure_and_names_the_notebook(fake_project, capsys):
    nbs, pfile = fake_project
    done = pfile.parent / "stage1.ok"  # in the test's folder, never the repository's
    _nb(nbs / "01_ok.ipynb", f"open({str(done)!r}, 'w').close()")
    _nb(nbs / "02_bad.ipynb", "raise RuntimeError('boom in stage 2')")
    _nb(nbs / "03_never.ipynb", "raise SystemExit('must not run')")
    with pytest.raises(SystemExit):
        runner.run(str(pfile), progress=False)
    err = capsys.readouterr().err
    assert (
        "02_bad" in err and "boom in stage 2" in err and "runs/tiny/notebooks/02_bad.ipynb" in err
    )
    out = pfile.parent / "runs" / "tiny" / "notebooks"
    assert (out / "01_ok.ipynb").exists() and (out / "02_bad.ipynb").exists() and done.exists()
    assert not (out / "03_never.ipynb").exists()


def test_runner_leaves_the_report_to_the_last_notebook(fake_project, monkeypatch, capsys):
    """The report is built once per run, by the last notebook, not again by the runner."""
    from mi_llm.study import report

    nbs, pfile = fake_project
    calls = []
    monkeypatch.setattr(
        report, "build", lambda run_dir: calls.append(run_dir) or run_dir / "report/index.html"
    )
    where = pfile.parent / "runs/tiny/report"
    _nb(
        nbs / "01_last.ipynb",
        f"import pathlib\np = pathlib.Path({str(where)!r})\n"
        "p.mkdir(parents=True, exist_ok=True)\n(p / 'index.html').write_text('built')",
    )
    run_dir = runner.run(str(pfile), progress=False)
    assert calls == []  # the notebook built it (in its own kernel); the runner built nothing
    assert (run_dir / "report/index.html").read_text() == "built"


def test_runner_passes_validated_params_with_defaults_not_the_raw_yaml(fake_project):
    """A key the params file leaves out reaches the notebook as its documented default (params.py),
    never as the parameters cell's smoke value."""
    import json

    from mi_llm import params

    nbs, pfile = fake_project
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("device = 'smoke-value'\nevaluation = {}")
    cell.metadata["tags"] = ["parameters"]
    out = pfile.parent / "seen.json"
    nb.cells = [
        cell,
        nbformat.v4.new_code_cell(
            f"import json\nopen({str(out)!r}, 'w').write(json.dumps([device, evaluation]))"
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, nbs / "01_seen.ipynb")
    runner.run(str(pfile), progress=False)
    device, evaluation = json.loads(out.read_text())
    assert device == params.Params.device == "auto"
    assert evaluation["miti"]["prompt_version"] == params.MitiParams.prompt_version


def test_runner_stops_when_a_stage_does_not_write_its_declared_products(fake_project, capsys):
    nbs, pfile = fake_project
    _nb(nbs / "01_corpus_quality.ipynb", "pass")  # writes neither quality.csv nor judgements.jsonl
    with pytest.raises(SystemExit):
        runner.run(str(pfile), progress=False)
    err = capsys.readouterr().err
    assert "stage 01_corpus_quality" in err and "01_corpus_quality/quality.csv" in err
