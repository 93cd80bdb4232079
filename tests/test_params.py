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


def test_choices_are_refused_with_the_closest_name():
    with pytest.raises(params.ParamsError, match=r"provider: 'magic' is not one of"):
        params.from_dict({"llm": {"provider": "magic"}})
    with pytest.raises(params.ParamsError, match=r"device: 'cuda0' .* did you mean 'cuda'\?"):
        params.from_dict({"device": "cuda0"})


def test_a_copied_recipe_runs_under_its_own_file_name(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text((params.ROOT / "params" / "smoke.yaml").read_text(encoding="utf-8"))
    p = params.load(f)
    assert p.name == "mine" and p.run_dir.name == "mine"
    assert params.name_note(f) == (
        f"{f}: name 'smoke' is not the file's stem; the run is 'mine' (runs/mine/)"
    )
    assert params.name_note("params/smoke.yaml") is None
    bare = tmp_path / "bare.yaml"
    bare.write_text("seed: 1\n")  # no name at all: the stem
    assert params.load(bare).name == "bare" and params.name_note(bare) is None


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
    with pytest.raises(params.ParamsError, match="3 problems; nothing was started") as e:
        runner.run(str(f))
    assert "no loader knows" in str(e.value) and "cannot be served embedded" in str(e.value)


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
    assert not (params.ROOT / "runs" / "bad").exists()


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


# ----------------------------------------------------------------------------- every key, one home
def test_unknown_key_names_the_closest_known_one(tmp_path):
    f = write_params(tmp_path, "bad", sft={"modles": ["gemma3-270m"]})
    with pytest.raises(params.ParamsError, match=r"\['modles'\]; did you mean 'models'\?"):
        params.load(f)


@pytest.mark.parametrize(
    "section, where",
    [
        ({"sft": {"lora": {"r": -16}}}, r"sft\.lora\.r: -16 is out of range; it must be >= 1"),
        ({"sft": {"lora": {"lora_dropout": 1.0}}}, r"sft\.lora\.lora_dropout: 1\.0 is out of"),
        (
            {"sft": {"config": {"per_device_train_batch_size": 0}}},
            r"sft\.config\.per_device_train_batch_size: 0 is out of range; it must be >= 1",
        ),
        (
            {"sft": {"config": {"learning_rate": -1}}},
            r"sft\.config\.learning_rate: -1 is out of range; it must be in \(0, 1\]",
        ),
        (
            {"sft": {"config": {"max_steps": 0}}},
            r"sft\.config\.max_steps: 0 is out of range; it must be >= 1 \(or -1",
        ),
        (
            {"sft": {"config": {"gradient_accumulation_steps": 2.5}}},
            r"sft\.config\.gradient_accumulation_steps: expected an integer, got 2\.5",
        ),
        ({"sft": {"config": {"seed": 1}}}, r"sft\.config\.seed: set by mi_llm from seed"),
        (
            {"evaluation": {"generation": {"top_p": 1.5, "do_sample": True}}},
            r"evaluation\.generation\.top_p: 1\.5 is out of range; it must be in \(0, 1\]",
        ),
        (
            {"evaluation": {"generation": {"temperature": 0.7}}},
            r"evaluation\.generation\.temperature: has no effect in greedy decoding",
        ),
        (
            {"evaluation": {"generation": {"max_new_tokens": 9}}},
            r"evaluation\.generation\.max_new_tokens: set by mi_llm from evaluation\.max_new_tokens",
        ),
        ({"quality": {"temperature": float("nan")}}, r"quality\.temperature: nan is not a finite"),
        (
            {"sft": {"config": {"learning_rate": float("inf")}}},
            r"sft\.config\.learning_rate: inf is not a finite number",
        ),
        ({"figures": {"formats": ["png", "gif"]}}, r"figures\.formats: unknown \['gif'\]"),
        ({"figures": {"formats": []}}, r"figures\.formats: empty"),
        ({"evaluation": {"forecaster": {"test_size": 1.0}}}, r"test_size: 1\.0 is out of range"),
        (
            {"evaluation": {"variants": ["base", "conditioned"]}},
            r"evaluation\.variants: 'conditioned' needs a tagged transcription, and transcription",
        ),
        ({"name": ".."}, r"name: '\.\.' is not a run name"),
    ],
)
def test_fields_passed_on_are_checked_before_anything_runs(tmp_path, section, where):
    with pytest.raises(params.ParamsError, match=where):
        params.from_dict(section)
    data = {k: v for k, v in section.items() if k != "name"}
    if data:  # the same error from a file, through check, naming the file
        f = write_params(tmp_path, "bad", **data)
        (err,) = check.check(str(f))
        assert re.search(where, err) and str(f) in err, err


def test_yaml_nan_and_duplicate_keys_are_refused(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("quality:\n  top_k: 2\n  judge_sample: 3\n  top_k: 5\n", encoding="utf-8")
    with pytest.raises(params.ParamsError) as e:
        params.load(f)
    assert str(e.value) == f"{f}:4:3: YAML syntax error: duplicate key 'top_k'"
    f.write_text("sft:\n  config: {learning_rate: .nan}\n", encoding="utf-8")
    with pytest.raises(
        params.ParamsError, match=r"sft\.config\.learning_rate: nan is not a finite"
    ):
        params.load(f)


def test_every_figure_format_is_one_matplotlib_writes():
    from matplotlib.backend_bases import FigureCanvasBase

    assert set(params.FIGURE_FORMATS) <= set(FigureCanvasBase.get_supported_filetypes())


def test_check_knows_transformers_generation_fields(tmp_path):
    f = write_params(
        tmp_path, "bad", evaluation={"generation": {"do_sample": True, "temprature": 1}}
    )
    (err,) = check.check(str(f), environment=False)
    assert err == (
        "evaluation.generation.temprature: not a transformers GenerationConfig field; "
        "did you mean 'temperature'?"
    )
    ok = write_params(tmp_path, "ok", evaluation={"generation": {"repetition_penalty": 1.2}})
    assert check.check(str(ok), environment=False) == []


def test_check_refuses_unknown_models_and_corpora_with_the_closest_name(tmp_path):
    f = write_params(
        tmp_path,
        "bad",
        evaluation={"models": ["glm-4-9b-chta"]},
        corpora={"sources": {"smilechatt": "data/SmileChat/data"}},
    )
    errs = check.check(str(f), environment=False)
    assert any(
        e.startswith(
            "evaluation.models: unknown model 'glm-4-9b-chta'; did you mean 'glm-4-9b-chat'?"
        )
        for e in errs
    ), errs
    assert any(
        e.startswith(
            "corpora.sources.smilechatt: no loader knows this corpus; did you mean 'smilechat'?"
        )
        for e in errs
    ), errs


def test_an_empty_corpus_folder_is_named_by_its_key(tmp_path):
    empty = tmp_path / "SmileChat"
    empty.mkdir()
    f = write_params(tmp_path, "empty", corpora={"sources": {"smilechat": str(empty)}})
    (err,) = check.check(str(f))
    assert err.startswith(f"corpora.sources.smilechat: folder {empty} is empty")
    assert check.check(str(f), environment=False) == []  # a fact of this machine, not the recipe


@pytest.mark.parametrize("file", PARAM_FILES, ids=lambda f: f.name)
def test_every_shipped_recipe_passes_make_check(file):
    """`make check` runs `check --recipe-only params/*.yaml`; the dry run's recipe passes the full
    check too (its key and checkpoints are the dry run's own)."""
    assert check.check(str(file), environment=False) == []
    if check.is_dryrun(params.load(file)):
        assert check.check(str(file)) == []


# ----------------------------------------------------------------------------- one key, one run
def test_set_overrides_are_typed_and_validated_like_the_file():
    p = params.load(
        "params/smoke.yaml",
        ["quality.top_k=3", "evaluation.max_rounds=null", "sft.config.max_steps=5", "seed=7"],
    )
    assert p.quality.top_k == 3 and p.evaluation.max_rounds is None and p.seed == 7
    assert p.sft.config["max_steps"] == 5 and p.sft.config["learning_rate"] == 5e-4  # merged
    assert p.quality.max_dialogue_chars == 600  # the recipe's other keys hold
    for item, where in [
        (
            "quality.topk=3",
            r"--set quality\.topk=3: quality has no key 'topk'; did you mean 'top_k'",
        ),
        ("quality.top_k=three", r"quality\.top_k: expected int, got 'three'"),
        ("quality.top_k=0", r"quality\.top_k: 0 is out of range"),
        ("quality.top_k", r"--set quality\.top_k: expected KEY=VALUE"),
        ("seed.x=1", r"--set seed\.x=1: seed holds no keys"),
        ("sft.lora.r=-16", r"sft\.lora\.r: -16 is out of range"),
        ("name=other", r"--set name=other: the run's name is the params file's stem"),
    ]:
        with pytest.raises(params.ParamsError, match=where):
            params.load("params/smoke.yaml", [item])


def test_a_notebook_given_part_of_a_section_keeps_the_recipes_other_values():
    ns = params.load("params/smoke.yaml").to_dict()
    ns["quality"] = {"judge_sample": 3}  # papermill -f params/smoke.yaml -y 'quality: {...}'
    ns["evaluation"] = {**ns["evaluation"], "miti": {"max_utterances": 1}}
    p = params.from_namespace(ns)
    assert p.quality.judge_sample == 3
    assert p.quality.max_dialogue_chars == 600 and p.quality.max_tokens == 34  # smoke's, not 6000
    assert p.evaluation.miti.max_utterances == 1 and p.evaluation.miti.annomi_sample == 6
    ns["name"] = "no-such-recipe"
    with pytest.raises(params.ParamsError) as e:
        params.from_namespace(ns)
    msg = str(e.value)
    assert "section(s) ['quality', 'evaluation'] given in part" in msg
    assert "quality.max_dialogue_chars" in msg and "evaluation.miti.annomi_sample" in msg
    whole = params.load("params/smoke.yaml").to_dict()  # what the runner passes: used as is
    assert params.from_namespace(whole) == params.load("params/smoke.yaml")


def test_check_holds_sft_values_to_the_types_peft_and_trl_declare(tmp_path):
    f = write_params(
        tmp_path,
        "bad",
        sft={"config": {"bf16": "yes", "lr_scheduler_type": 3, "packing": True}},
    )
    assert check.check(str(f), environment=False) == [
        "sft.config.bf16: 'yes' is not of the type trl declares (bool | None)",
        (
            "sft.config.lr_scheduler_type: 3 is not of the type trl declares "
            "(transformers.trainer_utils.SchedulerType | str)"
        ),
    ]
    with pytest.raises(params.ParamsError, match=r"sft\.lora\.lora_alpha: expected an integer"):
        params.from_dict({"sft": {"lora": {"lora_alpha": 8.5}}})
