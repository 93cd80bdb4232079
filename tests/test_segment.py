"""Utterance segmentation (mi_llm.eval.segment): a hand-segmented set of replies, and AnnoMI's
utterances, which its annotators already segmented."""

from __future__ import annotations

import json
import re

import pytest

from mi_llm.eval import miti_check
from mi_llm.eval.segment import segment
from mi_llm.params import ROOT

HAND = ROOT / "tests" / "data" / "segmented_replies.jsonl"


def _squash(text: str) -> str:
    return re.sub(r"\s", "", text)


@pytest.fixture(scope="module")
def annomi():
    return miti_check.read_annomi(ROOT / "data" / "AnnoMI")


@pytest.mark.parametrize(
    "case",
    [json.loads(x) for x in HAND.read_text(encoding="utf-8").splitlines() if x.strip()],
    ids=lambda c: c["reply"][:24],
)
def test_hand_segmented_replies(case):
    # each reply cut as a human coder cut it (Chinese and English, sentences and clauses)
    assert segment(case["reply"]) == case["utterances"]


def test_segments_keep_every_character_in_order():
    text = "  嗯……你说得对。\n\nYou feel stuck, what would help?  -- 2.5 mg, e.g. this.  "
    assert _squash("".join(segment(text))) == _squash(text)


def test_annomi_boundaries_are_found_again(annomi):
    # AnnoMI cuts a few therapist turns into consecutive utterances; joined again, the cut must be
    # found: some prefix of the segments is exactly the first utterance
    pairs = []
    for _, d in annomi.groupby("transcript_id"):
        who, text = list(d["interlocutor"]), list(d["utterance_text"])
        pairs += [
            (text[i - 1], text[i])
            for i in range(1, len(who))
            if who[i] == who[i - 1] == "therapist"
        ]
    found = 0
    for first, second in pairs:
        prefixes = {_squash("".join(segment(first + " " + second)[:k])) for k in range(1, 99)}
        found += _squash(first) in prefixes
    assert len(pairs) >= 20
    # measured: 21 of 23; the two misses are cut mid-sentence ("[inaudible 00:06:01]", a dash)
    assert found / len(pairs) >= 0.9


def test_annomi_question_and_reflection_are_cut_apart(annomi):
    # an AnnoMI utterance that is a question and a reflection holds two thoughts: mostly two
    # sentences or a statement and a question after a comma (measured: 218 of 287, 76%)
    th = annomi[annomi["interlocutor"] == "therapist"]
    both = th[
        th["behaviours"].map(lambda b: b is not None and "Q" in b and bool({"SR", "CR"} & set(b)))
    ]
    cut = sum(len(segment(x)) >= 2 for x in both["utterance_text"])
    assert len(both) > 200 and cut / len(both) >= 0.7
    for x in th["utterance_text"]:
        assert _squash("".join(segment(x))) == _squash(x)
