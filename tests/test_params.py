"""Every params file parses, bad keys fail loudly, notebooks declare exactly the params sections."""

from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from mi_llm import check, params, study

PARAM_FILES = sorted((params.ROOT / "params").glob("*.yaml"))


@pytest.mark.parametrize("file", PARAM_FILES, ids=lambda f: f.name)
def test_every_params_file_loads(file):
    p = params.load(file)
    assert p.name == file.stem
    assert set(p.to_dict()) == set(params.SECTIONS)


def test_unknown_key_is_an_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\nsft:\n  modles: [x]\n")
    with pytest.raises(params.ParamsError, match=r"sft: unknown key\(s\) \['modles'\]"):
        params.load(f)


def test_wrong_type_is_an_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\nquality:\n  top_k: two\n")
    with pytest.raises(params.ParamsError, match=r"quality.top_k: expected int"):
        params.load(f)


def test_bool_is_not_an_int_and_int_is_a_float():
    with pytest.raises(params.ParamsError):
        params.from_dict({"seed": True})
    assert params.from_dict({"llm": {"request_timeout": 5}}).llm.request_timeout == 5.0


def test_choices_and_name_must_match_stem(tmp_path):
    with pytest.raises(params.ParamsError, match="provider"):
        params.from_dict({"llm": {"provider": "magic"}})
    f = tmp_path / "other.yaml"
    f.write_text("name: smoke\n")
    with pytest.raises(params.ParamsError, match="stem"):
        params.load(f)


def test_check_reports_missing_paths_and_key(tmp_path, monkeypatch):
    f = tmp_path / "remote.yaml"
    f.write_text(yaml.safe_dump({"name": "remote", "llm": {"provider": "remote", "api_key_env": "MI_LLM_TEST_KEY"},
                                 "corpora": {"sources": {"cpsycound": "no/such/folder"}}}))
    monkeypatch.delenv("MI_LLM_TEST_KEY", raising=False)
    errs = check.check(str(f))
    assert any("no/such/folder" in e for e in errs)
    assert any("MI_LLM_TEST_KEY" in e for e in errs)


@pytest.mark.parametrize("nb", study.stages(), ids=lambda p: p.stem)
def test_notebook_parameters_are_the_smoke_defaults(nb):
    """The parameters cell holds exactly the smoke params: run `python -m mi_llm sync-notebooks`."""
    cell = study.parameters_cell(nbformat.read(nb, as_version=4))
    assert cell.source == study.parameters_source("params/smoke.yaml")


@pytest.mark.parametrize("nb", study.stages(), ids=lambda p: p.stem)
def test_notebook_declares_every_params_key(nb):
    """papermill only warns about unknown parameters; we make it an error."""
    declared = set(pm.inspect_notebook(str(nb)))
    for f in PARAM_FILES:
        keys = set(yaml.safe_load(f.read_text()))
        assert keys <= declared, f"{nb.name} does not declare {keys - declared} used by {f.name}"


@pytest.mark.parametrize("nb", study.stages(), ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(nb):
    for cell in nbformat.read(nb, as_version=4).cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{nb.name} has stored outputs"
