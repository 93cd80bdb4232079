"""MITI 4.2.1: summary scores, answer parsing, worksheets, agreement, AnnoMI reference, the coder."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from mi_llm import params
from mi_llm.data.schema import DataError
from mi_llm.eval import miti, miti_check
from mi_llm.params import ROOT, MitiParams, ParamsError

ANNOMI = ROOT / "data" / "AnnoMI"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def annomi():
    return miti_check.read_annomi(ANNOMI)


# ----------------------------------------------------------------------------- summary scores
def test_summary_scores_from_hand_made_counts():
    counts = {
        "SR": 2,
        "CR": 3,
        "Q": 4,
        "SEEK": 1,
        "AF": 2,
        "AUTO": 1,
        "PERSUADE": 1,
        "CONFRONT": 1,
        "GI": 5,
    }
    s = miti.summary_scores(counts, {"CCT": 3, "SST": 4, "PARTNER": 4, "EMPATHY": 5})
    assert s["technical"] == 3.5 and s["relational"] == 4.5
    assert s["pct_cr"] == pytest.approx(60.0) and s["r_q"] == pytest.approx(1.25)
    assert math.isnan(s["mi_adherent"])  # a rate per coded utterance needs n_coded
    # MIA = SEEK + AF + AUTO = 4, MINA = PERSUADE + CONFRONT = 2 over 20 coded utterances
    s = miti.summary_scores(counts, {"CCT": 3, "SST": 4, "PARTNER": 4, "EMPATHY": 5}, n_coded=20)
    assert s["pct_mi_adherent"] == pytest.approx(100 * 4 / 6)
    assert s["mi_adherent"] == pytest.approx(4 / 20) and s["mi_non_adherent"] == pytest.approx(
        2 / 20
    )
    assert (s["technical_label"], s["relational_label"], s["pct_cr_label"], s["r_q_label"]) == (
        "fair",
        "good",
        "good",
        "fair",
    )


@pytest.mark.parametrize(
    "score,below,fair,good",
    [
        ("relational", 3.49, 3.5, 4.0),
        ("technical", 2.99, 3.0, 4.0),
        ("pct_cr", 39.9, 40.0, 50.0),
        ("r_q", 0.99, 1.0, 2.0),
    ],
)
def test_threshold_edges(score, below, fair, good):
    assert miti.label(score, below) == "below fair"
    assert miti.label(score, fair) == "fair"
    assert miti.label(score, (fair + good) / 2) == "fair"
    assert miti.label(score, good) == "good"
    assert miti.label(score, math.nan) == "n/a"


def test_division_by_zero_is_nan_not_zero():
    s = miti.summary_scores({"SR": 0, "CR": 0, "Q": 0})
    assert math.isnan(s["pct_cr"]) and math.isnan(s["r_q"]) and math.isnan(s["technical"])
    assert math.isnan(s["pct_mi_adherent"]) and s["pct_cr_label"] == "n/a"
    s = miti.summary_scores({"SR": 3, "Q": 0})  # reflections without questions: R:Q undefined
    assert s["pct_cr"] == 0.0 and math.isnan(s["r_q"])


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "answer,codes",
    [
        ("SR", ("SR",)),
        (" cr\n", ("CR",)),
        ("**Q**", ("Q",)),
        ("Simple Reflection", ("SR",)),
        ('{"code": "AF"}', ("AF",)),
        ("NONE.", ()),
        ("SR - the counselor repeats", ("SR",)),
        ("persuade with permission", ("PERSUADE_PERM",)),
        ("PERSUADE_PERM", ("PERSUADE_PERM",)),
        ('```json\n{"code": "SEEK"}\n```', ("SEEK",)),
        ("SR.", ("SR",)),
        ("Q\n", ("Q",)),
        ("Q\nThe counselor asks.", ("Q",)),  # a run-on without a code word
    ],
)
def test_parse_code_good(answer, codes):
    assert miti.parse_code(answer) == codes


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "I think it's a reflection",
        "XYZ",
        "Reflection",
        '{"code": "REFLECT"}',
        '{"label": "SR"}',
        "sr because it repeats",
        '{"code": "SR", "why": "x"}',
        "{not json",
        # not one coding: an echoed list, alternatives, doubt, a correction, two reflections
        "GI, PERSUADE, PERSUADE_PERM, Q, SR, CR, AF, SEEK, AUTO, CONFRONT, NONE",
        "GI, PERSUADE, PERSUADE_PERM, Q, SR, …",
        "SR or CR",
        "SR/CR",
        "Q or SR?",
        "Q?",
        "AF: no, actually SEEK",
        "AF\nno, actually SEEK",
        "SR, CR",
        "NONE, Q",
        "Q, SR, GI, AF",
        "SR - but it could be CR",
        "PERSUADE, PERSUADE_PERM",
        "SR 或 CR",
        # one utterance, one code (MITI 4.2.1): two codes, or a code word on a later line
        "CR, Q",
        "Q+SR",
        '{"codes": ["SR", "Q"]}',
        '{"code": ["SR"]}',
        "GI and Q",
        "CR, Q, GI",
        "Q\nCR",
        "Q\n\nSR",
        "SR\nSimple Reflection",
        "Q\nThis is a question",
    ],
)
def test_parse_code_refuses_to_guess(answer):
    with pytest.raises(ValueError):
        miti.parse_code(answer)


def test_parse_globals():
    ok = miti.parse_globals('Sure: {"CCT": 3, "SST": "4", "Partnership": 2, "EMPATHY": 5.0}')
    assert ok == {"CCT": 3, "SST": 4, "PARTNER": 2, "EMPATHY": 5}
    for bad in [
        '{"CCT": 3, "SST": 4, "PARTNER": 2}',
        '{"CCT": 6, "SST": 4, "PARTNER": 2, "EMPATHY": 5}',
        '{"CCT": 3.5, "SST": 4, "PARTNER": 2, "EMPATHY": 5}',
        "three, four, two, five",
        '{"CCT": <1-5>, "SST": <1-5>, "PARTNER": <1-5>, "EMPATHY": <1-5>}',
        '{"CCT": true, "SST": 4, "PARTNER": 2, "EMPATHY": 5}',
        '{"CCT": 3, "SST": 4, "PARTNER": 2, "EMPATHY": 5, "MOOD": 1}',
    ]:
        with pytest.raises(ValueError):
            miti.parse_globals(bad)


def test_unknown_miti_param_is_an_error():
    with pytest.raises(ParamsError, match=r"\['max_utterance'\]; did you mean 'max_utterances'"):
        params.from_dict({"evaluation": {"miti": {"max_utterance": 3}}})


# ----------------------------------------------------------------------------- units
def test_units_cut_each_reply_into_its_utterances(generations):
    from mi_llm.eval.segment import segment

    rows = [json.loads(x) for x in generations.read_text(encoding="utf-8").splitlines()]
    units = miti.units_from_generations(generations)
    assert {(u["model"], u["variant"]) for u in units} == {("tiny", "base"), ("tiny", "finetuned")}
    assert len(units) == 4
    for u in units:
        recs = sorted(
            (
                r
                for r in rows
                if (r["variant"], str(r["dialogue_id"])) == (u["variant"], u["dialogue_id"])
            ),
            key=lambda r: r["round"],
        )
        want = [s for r in recs for s in segment(r["reply"])]
        assert [u["turns"][ut["turn"]]["text"] for ut in u["utterances"]] == want
        assert [ut["round"] for ut in u["utterances"]] == [
            r["round"] for r in recs for _ in segment(r["reply"])
        ]
        assert len(miti.reply_codes(u)) == len(recs)  # the per-reply view: one row per round
    fine = next(u for u in units if u["variant"] == "finetuned")
    # the fine-tuned replies end with an added question: its own utterance, coded on its own
    assert all(
        ut["segment"] > 0
        for ut in fine["utterances"]
        if "你愿意多说一些吗" in fine["turns"][ut["turn"]]["text"]
    )
    first = units[0]["utterances"][
        0
    ]  # its context is the gold history, ending with the client's turn
    assert first["context"][-1] == units[0]["turns"][first["turn"] - 1]
    second = next(ut for ut in fine["utterances"] if ut["segment"] == 1)
    assert second["context"][-1]["speaker"] == "counselor"  # the reply's utterance before it
    two = miti.units_from_generations(generations, max_utterances=2)[0]["utterances"]
    assert {ut["round"] for ut in two} == {0, 1}  # the first two replies, all their utterances


def test_reply_codes_is_a_view_of_utterance_codes():
    unit = {"utterances": [
        {"turn": 1, "round": 0, "segment": 0, "codes": ["CR"]},
        {"turn": 2, "round": 0, "segment": 1, "codes": ["Q"]},
        {"turn": 4, "round": 1, "segment": 0, "codes": []},
        {"turn": 6, "round": 2, "segment": 0, "codes": None},
    ]}  # fmt: skip
    assert [(r["round"], r["label"], r["n_utterances"]) for r in miti.reply_codes(unit)] == [
        (0, "Q+CR", 2),
        (1, "NONE", 1),
        (2, None, 1),
    ]


def test_bad_generations_name_line_and_field(tmp_path):
    f = tmp_path / "generations.jsonl"
    f.write_text(
        '{"model": "m", "variant": "base", "dialogue_id": "1", "round": 0, "messages": []}\n'
    )
    with pytest.raises(DataError, match=r"line 1.*'reply'"):
        miti.units_from_generations(f)


# ----------------------------------------------------------------------------- AnnoMI
def _majority(full: pd.DataFrame, col: str) -> pd.Series:
    """Per utterance, the most frequent value of col among its annotators (ties: lowest id)."""
    keys = ["transcript_id", "utterance_id"]
    votes = full.groupby(keys + [col]).agg(
        n=("annotator_id", "size"), first=("annotator_id", "min")
    )
    votes = votes.reset_index().sort_values(["n", "first"], ascending=[False, True])
    return votes.drop_duplicates(keys).set_index(keys)[col]


def test_annomi_reference_counts_every_behaviour_of_an_utterance(annomi):
    # independent of the loader: pandas over the CSVs, each column's majority among annotators
    simple = pd.read_csv(ANNOMI / "AnnoMI-simple.csv", keep_default_na=False)
    full = pd.read_csv(ANNOMI / "AnnoMI-full.csv", keep_default_na=False)
    full = full[full["interlocutor"] == "therapist"]
    cols = [
        "question_exists",
        "reflection_exists",
        "reflection_subtype",
        "therapist_input_exists",
        "therapist_input_subtype",
    ]
    sub = pd.concat([_majority(full, c) for c in cols], axis=1)
    th = simple[simple["interlocutor"] == "therapist"].join(
        sub, on=["transcript_id", "utterance_id"]
    )
    ref = miti_check.annomi_reference(annomi, bootstrap=50)
    per_conv = ref[ref["definition"] == "per_conversation"].set_index("variant")
    ref = ref[ref["definition"] == "pooled"].set_index("variant")
    for quality, d in th.groupby("mi_quality"):
        q, refl = d["question_exists"] == "True", d["reflection_exists"] == "True"
        inp = d["therapist_input_exists"] == "True"
        # not coded (missing): a reflection without its subtype, or only negotiation/options input
        unknown = (refl & ~d["reflection_subtype"].isin(["simple", "complex"])) | (
            inp & ~d["therapist_input_subtype"].isin(["information", "advice"]) & ~q & ~refl
        )
        q = q & ~unknown
        sr = (refl & ~unknown & (d["reflection_subtype"] == "simple")).sum()
        cr = (refl & ~unknown & (d["reflection_subtype"] == "complex")).sum()
        gi = (inp & ~unknown & (d["therapist_input_subtype"] == "information")).sum()
        row = ref.loc[quality]
        assert (row["SR"], row["CR"], row["Q"], row["GI"]) == (sr, cr, q.sum(), gi)
        assert (q & refl).sum() > 0  # utterances that hold both: counted in Q and in SR/CR
        assert row["pct_cr"] == pytest.approx(100 * cr / (sr + cr))
        assert row["r_q"] == pytest.approx((sr + cr) / q.sum())
        assert row["n_utterances"] == len(d) and row["n_dialogues"] == d["transcript_id"].nunique()
        assert row["n_coded"] == len(d) - unknown.sum() and row["n_missing"] == unknown.sum()
        assert math.isnan(row["relational"]) and math.isnan(row["mi_adherent"])  # not annotated
        assert math.isnan(row["pct_mi_adherent"])
        assert row["r_q_ci_low"] < row["r_q"] < row["r_q_ci_high"]
        # per conversation: each session's (SR+CR)/Q, then the mean over sessions with a question
        d = d.assign(q=q, r=refl & ~unknown)
        per = d.groupby("transcript_id").apply(
            lambda s: s["r"].sum() / s["q"].sum() if s["q"].sum() else math.nan
        )
        assert per_conv.loc[quality, "r_q"] == pytest.approx(per.mean())
    assert ref.loc["high", "r_q"] > ref.loc["low", "r_q"]  # real MI quality shows in R:Q


def test_annomi_sample_is_stratified_and_seeded(annomi):
    units = miti_check.annomi_sample(annomi, 12, seed=7, context_turns=3)
    labels = [u["reference"] for u in units]
    th = annomi[(annomi["interlocutor"] == "therapist") & annomi["label"].notna()]
    assert len(set(th["label"])) > 12  # combinations such as Q+SR are labels of their own
    assert len(set(labels)) == 12  # round-robin over labels: 12 draws, 12 different labels
    assert units == miti_check.annomi_sample(annomi, 12, seed=7, context_turns=3)
    u = units[0]
    assert len(u["utterances"][0]["context"]) <= 3 and u["turns"][-1]["speaker"] == "counselor"
    assert all(u["cluster"] == u["dialogue_id"].split(":")[0] for u in units)  # the session
    long = next(u for u in units if len(u["utterances"]) > 1)  # cut into utterances to code
    assert len(long["utterances"]) == len(long["turns"]) - len(long["utterances"][0]["context"])


def _check_units(refs, codes):
    """One check unit per reference; each code list is that unit's utterances' codes."""
    return [
        {
            "reference": r,
            "utterances": [{"codes": None if c is None else [x]} for x in (c or [None])],
        }
        for r, c in zip(refs, codes)
    ]


def test_coder_check_kappa_ci_and_confusion_by_hand():
    # references Q Q SR SR; the coder says Q, SR (+ an affirmation: compares as SR), SR, missing.
    # compared: (Q,Q) (Q,SR) (SR,SR): po = 2/3; marginals ref Q 2/3 SR 1/3, coder Q 1/3 SR 2/3:
    # pe = 2/9 + 2/9 = 4/9; kappa = (2/3 - 4/9) / (1 - 4/9) = 0.4
    units = _check_units(["Q", "Q", "SR", "SR"], [["Q"], ["SR", "AF"], ["SR"], None])
    row, cm = miti_check.coder_check(units, bootstrap=500, seed=0)
    assert row["accuracy"] == pytest.approx(2 / 3) and row["kappa"] == pytest.approx(0.4)
    assert (row["n_sampled"], row["n_coded"], row["n_missing"]) == (4, 3, 1)
    assert -1 <= row["kappa_ci_low"] <= row["kappa"] <= row["kappa_ci_high"] <= 1
    assert row["kappa_ci_high"] - row["kappa_ci_low"] > 0.5  # three utterances: a wide CI
    assert set(map(tuple, cm[["reference", "coder", "n"]].to_numpy().tolist())) == {
        ("Q", "Q", 1),
        ("Q", "SR", 1),
        ("SR", "SR", 1),
        ("SR", "missing", 1),
    }
    # a question that reflects: both behaviours must be named to agree
    row, _ = miti_check.coder_check(
        _check_units(["Q+CR", "Q+CR"], [["Q", "CR"], ["Q"]]), bootstrap=10
    )
    assert row["accuracy"] == 0.5


def test_gold_sentences_map_to_miti_codes():
    gold = miti_check.read_gold(ROOT / MitiParams.gold_path)
    raw = pd.read_csv(ROOT / MitiParams.gold_path, keep_default_na=False)
    assert len(gold) == len(raw) == 1681
    by = dict(zip(raw["Ground truth"], gold["label"]))
    assert by["Open Question"] == by["Closed Question"] == "Q" and by["Complex Reflection"] == "CR"
    assert by["Advise without Permission"] == "PERSUADE" and by["Other"] == "NONE"
    assert pd.isna(by["Support"])  # a MITI 3 code: not drawn
    units = miti_check.gold_sample(gold, 10, seed=1)
    labels = [u["reference"] for u in units]
    assert len(set(labels)) == 10 and all(u["utterances"][0]["context"] == [] for u in units)


def test_gold_file_errors_name_the_line(tmp_path):
    f = tmp_path / "gold.csv"
    f.write_text("Text,Ground truth\nHi,Affirm\nSo,Reflect\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"gold.csv: record line 3: field 'Ground truth'"):
        miti_check.read_gold(f)


def test_miti_prompt_examples_are_valid_codes_and_run_ons_keep_the_leading_code():
    from mi_llm.llm import prompts

    parts = prompts.parts("miti_v2")
    shots = prompts.shots(parts, "code_")
    assert len(shots) == 6 and "{utterance}" in parts["code"] and "code_system" in parts
    assert [miti.parse_code(m["content"]) for m in shots[1::2]] == [("Q",), ("CR",), ("PERSUADE",)]
    v4 = prompts.parts(MitiParams.prompt_version)
    shots = prompts.shots(v4, "code_")
    assert [miti.parse_code(m["content"]) for m in shots[1::2]] == [
        ("Q",),
        ("CR",),
        ("PERSUADE",),
        ("Q",),
    ]  # one code each: the question after a reflection, cut from the same reply
    assert "SEEK, AUTO" not in v4["code_system"]  # no list of codes for a small model to echo
    assert "exactly one code" in v4["code_system"]
    assert miti.parse_code("CRспекти\n牠们") == ("CR",) and miti.parse_code("Q。你") == ("Q",)
    for bad in ["Questions", "QA", "CRITICAL", "我明白"]:
        with pytest.raises(ValueError):
            miti.parse_code(bad)
