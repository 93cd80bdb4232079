"""The command line: every mistake is one paragraph before anything starts (no kernel, no run
folder, no traceback), one key changes with --set, and every option has help text."""

import argparse
import json
import os
import subprocess
import sys

import nbformat
import pytest
import yaml

from mi_llm import params
from mi_llm.__main__ import main, parser
from mi_llm.study import runner


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """Runs go to a private folder; the stages are one notebook that records what it was given."""
    monkeypatch.setenv(params.RUNS_ENV, str(tmp_path / "runs"))
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    seen = tmp_path / "seen.json"
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("name = 'x'\nquality = {}")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [
        cell,
        nbformat.v4.new_code_cell(
            f"import json\nopen({str(seen)!r}, 'w').write(json.dumps([name, quality]))"
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, nbs / "01_seen.ipynb")
    monkeypatch.setattr(runner, "NOTEBOOKS", nbs)
    return tmp_path / "runs", seen


def write(tmp_path, name, **sections):
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(sections, allow_unicode=True), encoding="utf-8")
    return str(f)


def err_of(capsys) -> str:
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return out.err


def test_set_changes_one_key_and_is_recorded_in_provenance(runs, tmp_path, capsys):
    run_root, seen = runs
    f = write(tmp_path, "tiny", quality={"judge_sample": 2, "max_dialogue_chars": 700})
    assert main(["run", f, "--set", "quality.top_k=3", "--no-progress"]) == 0
    name, quality = json.loads(seen.read_text())
    assert name == "tiny" and quality["top_k"] == 3 and quality["max_dialogue_chars"] == 700
    prov = json.loads((run_root / "tiny" / "provenance.json").read_text())
    assert prov["recipe"]["overrides"] == ["quality.top_k=3"] and prov["recipe"]["file"] == f
    assert len(prov["recipe"]["sha256"]) == 64


def test_a_copied_recipe_runs_under_its_own_name(runs, tmp_path, capsys):
    run_root, seen = runs
    f = tmp_path / "mine.yaml"
    f.write_text("name: smoke\nseed: 3\n")
    assert main(["run", str(f), "--no-progress"]) == 0
    assert json.loads(seen.read_text())[0] == "mine" and (run_root / "mine").is_dir()
    assert "note: " in capsys.readouterr().err and not (run_root / "smoke").exists()


@pytest.mark.parametrize(
    "sections, args, message",
    [
        (
            {"llm": {"provider": "remote", "api_key_env": "MI_LLM_NO_SUCH_KEY"}},
            [],
            "llm: provider is remote but $MI_LLM_NO_SUCH_KEY is not set",
        ),
        (
            {"corpora": {"sources": {"cpsycound": "no/such/folder"}}},
            [],
            "corpora.sources.cpsycound: path no/such/folder does not exist",
        ),
        ({"evaluation": {"models": ["gemma3-27m"]}}, [], "did you mean 'gemma3-270m'?"),
        ({}, ["--set", "quality.topk=3"], "quality has no key 'topk'; did you mean 'top_k'?"),
        ({"sft": {"lora": {"r": -16}}}, [], "sft.lora.r: -16 is out of range"),
        (
            {"llm": {"api_key_env": "MI_LLM_DRYRUN_KEY", "provider": "remote"}},
            [],
            "is a dry-run recipe",
        ),
    ],
)
def test_run_refuses_every_mistake_before_anything_starts(
    runs, tmp_path, capsys, monkeypatch, sections, args, message
):
    run_root, seen = runs
    monkeypatch.delenv("MI_LLM_NO_SUCH_KEY", raising=False)
    f = write(tmp_path, "bad", **sections)
    assert main(["run", f, *args]) == 2
    err = err_of(capsys)
    assert err.startswith("[mi_llm] ") and message in err, err
    assert not seen.exists() and not run_root.exists()  # no kernel ran, no run folder was made


