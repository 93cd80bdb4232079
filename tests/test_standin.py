"""The strong-model stand-in answers the study's real prompts in the forms the stages accept, and the
dry-run wiring never lets a real endpoint or key in."""

from __future__ import annotations

import openai
import pytest

from mi_llm import params
from mi_llm.data import corpora, quality, transcribe, transcript
from mi_llm.eval import miti
from mi_llm.llm import prompts, standin
from mi_llm.params import ROOT
from mi_llm.study import dryrun

PAPER = params.load("params/paper.yaml")


def _dialogues():
    out = []
    for corpus, path in [
        ("cpsycound", "data/CPsyCounD/Data"),
        ("smilechat", "data/SmileChat/data"),
        ("cpsycoune", "data/CPsyCounE"),
        ("psydtcorpus", "data/PsyDTCorpus/PsyDTCorpus_sample.json"),
    ]:
        out += corpora.load(corpus, ROOT / path, limit=6)
    return out


DIALOGUES = _dialogues()


@pytest.mark.parametrize("tagged", [False, True])
def test_rewrites_pass_the_papers_validation_and_keep_client_turns(tagged):
    version = "mi_tagged_v1" if tagged else "mi_v1"
    tp = PAPER.transcription.__class__(
        **{**vars(PAPER.transcription), "tag_behaviour": tagged, "prompt_version": version}
    )
    parts = prompts.parts(version)
    for d in DIALOGUES:
        req = transcribe.dialogue_request(d, parts, version)
        text = standin.answer({"messages": req.messages})
        turns = transcript.validate_dialogue(
            text, d, tp
        )  # raises on anything the stage would reject
        src = transcript.parse_dialogue(transcript.format_turns(d.turns))
        assert [t.text for t in turns if t.speaker == "client"] == [
            t.text for t in src if t.speaker == "client"
        ]
        new = [t.text for t in turns if t.speaker == "counselor"]
        assert len(new) == sum(t.speaker == "counselor" for t in src)
        assert all("？" in t for t in new)  # each counselor turn ends on an open question
        assert all(t.startswith("<mi:") for t in new) == tagged


def test_judge_scores_parse_and_follow_the_counselor_side():
    parts = prompts.parts("judge_v2")
    scores = []
    for d in DIALOGUES:
        user = prompts.render(parts["user"], dialogue=transcript.format_turns(d.turns))
        s = quality.parse_judgement(
            standin.answer(
                {
                    "messages": [
                        {"role": "system", "content": parts["system"]},
                        {"role": "user", "content": user},
                    ]
                }
            )
        )
        scores.append(s)
    assert len({tuple(sorted(s.items())) for s in scores}) > 1  # the scores depend on the dialogue
    monologue = "来访者：我很难过。\n咨询师：" + "你要这样做。" * 60
    s = quality.parse_judgement(standin.judge("对话：\n" + monologue))
    assert s["authenticity"] == 1 and s["professionalism"] == 0


def test_miti_codes_and_globals_parse():
    parts = prompts.parts("miti_v3")
    cases = {
        "听起来你很想改变，又有些害怕。": ("CR",),
        "你最近睡得怎么样？": ("Q",),
        "你必须马上戒烟。": ("PERSUADE",),
        "如果你愿意，我可以分享一些做法。": ("SEEK",),
        "每天走路三十分钟有助于睡眠。": ("GI",),
    }
    for utt, code in cases.items():
        user = prompts.render(parts["code"], context="Client: 我睡不好。", utterance=utt)
        assert (
            miti.parse_code(standin.answer({"messages": [{"role": "user", "content": user}]}))
            == code
        )
    transcript = miti.render_turns(
        [
            {"speaker": "client", "text": "我想少喝点酒。"},
            {"speaker": "counselor", "text": "听起来你已经在考虑改变了。"},
        ]
    )
    g = miti.parse_globals(
        standin.answer(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": prompts.render(parts["globals"], transcript=transcript),
                    }
                ]
            }
        )
    )
    assert set(g) == {"CCT", "SST", "PARTNER", "EMPATHY"} and g["PARTNER"] == 5


def test_unknown_prompt_is_a_400_not_a_guess():
    with standin.serving() as url:
        client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="does not know this prompt"):
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hello"}]
            )


def test_dryrun_params_only_reach_127_0_0_1_with_a_dummy_key(monkeypatch):
    p = params.load("params/paper-dryrun.yaml")
    assert dryrun.check(p) == 18765
    assert p.sft.models == PAPER.sft.models and p.evaluation.variants == PAPER.evaluation.variants
    assert p.transcription.unit == "dialogue" and p.evaluation.miti.rate_globals
    for bad in (
        {"base_url": None},
        {"base_url": "https://api.openai.com/v1"},
        {"provider": "embedded"},
        {"api_key_env": "OPENAI_API_KEY"},
    ):
        q = params.load("params/paper-dryrun.yaml")
        for k, v in bad.items():
            setattr(q.llm, k, v)
        with pytest.raises(params.ParamsError, match="dry run"):
            dryrun.check(q)
