"""MITI worksheets for human coders: export, fill, import, and inter-rater agreement (kappa, ICC)."""

from __future__ import annotations

import csv
import math
import re

import pandas as pd
import pytest

from mi_llm.data.schema import DataError
from mi_llm.eval import miti, worksheets
from mi_llm.eval.segment import segment


@pytest.fixture(scope="module")
def generations(generations, tmp_path_factory):
    """The shared generations with each reply cut to its first utterance: one worksheet row per
    reply, so the rows below are fixed (a longer reply takes one row per utterance)."""
    import json

    out = tmp_path_factory.mktemp("ws_gen") / "generations.jsonl"
    recs = [json.loads(x) for x in generations.read_text(encoding="utf-8").splitlines()]
    out.write_text(
        "".join(
            json.dumps({**r, "reply": segment(r["reply"])[0]}, ensure_ascii=False) + "\n"
            for r in recs
        ),
        encoding="utf-8",
    )
    return out


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
    # one code per utterance (MITI 4.2.1); a blank row is an utterance with none
    _fill(files[0], {2: "CR", 4: "Q"}, {"CCT": 2, "SST": 3, "PARTNER": 4, "EMPATHY": 5})
    got = worksheets.read_worksheet(files[0])
    assert got == {
        "codes": [("CR",), ("Q",), ()],
        "globals": {"CCT": 2, "SST": 3, "PARTNER": 4, "EMPATHY": 5},
    }
    folder = worksheets.read_folder(tmp_path / "ws")
    assert set(folder) == {f.stem for f in files}


@pytest.mark.parametrize(
    "edit,where",
    [
        (
            {"CR": (2, "x"), "SR": (2, "x")},
            r"line 3: field 'CR': codes \['SR', 'CR'\]: an utterance takes one behaviour code",
        ),
        ({"CR": (2, "x"), "Q": (2, "x")}, r"line 3: field 'CR': codes \['Q', 'CR'\]"),
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