def test_run_on_the_dry_run_recipe_points_to_dryrun(runs, capsys):
    assert main(["run", "params/paper-dryrun.yaml"]) == 2
    assert err_of(capsys).strip() == (
        "[mi_llm] params/paper-dryrun.yaml is a dry-run recipe: its endpoint is the local "
        "stand-in and its key $MI_LLM_DRYRUN_KEY is set only by the dry run, which also writes "
        "its tiny checkpoints. Run it with `python -m mi_llm dryrun params/paper-dryrun.yaml`."
    )
    assert not runs[0].exists()


def test_an_unknown_params_file_gets_the_closest_one(capsys):
    assert main(["run", "params/papr.yaml"]) == 2
    assert err_of(capsys).strip() == (
        "[mi_llm] params/papr.yaml: no such params file; did you mean params/paper.yaml?"
    )
    assert main(["check", "params/smoke.yml"]) == 1
    assert "did you mean params/smoke.yaml?" in capsys.readouterr().out


def test_check_recipe_only_passes_every_shipped_recipe(capsys):
    files = sorted(str(f.relative_to(params.ROOT)) for f in (params.ROOT / "params").glob("*.yaml"))
    assert main(["check", "--recipe-only", *files]) == 0
    out = capsys.readouterr().out
    assert all(f"{f}: ok" in out for f in files), out


def test_chat_mistakes_are_one_paragraph(runs, capsys):
    run_root, _ = runs
    assert main(["chat", "smoke"]) == 2
    assert "smoke: no such folder; runs here: none yet" in err_of(capsys)
    run = run_root / "smoke"
    run.mkdir(parents=True)
    prov = {"params": params.load("params/smoke.yaml").to_dict()}
    (run / "provenance.json").write_text(json.dumps(prov))
    assert main(["chat", "smok"]) == 2  # a near miss
    assert "smok: no such folder; did you mean 'smoke'?" in err_of(capsys)
    assert main(["chat", "smoke", "--country", "FR"]) == 2
    assert "--country/--referral: no crisis hotline configured for country 'FR'" in err_of(capsys)
    assert main(["chat", "smoke", "--model", "glm-4-9b-chat"]) == 2
    assert "--model 'glm-4-9b-chat': the run" in err_of(capsys)
    assert main(["code-sessions", "smoke"]) == 2  # a run without chat sessions yet
    assert "smoke: no such folder (a run's chat folder, runs/<name>/chat)" in err_of(capsys)
    assert main(["code-sessions", "nosuch"]) == 2
    assert "nosuch: no such folder; runs here: smoke" in err_of(capsys)


def test_data_fetch_of_an_unknown_corpus_names_the_closest(capsys):
    assert main(["data", "fetch", "smilechatt"]) == 2
    assert "no corpus 'smilechatt'; did you mean 'smilechat'?" in err_of(capsys)


def test_every_option_has_help_text():
    def walk(p, where):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from walk(sub, f"{where} {name}")
            elif not isinstance(a, argparse._HelpAction):
                yield where, a

    missing = [f"{w} {a.dest}" for w, a in walk(parser(), "mi_llm") if not a.help]
    assert missing == []
    text = parser().parse_args(["chat", "x"])  # defaults stay what the commands expect
    assert (text.variant, text.port, text.on_crisis) == ("finetuned", 8765, "refer")


def test_no_traceback_from_the_command_line_itself(tmp_path):
    """As a user runs it: a mistyped params file and an unknown run, one paragraph each."""
    for args, message in [
        (["check", "params/papr.yaml"], "did you mean params/paper.yaml?"),
        (["chat", "no-such-run"], "no-such-run: no such folder"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "mi_llm", *args],
            capture_output=True,
            text=True,
            cwd=params.ROOT,
            timeout=300,
            check=False,
            env={**os.environ, params.RUNS_ENV: str(tmp_path)},
        )
        assert out.returncode in (1, 2) and "Traceback" not in out.stderr + out.stdout
        assert message in out.stderr + out.stdout


def test_an_unknown_stage_is_refused_even_beside_known_ones(runs):
    run_root, seen = runs
    with pytest.raises(SystemExit, match=r"--only 09: no such stage; stages are 01_seen"):
        main(["run", "params/smoke.yaml", "--only", "01", "09"])
    assert not seen.exists() and not run_root.exists()
