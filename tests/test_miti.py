"""MITI 4.2.1: summary scores, answer parsing, worksheets, agreement, AnnoMI reference, the coder."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import openai_server  # tests/ is on sys.path (pytest rootdir-relative import)
import pandas as pd
import pytest

from mi_llm import corpora, evaluation, generate, llm, metrics, miti, params, worksheets
from mi_llm.params import ROOT, ParamsError
from mi_llm.schema import DataError

ANNOMI = ROOT / "data" / "AnnoMI"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def generations(tmp_path_factory):
    """generations.jsonl in stage 04's format from two real CPsyCounE dialogues (3 rounds each)."""
    ds = corpora.load("cpsycoune", ROOT / "data" / "CPsyCounE")[:2]
    records = [{"id": d.id, "topic": d.meta.get("topic"), "messages": d.to_messages()} for d in ds]
    rounds = generate.rounds(records, max_rounds=3, context_turns=4)
    out = tmp_path_factory.mktemp("gen") / "generations.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for variant in ("base", "finetuned"):
            for r in rounds:
                # the fine-tuned "model" adds a question to every reply: its Q count must show it
                reply = r["reference"] + ("你愿意多说一些吗？" if variant == "finetuned" else "")
                f.write(
                    json.dumps(
                        {"model": "tiny", "variant": variant, **r, "reply": reply},
                        ensure_ascii=False,
                    )
                    + "\n"
                )
    return out


@pytest.fixture(scope="module")
def annomi():
    return miti.read_annomi(ANNOMI)


def _utterance(req: dict) -> str:
    text = req["messages"][-1]["content"]
    return text.split("Counselor utterance to code:\n", 1)[1].split("\n\nAnswer with", 1)[0]


def _handler(seen: dict):
    """A coder that answers like a real model would: Q for questions, else SR; JSON globals.

    Utterances containing 'never' are answered with prose every time (missing after retries);
    those containing 'once' get prose first and a code on the retry.
    """

    def handle(req):
        text = req["messages"][-1]["content"]
        if "Counselor utterance to code:" not in text:
            return 'Here you go:\n```json\n{"CCT": 3, "SST": 4, "PARTNER": 4, "EMPATHY": 5}\n```'
        utt = _utterance(req)
        seen[utt] = seen.get(utt, 0) + 1
        if "never" in utt or ("once" in utt and seen[utt] == 1):
            return "I think the counselor is being supportive here."
        return "Q" if ("?" in utt or "？" in utt) else "SR"

    return handle


def _params(tmp_path, **miti_cfg):
    p = params.load("params/smoke.yaml")
    p.llm.cache_path = str(tmp_path / "cache.sqlite")
    p.llm.max_retries = 0
    p.evaluation.miti = {**p.evaluation.miti, "max_utterances": None, **miti_cfg}
    return p


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


def test_unknown_miti_param_is_an_error(tmp_path):
    with pytest.raises(ParamsError, match="max_utterance"):
        miti.settings(_params(tmp_path, max_utterance=3))


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


