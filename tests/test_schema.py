"""The dialogue schema: JSONL round trip, chat-messages form, content hash, validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mi_llm.data import corpora, schema
from mi_llm.data.schema import DataError, Dialogue, Turn, read_jsonl, validate, write_jsonl

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def real():
    """Real dialogues of every kind: plain, with a system prompt, with topic, with AnnoMI codes."""
    return (
        corpora.load("cpsycound", DATA / "CPsyCounD" / "Data", limit=3)
        + corpora.load("psydtcorpus", DATA / "PsyDTCorpus" / "PsyDTCorpus_sample.json", limit=2)
        + corpora.load("cpsycoune", DATA / "CPsyCounE" / "Career")
        + corpora.load("annomi", DATA / "AnnoMI", limit=2)
    )


def test_jsonl_round_trip_is_lossless(real, tmp_path):
    path = tmp_path / "sub" / "dialogues.jsonl"
    write_jsonl(real, path)
    back = list(read_jsonl(path))
    assert back == real
    assert [d.content_hash() for d in back] == [d.content_hash() for d in real]
    raw = path.read_text(encoding="utf-8")
    prefixes = ("来访者：", "心理咨询师：", "求助者：", "支持者：")  # became speakers
    assert not any(t.text.startswith(prefixes) for d in back for t in d.turns)
    assert "\\u" not in raw and len(raw.splitlines()) == len(real)  # UTF-8, one record per line
    assert back[-1].turns[0].annotations["main_therapist_behaviour"] == "question"


def test_to_messages_maps_roles(real):
    d = real[3]  # PsyDTCorpus: system prompt kept in meta
    msgs = d.to_messages(system=d.meta["system"])
    assert msgs[0] == {"role": "system", "content": d.meta["system"]}
    assert [m["role"] for m in msgs[1:]] == [
        "user" if t.speaker == "client" else "assistant" for t in d.turns
    ]
    assert [m["content"] for m in msgs[1:]] == [t.text for t in d.turns]
    assert real[0].to_messages()[0]["role"] == "user"  # no system message unless asked


def test_content_hash_depends_on_turns_only(real):
    d = real[0]
    other = copy.deepcopy(d)
    other.id, other.meta, other.source = "x", {"topic": "y"}, {}
    assert other.content_hash() == d.content_hash()
    other.turns[1].text += "。"
    assert other.content_hash() != d.content_hash()


def test_validate_names_record_and_field():
    d = Dialogue(
        "a",
        "cpsycound",
        [Turn("client", "你好"), Turn("patient", "嗯")],
        source={"file": "f.txt", "record": 4},
    )
    with pytest.raises(DataError, match=r"f.txt: record 4: field 'turns\[1\].speaker'"):
        validate(d)
    d.turns[1] = Turn("counselor", "  ")
    with pytest.raises(DataError, match=r"turns\[1\].text"):
        validate(d)
    with pytest.raises(DataError, match="'turns'"):
        validate(Dialogue("b", "x", [], source={"file": "g", "record": 0}))


def test_read_jsonl_names_the_bad_line(real, tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(real[:2], path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "no turns"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl: record 2: field 'line'"):
        list(read_jsonl(path))


# ----------------------------------------------------------------------------- tags
def test_tag_round_trip():
    for tag in schema.TAGS:
        for text in ["听起来你很想改变，但又担心失败。", "So you want to cut down?", ""]:
            assert schema.strip_tag(schema.tag_text(text, tag)) == (tag, text)
    assert schema.strip_tag("没有标签的句子") == (None, "没有标签的句子")
    assert schema.strip_tag("[复杂反映] x") == (None, "[复杂反映] x")
    with pytest.raises(ValueError, match="unknown MI behaviour"):
        schema.tag_text("x", "advice")
    with pytest.raises(ValueError, match="unknown MI behaviour tag <mi:advice>"):
        schema.strip_tag("<mi:advice> x")


def test_require_tag_validates_transcriber_output():
    assert schema.require_tag(" <mi:open_question> 你想怎么做？") == (
        "open_question",
        "你想怎么做？",
    )
    with pytest.raises(ValueError, match="lacks a leading"):
        schema.require_tag("你想怎么做？")
    with pytest.raises(ValueError, match="no text"):
        schema.require_tag("<mi:open_question>  ")
