"""The whole study, 01 -> 05, through papermill on tiny params: a few dialogues, a tiny random model.

The LLM behind the judge, the transcriber and the MITI coder is the local test server
(tests/openai_server.py) answering each prompt in its expected form; the models trained and
evaluated are a tiny random-weight Gemma 3 built from a config. Everything else is the real code
path on the shipped samples: loaders, statistics, validation, cache, split, TRL+PEFT training,
batched generation, metrics, MITI summaries, the forecaster, figures and the HTML report.
"""

import json
import re

import pandas as pd
import pytest
import yaml
from openai_server import serve

from mi_llm import params
from mi_llm.study import runner


def _answer(req: dict) -> str:
    """What a competent model would answer to each of the study's prompts."""
    text = "\n".join(str(m.get("content", "")) for m in req["messages"])
    last = str(req["messages"][-1]["content"])
    if "CPsyCoun" in text:  # the corpus-quality judge
        n = len(last) % 3
        return json.dumps(
            {
                "comprehensiveness": min(n, 2),
                "professionalism": n + 0,
                "authenticity": 3 - n,
                "safety": 1,
            }
        )
    if "改写" in last:  # one counselor turn in MI style, led by its tag when the prompt asks
        client = re.findall(r"来访者接着说：(.*)", last)[0][:12]
        reply = f"听起来“{client}”这件事让你挺不容易的。你希望接下来有什么样的变化呢？"
        return f"<mi:open_question> {reply}" if "<mi:" in text else reply
    if "Counselor utterance to code" in last:
        utterance = last.split("Counselor utterance to code:")[1]
        return "Q" if ("？" in utterance or "?" in utterance) else "CR"
    if "CCT" in last:
        return json.dumps({"CCT": 3, "SST": 4, "PARTNER": 4, "EMPATHY": 3})
    raise AssertionError(f"unexpected prompt: {last[:200]}")


@pytest.mark.slow  # 3-4 min; `make study` runs the same notebooks on the embedded model
def test_whole_study_runs_end_to_end(tmp_path, monkeypatch, tiny_model_dir):
    smoke = yaml.safe_load((params.ROOT / "params" / "smoke.yaml").read_text())
    with serve(_answer) as url:
        tiny = {
            **smoke,
            "name": "tiny",
            "model_paths": {"gemma3-270m": str(tiny_model_dir)},
            "llm": {
                **smoke["llm"],
                "provider": "remote",
                "model": "test-model",
                "base_url": str(url),
                "api_key_env": "MI_LLM_TEST_KEY",
            },
            "quality": {**smoke["quality"], "judge_sample": 2, "bootstrap": 50},
            "transcription": {
                **smoke["transcription"],
                "max_dialogues": 3,
                "n_train": 3,
                "n_test": 2,
            },
            "sft": {
                **smoke["sft"],
                "config": {
                    **smoke["sft"]["config"],
                    "max_steps": 4,
                    "save_steps": 2,
                    "learning_rate": 2e-3,
                    "max_length": 128,
                },
            },
            "evaluation": {
                **smoke["evaluation"],
                "max_dialogues": 2,
                "max_rounds": 2,
                "max_new_tokens": 8,
                "bootstrap": 50,
                "miti": {**smoke["evaluation"]["miti"], "annomi_sample": 4},
            },
            "figures": {**smoke["figures"], "out_dir": str(tmp_path / "figures")},
        }
        pfile = tmp_path / "tiny.yaml"
        pfile.write_text(yaml.safe_dump(tiny, allow_unicode=True))
        monkeypatch.setenv(params.RUNS_ENV, str(tmp_path / "runs"))
        monkeypatch.setenv("MI_LLM_TEST_KEY", "test-key-not-stored")
        run_dir = runner.run(str(pfile), progress=False)

    assert sorted(p.stem for p in (run_dir / "notebooks").glob("*.ipynb")) == [
        p.stem for p in runner.stages()
    ]
    q = pd.read_csv(run_dir / "01_corpus_quality" / "quality.csv")
    assert len(q) == 5 and q["selected"].sum() == 2 and q["total"].notna().all()
    assert set(q.loc[q["fixture"], "corpus"]) == {
        "psydtcorpus",
        "soulchatcorpus",
    }  # PROVENANCE.json
    assert (run_dir / "02_mi_transcription" / "train.jsonl").read_text().strip()
    assert (run_dir / "02_mi_transcription" / "test.jsonl").read_text().strip()
    report = json.loads((run_dir / "03_sft" / "gemma3-270m" / "report.json").read_text())
    assert report["steps"] == 4 and (run_dir / "03_sft" / "gemma3-270m" / "adapter").is_dir()
    m = pd.read_csv(run_dir / "04_evaluation" / "metrics.csv")
    assert set(m["variant"]) == set(smoke["evaluation"]["variants"]) >= {"base", "finetuned"}
    for name in ["paired_tests.csv", "therapy_metrics.csv", "miti_summary.csv", "forecaster.csv"]:
        assert not pd.read_csv(run_dir / "04_evaluation" / name).empty, name
    assert list((tmp_path / "figures").glob("*.png")) and list((tmp_path / "figures").glob("*.pdf"))
    assert (run_dir / "report" / "index.html").exists()
    page = (run_dir / "report" / "index.html").read_text()
    fixtures = next(x for x in page.splitlines() if "<b>Fixtures:</b>" in x)  # the report's line
    assert (
        "psydtcorpus" in fixtures and "soulchatcorpus" in fixtures and "cpsycound" not in fixtures
    )
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert all(prov["stages"][nb.stem]["finished"] for nb in runner.stages())
    everything = "".join(
        p.read_text(errors="ignore")
        for p in run_dir.rglob("*")
        if p.is_file() and p.suffix in {".json", ".jsonl", ".ipynb", ".csv", ".html"}
    )
    assert "test-key-not-stored" not in everything