# ----------------------------------------------------------------------------- worksheets
def _fill(file, codes: dict, ratings: dict, extra=None):
    """Tick codes {utterance row: code} and ratings into an exported worksheet."""
    with open(file, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["row"] in map(str, codes):
            r[codes[int(r["row"])]] = "x"
        if r["row"] in ratings:
            r["rating"] = str(ratings[r["row"]])
        for col, (row, value) in (extra or {}).items():
            if r["row"] == str(row):
                r[col] = value
    with open(file, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, worksheets.COLUMNS)
        w.writeheader()
        w.writerows(rows)


def test_worksheet_export_fill_import_round_trip(generations, tmp_path):
    units = miti.units_from_generations(generations)
    files = worksheets.export(units, tmp_path / "ws")
    assert len(files) == 4 and (tmp_path / "ws" / "README.md").exists()
    index = pd.read_csv(tmp_path / "ws" / "index.csv")
    assert list(index["n_utterances"]) == [3, 3, 3, 3]
    blank = worksheets.read_worksheet(files[0])
    assert blank == {"codes": [()] * 3, "globals": {g: None for g in miti.GLOBALS}}
    # row 4 holds a reflection and a question: both ticked, both kept
    _fill(
        files[0],
        {2: "CR", 4: "Q"},
        {"CCT": 2, "SST": 3, "PARTNER": 4, "EMPATHY": 5},
        extra={"SR": (4, "x")},
    )
    got = worksheets.read_worksheet(files[0])
    assert got == {
        "codes": [("CR",), ("Q", "SR"), ()],
        "globals": {"CCT": 2, "SST": 3, "PARTNER": 4, "EMPATHY": 5},
    }
    folder = worksheets.read_folder(tmp_path / "ws")
    assert set(folder) == {f.stem for f in files}


@pytest.mark.parametrize(
    "edit,where",
    [
        (
            {"CR": (2, "x"), "SR": (2, "x")},
            r"line 3: field 'CR': codes \['SR', 'CR'\] cannot be one",
        ),
        (
            {"CR": (2, "x"), "Q": (2, "x"), "GI": (2, "x"), "AF": (2, "x")},
            r"line 3: field 'AF': codes",
        ),
        ({"SR": (1, "x")}, r"line 2: field 'SR': client utterances are not coded"),
        ({"AF": (2, "maybe")}, r"line 3: field 'AF': 'maybe' is not a tick"),
        ({"rating": ("CCT", "7")}, r"line 8: field 'rating': '7' is not an integer"),
        ({"rating": (2, "3")}, r"line 3: field 'rating': only global rows"),
        ({"speaker": (3, "therapist")}, r"line 4: field 'speaker'"),
    ],
)
def test_bad_worksheets_name_file_line_and_column(generations, tmp_path, edit, where):
    file = worksheets.export(miti.units_from_generations(generations)[:1], tmp_path)[0]
    _fill(file, {}, {}, extra=edit)
    with pytest.raises(DataError, match=re.escape(file.name) + ".*" + where):
        worksheets.read_worksheet(file)


def test_worksheet_missing_column_or_global(generations, tmp_path):
    file = worksheets.export(miti.units_from_generations(generations)[:1], tmp_path)[0]
    df = pd.read_csv(file, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    df.drop(columns="CONFRONT").to_csv(file, index=False)
    with pytest.raises(DataError, match="'CONFRONT': missing column"):
        worksheets.read_worksheet(file)
    df[df["row"] != "EMPATHY"].to_csv(file, index=False)
    with pytest.raises(DataError, match=r"\['EMPATHY'\] missing"):
        worksheets.read_worksheet(file)


# ----------------------------------------------------------------------------- agreement
def test_icc_2_1_matches_shrout_fleiss_1979():
    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; their Table 4 gives ICC(2,1) = .29
    x = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert worksheets.icc_2_1(x) == pytest.approx(0.2898, abs=1e-4)
    assert worksheets.icc_2_1([[1, 1], [3, 3], [5, 5]]) == pytest.approx(1.0)
    assert worksheets.icc_2_1([[1, 2], [3, 4], [5, 6]]) < 1.0  # a constant offset is disagreement
    assert math.isnan(worksheets.icc_2_1([[3, 3], [3, 3]]))  # no variance: 0/0
    assert math.isnan(worksheets.icc_2_1([[3, 4]]))  # one target


def test_cohen_kappa_known_table():
    # 2x2 table [[20, 5], [10, 15]]: po = 0.7, pe = (25*30 + 25*20) / 50^2 = 0.5, kappa = 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert metrics.cohen_kappa(a, b) == pytest.approx(0.4)
    assert math.isnan(metrics.cohen_kappa(["Q", "Q"], ["Q", "Q"]))


def test_agreement_between_coders(generations, tmp_path):
    units = miti.units_from_generations(generations)
    coders = {}
    for name, codes, shift in [
        ("a", {2: "SR", 4: "Q", 6: "CR"}, 0),
        ("b", {2: "SR", 4: "Q", 6: "SR"}, 1),
    ]:
        files = worksheets.export(units, tmp_path / name)
        for i, f in enumerate(files):
            _fill(
                f, codes, {"CCT": 1 + i, "SST": 2 + i % 2, "PARTNER": 3, "EMPATHY": 1 + i + shift}
            )
        coders[name] = str(tmp_path / name)
    rows = worksheets.human_agreement(
        coders,
        [{**u, "utterances": [{**ut, "code": "SR"} for ut in u["utterances"]]} for u in units],
    )
    ab = rows[0]
    assert ab["comparison"] == "a_vs_b" and ab["n_compared"] == 12
    assert ab["accuracy"] == pytest.approx(8 / 12)
    assert ab["icc_CCT"] == pytest.approx(1.0) and ab["icc_EMPATHY"] < 1.0
    assert math.isnan(ab["icc_PARTNER"])  # everyone rated 3: no variance
    assert [r["comparison"] for r in rows] == ["a_vs_b", "a_vs_auto", "b_vs_auto"]
    assert rows[1]["n_rated"] == 0  # the automatic "coder" above rated no globals


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
    ref = miti.annomi_reference(annomi).set_index("variant")
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
    units = miti.annomi_sample(annomi, 12, seed=7, context_turns=3)
    labels = [u["utterances"][0]["reference"] for u in units]
    th = annomi[(annomi["interlocutor"] == "therapist") & annomi["label"].notna()]
    assert len(set(th["label"])) > 12  # combinations such as Q+SR are labels of their own
    assert len(set(labels)) == 12  # round-robin over labels: 12 draws, 12 different labels
    assert units == miti.annomi_sample(annomi, 12, seed=7, context_turns=3)
    u = units[0]
    assert len(u["utterances"][0]["context"]) <= 3 and u["turns"][-1]["speaker"] == "counselor"


def _check_units(refs, codes):
    return [{"utterances": [{"reference": r, "codes": c}]} for r, c in zip(refs, codes)]


def test_coder_check_kappa_ci_and_confusion_by_hand():
    # references Q Q SR SR; the coder says Q, SR (+ an affirmation: compares as SR), SR, missing.
    # compared: (Q,Q) (Q,SR) (SR,SR): po = 2/3; marginals ref Q 2/3 SR 1/3, coder Q 1/3 SR 2/3:
    # pe = 2/9 + 2/9 = 4/9; kappa = (2/3 - 4/9) / (1 - 4/9) = 0.4
    units = _check_units(["Q", "Q", "SR", "SR"], [["Q"], ["SR", "AF"], ["SR"], None])
    row, cm = miti.coder_check(units, bootstrap=500, seed=0)
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
    row, _ = miti.coder_check(_check_units(["Q+CR", "Q+CR"], [["Q", "CR"], ["Q"]]), bootstrap=10)
    assert row["accuracy"] == 0.5


def test_gold_sentences_map_to_miti_codes():
    gold = miti.read_gold(ROOT / miti.DEFAULTS["gold_path"])
    raw = pd.read_csv(ROOT / miti.DEFAULTS["gold_path"], keep_default_na=False)
    assert len(gold) == len(raw) == 1681
    by = dict(zip(raw["Ground truth"], gold["label"]))
    assert by["Open Question"] == by["Closed Question"] == "Q" and by["Complex Reflection"] == "CR"
    assert by["Advise without Permission"] == "PERSUADE" and by["Other"] == "NONE"
    assert pd.isna(by["Support"])  # a MITI 3 code: not drawn
    units = miti.gold_sample(gold, 10, seed=1)
    labels = [u["utterances"][0]["reference"] for u in units]
    assert len(set(labels)) == 10 and all(u["utterances"][0]["context"] == [] for u in units)


def test_gold_file_errors_name_the_line(tmp_path):
    f = tmp_path / "gold.csv"
    f.write_text("Text,Ground truth\nHi,Affirm\nSo,Reflect\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"gold.csv: record line 3: field 'Ground truth'"):
        miti.read_gold(f)


# ----------------------------------------------------------------------------- the coder
def test_coder_end_to_end_against_a_local_server(generations, tmp_path, monkeypatch):
    text = generations.read_text(encoding="utf-8").splitlines()
    rec = json.loads(text[0])
    rec["reply"] = "never coded: 我明白你的感受"  # answered with prose every time -> missing
    rec2 = json.loads(text[1])
    rec2["reply"] = "once: 我明白你的感受"  # prose first, a code on the retry
    text[0], text[1] = json.dumps(rec, ensure_ascii=False), json.dumps(rec2, ensure_ascii=False)
    generations = tmp_path / "generations.jsonl"
    generations.write_text("\n".join(text) + "\n", encoding="utf-8")
    p = _params(tmp_path, annomi_sample=6, gold_sample=5, parse_retries=1, rate_globals=True)
    out = tmp_path / "out"
    out.mkdir()
    seen = {}
    with openai_server.serve(_handler(seen)) as url:
        ep = llm.Endpoint(url, "test-model", "test-key")
        res = evaluation.write_miti(p, generations, out, endpoint=ep)
        n_calls = url.stats.count
        again = evaluation.write_miti(p, generations, out, endpoint=ep)  # everything from the cache
        assert url.stats.count == n_calls
    assert seen["never coded: 我明白你的感受"] == 2 and seen["once: 我明白你的感受"] == 2
    codes = [
        json.loads(x) for x in (out / "miti_codes.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(codes) == 4 and all(
        c["prompt_version"] == miti.DEFAULTS["prompt_version"] for c in codes
    )
    checks = [
        json.loads(x) for x in (out / "miti_check_codes.jsonl").read_text("utf-8").splitlines()
    ]
    assert [c["check"] for c in checks] == ["annomi"] * 6 + ["gold"] * 5
    utts = {c["turns"][ut["turn"]]["text"]: ut for c in codes for ut in c["utterances"]}
    never, once = utts["never coded: 我明白你的感受"], utts["once: 我明白你的感受"]
    assert never["codes"] is None and not never["ok"] and len(never["raw"]) == 2
    assert "not a MITI code" in never["error"]
    assert once["codes"] == ["SR"] and once["ok"] and len(once["raw"]) == 2
    s = res["summary"].set_index(["model", "variant"])
    base, ft = s.loc[("tiny", "base")], s.loc[("tiny", "finetuned")]
    assert ft["Q"] == 6 and ft["SR"] == 0 and ft["n_coded"] == 6  # every fine-tuned reply asks
    assert (
        base["n_utterances"] == 6
        and base["n_coded"] == 5
        and base["pass_rate"] == pytest.approx(5 / 6)
    )
    assert base["n_missing"] == 1 and ft["n_missing"] == 0
    assert (
        base["technical"] == 3.5
        and base["relational"] == 4.5
        and base["relational_label"] == "good"
    )
    assert set(s.index) >= {("annomi", "high"), ("annomi", "low")}
    saved = pd.read_csv(out / "miti_summary.csv")
    assert list(saved.columns) == miti.SUMMARY_COLUMNS and len(saved) == 4
    agree = pd.read_csv(out / "coder_agreement.csv")
    assert list(agree["comparison"]) == [
        "auto_vs_annomi",
        "auto_vs_welivita_pu_gold",
        "welivita_pu_classifier_vs_gold",
    ]
    # the authors' classifier on the same sentences, from the CSV's Prediction column by hand
    raw = pd.read_csv(ROOT / miti.DEFAULTS["gold_path"], keep_default_na=False)
    rows = raw.loc[[int(c["dialogue_id"].split(":")[1]) for c in checks[6:]]]
    pred = [
        miti.code_label(miti.GOLD_CODES[x]) if x in miti.GOLD_CODES else None
        for x in rows["Prediction"]
    ]
    truth = [miti.code_label(miti.GOLD_CODES[x]) for x in rows["Ground truth"]]
    hits = [a == b for a, b in zip(pred, truth) if a is not None]
    assert agree.loc[2, "n_coded"] == len(hits) and agree.loc[2, "accuracy"] == pytest.approx(
        np.mean(hits)
    )
    # the handler answers Q for a question mark, else SR: the expected agreement by hand
    for row, c in zip(list(agree.itertuples())[:2], (checks[:6], checks[6:])):
        said = ["Q" if "?" in u["turns"][-1]["text"] else "SR" for u in c]
        truth = [u["utterances"][0]["reference"] for u in c]
        assert row.n_sampled == len(c) and row.accuracy == pytest.approx(
            np.mean([a == b for a, b in zip(said, truth)])
        )
    conf = pd.read_csv(out / "coder_confusion.csv")
    assert conf.groupby("comparison")["n"].sum().to_dict() == {
        "auto_vs_annomi": 6,
        "auto_vs_welivita_pu_gold": 5,
        "welivita_pu_classifier_vs_gold": 5,
    }
    assert len(list((out / "worksheets").glob("tiny__*.csv"))) == 4
    pd.testing.assert_frame_equal(again["summary"], res["summary"])


def test_coder_opens_the_remote_endpoint_itself(generations, tmp_path, monkeypatch):
    recs = [json.loads(x) for x in generations.read_text(encoding="utf-8").splitlines()]
    base = {(r["dialogue_id"], r["round"]): r["reply"] for r in recs if r["variant"] == "base"}
    for r in recs:  # both variants give the same replies: the same prompt is asked once
        r["reply"] = base[(r["dialogue_id"], r["round"])]
    same = tmp_path / "generations.jsonl"
    same.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8"
    )
    with openai_server.serve(_handler({})) as url:
        p = _params(tmp_path, annomi_sample=0, gold_sample=0, rate_globals=False)
        p.llm.provider, p.llm.base_url = "remote", url
        monkeypatch.setenv(p.llm.api_key_env, "test-key")
        res = evaluation.write_miti(p, same, tmp_path, endpoint=None)
    assert url.stats.count == 6 and len(recs) == 12
    s = res["summary"].set_index("variant")
    assert s.loc["base", "SR"] == s.loc["finetuned", "SR"] and s.loc["base", "n_coded"] == 6
    assert np.isnan(s.loc["base", "technical"])  # globals not rated
    assert res["agreement"].empty


def test_miti_prompt_examples_are_valid_codes_and_run_ons_keep_the_leading_code():
    from mi_llm import prompts

    parts = prompts.parts("miti_v2")
    shots = prompts.shots(parts, "code_")
    assert len(shots) == 6 and "{utterance}" in parts["code"] and "code_system" in parts
    assert [miti.parse_code(m["content"]) for m in shots[1::2]] == [("Q",), ("CR",), ("PERSUADE",)]
    v3 = prompts.parts(miti.DEFAULTS["prompt_version"])
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
