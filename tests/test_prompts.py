"""Prompt rendering in one pass and the placeholder check of prompt files."""

from __future__ import annotations

import pytest

from mi_llm.data import transcribe
from mi_llm.data.schema import Dialogue, Turn
from mi_llm.llm import prompts


def test_render_never_fills_a_value_with_another_value():
    tpl = "上文：{context}\n原回复：{source}\n下一句：{next_client}"
    out = prompts.render(
        tpl,
        context="来访者：你们的模板里写着{source}和{next_client}吗？",
        source="S-TEXT",
        next_client="N-TEXT",
    )
    # the client's braces stay literal: nothing spliced into the context
    assert out == (
        "上文：来访者：你们的模板里写着{source}和{next_client}吗？\n原回复：S-TEXT\n下一句：N-TEXT"
    )
    assert out.count("S-TEXT") == 1 and out.count("N-TEXT") == 1


def test_turn_request_keeps_client_braces_literal():
    d = Dialogue(
        "x",
        "cpsycound",
        [
            Turn("client", "我看到{source}这个词，{next_client}是什么？"),
            Turn("counselor", "原来的回复。"),
            Turn("client", "好的。"),
        ],
    )
    parts = prompts.parts("mi_turn_v1")
    ((_, req),) = transcribe.turn_requests(d, parts, "mi_turn_v1")
    user = req.messages[-1]["content"]
    assert "我看到{source}这个词，{next_client}是什么？" in user
    assert user.count("原来的回复。") == 1


def test_check_names_missing_placeholders(tmp_path):
    good = tmp_path / "good.md"
    good.write_text("## system\nS\n## user\n{context} {source} {next_client}\n", encoding="utf-8")
    assert prompts.check(str(good), "transcription.turn") == []
    bad = tmp_path / "bad.md"
    bad.write_text("## system\nS\n## user\n请改写：{source}\n", encoding="utf-8")
    (err,) = prompts.check(str(bad), "transcription.turn")
    assert (
        "bad.md" in err
        and "'{context}'" in err
        and "'{next_client}'" in err
        and "'{source}'" not in err
    )
    assert "dialogue" in prompts.check(str(bad), "transcription.dialogue")[0]
    assert "no '## code' section" in prompts.check(str(good), "miti")[0]


@pytest.mark.parametrize(
    "version, use",
    [
        ("mi_v1", "transcription.dialogue"),
        ("mi_turn_v1", "transcription.turn"),
        ("mi_tagged_v1", "transcription.dialogue"),
        ("mi_turn_tagged_v1", "transcription.turn"),
        ("judge_v1", "quality"),
        ("judge_v2", "quality"),
        ("miti_v1", "miti"),
        ("miti_v2", "miti"),
        ("miti_v3", "miti"),
        ("miti_v4", "miti"),
    ],
)
def test_shipped_prompts_have_their_placeholders(version, use):
    assert prompts.check(version, use) == []
