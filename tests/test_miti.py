"""MITI 4.2.1: summary scores, answer parsing, worksheets, agreement, AnnoMI reference, the coder."""

from __future__ import annotations

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
        # MITI 4.2.1 codes both behaviours of an utterance; the set comes back in CODES order
        ("CR, Q", ("Q", "CR")),
        ("Q+SR", ("Q", "SR")),
        ('{"codes": ["SR", "Q"]}', ("Q", "SR")),
        ("GI and Q", ("GI", "Q")),
        ("SR.", ("SR",)),
        ("CR, Q, GI", ("GI", "Q", "CR")),
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
def test_units_group_generations_in_round_order(generations):
    units = miti.units_from_generations(generations)
    assert {(u["model"], u["variant"]) for u in units} == {("tiny", "base"), ("tiny", "finetuned")}
    assert len(units) == 4 and all(len(u["utterances"]) == 3 for u in units)
    u = units[0]
    assert [t["speaker"] for t in u["turns"]] == ["client", "counselor"] * 3
    last = u["utterances"][-1]  # its context is the gold history, ending with the client's turn
    assert last["context"][-1] == u["turns"][last["turn"] - 1]
    assert len(miti.units_from_generations(generations, max_utterances=2)[0]["utterances"]) == 2


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
    ref = miti_check.annomi_reference(annomi).set_index("variant")
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
    assert ref.loc["high", "r_q"] > ref.loc["low", "r_q"]  # real MI quality shows in R:Q


def test_annomi_sample_is_stratified_and_seeded(annomi):
    units = miti_check.annomi_sample(annomi, 12, seed=7, context_turns=3)
    labels = [u["utterances"][0]["reference"] for u in units]
    th = annomi[(annomi["interlocutor"] == "therapist") & annomi["label"].notna()]
    assert len(set(th["label"])) > 12  # combinations such as Q+SR are labels of their own
    assert len(set(labels)) == 12  # round-robin over labels: 12 draws, 12 different labels
    assert units == miti_check.annomi_sample(annomi, 12, seed=7, context_turns=3)
    u = units[0]
    assert len(u["utterances"][0]["context"]) <= 3 and u["turns"][-1]["speaker"] == "counselor"


def _check_units(refs, codes):
    return [{"utterances": [{"reference": r, "codes": c}]} for r, c in zip(refs, codes)]


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
    labels = [u["utterances"][0]["reference"] for u in units]
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
    v3 = prompts.parts(MitiParams.prompt_version)
    shots = prompts.shots(v3, "code_")
    assert [miti.parse_code(m["content"]) for m in shots[1::2]] == [
        ("Q",),
        ("CR",),
        ("PERSUADE",),
        ("Q", "CR"),
    ]  # a reflection followed by a question
    assert "SEEK, AUTO" not in v3["code_system"]  # no list of codes for a small model to echo
    assert miti.parse_code("CRспекти\n牠们") == ("CR",) and miti.parse_code("Q。你") == ("Q",)
    for bad in ["Questions", "QA", "CRITICAL", "我明白"]:
        with pytest.raises(ValueError):
            miti.parse_code(bad)
