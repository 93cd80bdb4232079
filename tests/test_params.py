"""Every params file parses, bad keys fail loudly, notebooks declare exactly the params sections."""

import re
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from mi_llm import params
from mi_llm.study import check, runner

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
    f.write_text(
        yaml.safe_dump(
            {
                "name": "remote",
                "llm": {"provider": "remote", "api_key_env": "MI_LLM_TEST_KEY"},
                "corpora": {"sources": {"cpsycound": "no/such/folder"}},
            }
        )
    )
    monkeypatch.delenv("MI_LLM_TEST_KEY", raising=False)
    errs = check.check(str(f))
    assert any("no/such/folder" in e for e in errs)
    assert any("MI_LLM_TEST_KEY" in e for e in errs)


@pytest.mark.parametrize("nb", runner.stages(), ids=lambda p: p.stem)
def test_notebook_parameters_are_the_smoke_defaults(nb):
    """The parameters cell holds exactly the smoke params: run `python -m mi_llm sync-notebooks`."""
    cell = runner.parameters_cell(nbformat.read(nb, as_version=4))
    assert cell.source == runner.parameters_source("params/smoke.yaml")


@pytest.mark.parametrize("nb", runner.stages(), ids=lambda p: p.stem)
def test_notebook_declares_every_params_key(nb):
    """papermill only warns about unknown parameters; we make it an error."""
    declared = set(pm.inspect_notebook(str(nb)))
    for f in PARAM_FILES:
        keys = set(yaml.safe_load(f.read_text()))
        assert keys <= declared, f"{nb.name} does not declare {keys - declared} used by {f.name}"


@pytest.mark.parametrize("nb", runner.stages(), ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(nb):
    for cell in nbformat.read(nb, as_version=4).cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{nb.name} has stored outputs"
            )


# ----------------------------------------------------------------------------- refused before any stage runs
def write_params(tmp_path, name: str, **sections) -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"name": name, **sections}, allow_unicode=True), encoding="utf-8")
    return f


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("llm", "max_concurrency", 0),
        ("llm", "max_retries", -1),
        ("transcription", "max_dialogues", -1),
        ("transcription", "n_train", -5),
        ("transcription", "n_test", -1),
        ("llm", "request_timeout", 0.0),
        ("quality", "judge_sample", 0),
        ("evaluation", "batch_size", 0),
        ("corpora", "limit", 0),
        ("transcription", "client_edit_tolerance", 0.9),
        ("llm", "max_transport_failures", 1.5),
    ],
)
def test_numbers_out_of_range_are_refused(tmp_path, section, key, value):
    f = write_params(tmp_path, "bad", **{section: {key: value}})
    with pytest.raises(params.ParamsError, match=rf"{section}\.{key}: {value!r} is out of range"):
        params.load(f)
    (err,) = check.check(str(f))
    assert f"{section}.{key}" in err and "bad.yaml" in err


def test_yaml_syntax_error_is_one_line_with_file_line_column(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text(
        "name: broken\nllm:\n  model: [gemma3-270m\n  provider: embedded\n", encoding="utf-8"
    )
    (err,) = check.check(str(f))
    assert "\n" not in err and re.match(rf"^{re.escape(str(f))}:\d+:\d+: YAML syntax error: ", err)
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "mi_llm", "run", str(f)],
        capture_output=True,
        text=True,
        cwd=params.ROOT,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"[mi_llm] {err}"]


def test_check_refuses_prompts_corpora_and_models_a_stage_would_fail_on(tmp_path):
    prompt = tmp_path / "mine.md"
    prompt.write_text(
        "## system\n改写。\n## user\n请改写下面的回复。\n", encoding="utf-8"
    )  # no {dialogue}
    f = write_params(
        tmp_path,
        "bad",
        transcription={"prompt_version": str(prompt), "unit": "dialogue"},
        corpora={
            "sources": {"cpsycound": "data/CPsyCounD/Data", "cpsycounD": "data/CPsyCounD/Data"}
        },
        llm={"provider": "embedded", "model": "gpt-4o"},
    )
    errs = check.check(str(f))
    assert any(e.startswith("transcription.prompt_version") and "'{dialogue}'" in e for e in errs)
    assert any(e.startswith("corpora.sources.cpsycounD: no loader knows") for e in errs)
    assert any(e.startswith("llm.model: 'gpt-4o' cannot be served embedded") for e in errs)
    assert len(errs) == 3
    with pytest.raises(SystemExit, match="no loader knows"):
        runner.run(str(f))


def test_check_lists_the_defaults_it_used(tmp_path, capsys):
    from mi_llm.__main__ import main

    f = write_params(tmp_path, "partial", llm={"model": "gemma3-270m"})
    used = check.defaults_used(str(f))
    assert "figures: whole section (defaults)" in used and "sft: whole section (defaults)" in used
    assert any(u.startswith("llm: defaults for provider, base_url") for u in used)
    assert main(["check", str(f)]) == 0
    assert "default used: transcription: whole section (defaults)" in capsys.readouterr().out
    assert check.defaults_used("params/smoke.yaml") == []  # the recipe spells out every key


@pytest.mark.parametrize(
    "section, where",
    [
        (
            {"miti": {"promt_version": "miti_v3"}},
            r"evaluation\.miti: unknown key\(s\) \['promt_version'\]",
        ),
        (
            {"forecaster": {"modle": "text"}},
            r"evaluation\.forecaster: unknown key\(s\) \['modle'\]",
        ),
        ({"miti": {"max_tokens": "eight"}}, r"evaluation\.miti\.max_tokens: expected int"),
        ({"forecaster": {"test_size": "a fifth"}}, r"evaluation\.forecaster\.test_size: expected"),
        ({"variants": ["base", "finetunned"]}, r"evaluation\.variants: unknown \['finetunned'\]"),
        ({"variants": ["base", "base"]}, r"evaluation\.variants: repeated"),
        ({"condition_on": "reflection"}, r"evaluation\.condition_on: 'reflection' is not"),
        ({"forecaster": {"model": "forest"}}, r"evaluation\.forecaster\.model: 'forest'"),
        ({"forecaster": {"mi_quality": ["good"]}}, r"evaluation\.forecaster\.mi_quality"),
        ({"miti": {"temperature": 3}}, r"evaluation\.miti\.temperature: 3.0 is out of range"),
    ],
)
def test_check_names_file_and_key_path_of_every_evaluation_error(tmp_path, section, where):
    f = write_params(tmp_path, "bad", evaluation=section)
    errs = check.check(str(f))
    assert len(errs) == 1 and re.search(where, errs[0]) and str(f) in errs[0], errs
    with pytest.raises(params.ParamsError, match=where):  # refused before any stage runs
        runner.run(str(f))


def test_miti_and_forecaster_sections_are_typed_with_defaults():
    p = params.from_dict({"evaluation": {"miti": {"max_utterances": 2}}})
    assert (
        isinstance(p.evaluation.miti, params.MitiParams) and p.evaluation.miti.max_utterances == 2
    )
    assert p.evaluation.miti.prompt_version == "miti_v4"
    assert isinstance(p.evaluation.forecaster, params.ForecasterParams)
    assert p.evaluation.forecaster.model == "text"
    assert p.evaluation.condition_on == "forecaster"
    assert params.from_dict({"evaluation": {"condition_on": "open_question"}})


def test_each_params_file_has_its_own_figures_folder():
    """A smoke run never overwrites the paper's figures (nor a dry run either)."""
    out = {f.name: params.path(params.load(f).figures.out_dir) for f in PARAM_FILES}
    assert len(set(out.values())) == len(out), out
