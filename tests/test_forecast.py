"""The MI strategy forecaster: AnnoMI labels, session split, baselines, scores, tags, evaluate()."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from mi_llm import params
from mi_llm.data import schema
from mi_llm.data.schema import DataError, Dialogue, Turn
from mi_llm.eval import forecast, forecast_eval
from mi_llm.params import ForecasterParams

ANNOMI = params.path(ForecasterParams.annomi_path)


@pytest.fixture(scope="module")
def sessions():
    """Every AnnoMI session (the shipped folder, through mi_llm.data.corpora)."""
    return forecast.load_sessions(ANNOMI)


def _dialogue(did, labels, quality="high"):
    """A hand-made session: client/counselor alternating, counselor turns labelled as given."""
    turns = []
    for i, lab in enumerate(labels):
        turns.append(Turn("client", f"client says thing number {i}."))
        turns.append(Turn("counselor", f"counselor reply {i}?", {"behaviour": lab}))
    return Dialogue(did, "annomi", turns, {"mi_quality": quality})


# ----------------------------------------------------------------------------- labels
def test_annotation_label_maps_subtypes():
    row = {
        "main_therapist_behaviour": "question",
        "question_subtype": "open",
        "reflection_subtype": "n/a",
    }
    assert forecast.annotation_label(row) == "open_question"
    row = {
        "main_therapist_behaviour": "reflection",
        "question_subtype": "n/a",
        "reflection_subtype": "complex",
    }
    assert forecast.annotation_label(row) == "complex_reflection"
    row = {
        "main_therapist_behaviour": "reflection",
        "question_subtype": "n/a",
        "reflection_subtype": "n/a",
    }
    assert forecast.annotation_label(row) is None  # one such row in AnnoMI: abstains in the vote
    with pytest.raises(ValueError, match="unknown main_therapist_behaviour"):
        forecast.annotation_label({"main_therapist_behaviour": "advice"})


def test_sessions_label_every_counselor_turn(sessions):
    assert len(sessions) == 133  # 110 high + 23 low (PROVENANCE.md)
    assert sum(d.meta["mi_quality"] == "low" for d in sessions) == 23
    labels = [forecast.turn_label(t) for d in sessions for t in d.turns if t.speaker == "counselor"]
    assert len(labels) == 4882 and set(labels) - {None} == set(schema.TAGS)
    assert labels.count(None) <= 2  # a reflection whose annotators' majority subtype is n/a
    assert len(forecast.load_sessions(ANNOMI, ["low"])) == 23


def test_turn_label_sources_and_bad_code():
    assert forecast.turn_label(Turn("counselor", "x", {"behaviour": "other"})) == "other"
    assert forecast.turn_label(Turn("counselor", "x")) is None
    bad = Turn("counselor", "x", {"main_therapist_behaviour": "advice"})
    with pytest.raises(DataError, match="f.csv: record 3: field 'main_therapist_behaviour'"):
        forecast.turn_label(bad, ("f.csv", 3))


# ----------------------------------------------------------------------------- split
def test_split_is_by_recording_seeded_and_stratified(sessions):
    train, test = forecast.split_sessions(sessions, 0.2, seed=42)
    assert not {d.id for d in train} & {d.id for d in test}  # no session on both sides
    assert len(train) + len(test) == len(sessions)
    assert {d.meta["mi_quality"] for d in test} == {"high", "low"}  # both strata held out
    # independent of the loader: the recording of each transcript from the CSV itself
    csv = pd.read_csv(ANNOMI / "AnnoMI-simple.csv", keep_default_na=False)
    url = csv.groupby("transcript_id")["video_url"].first()
    assert url.value_counts().max() > 1  # recordings cut into several transcripts exist
    train_urls = {url[int(d.id)] for d in train}
    test_urls = {url[int(d.id)] for d in test}
    assert not train_urls & test_urls  # no recording on both sides (seed 42 had 5 by transcript)
    _, _, g_train = forecast.examples(train)
    _, _, g_test = forecast.examples(test)
    assert not set(g_train) & set(g_test)  # the CV and bootstrap groups are recordings too
    assert set(g_test) == test_urls
    again = forecast.split_sessions(sessions, 0.2, seed=42)[1]
    assert [d.id for d in again] == [d.id for d in test]
    assert [d.id for d in forecast.split_sessions(sessions, 0.2, seed=7)[1]] != [d.id for d in test]


def test_split_keeps_parts_of_one_recording_together():
    parts = []
    for r in range(10):  # 10 recordings of 3 transcripts each
        for k in range(3):
            d = _dialogue(f"{r}-{k}", ["other", "open_question"])
            d.meta["video_url"] = f"https://example.org/v{r}"
            parts.append(d)
    for seed in range(5):
        train, test = forecast.split_sessions(parts, 0.3, seed)
        got = {d.id.split("-")[0] for d in test}
        assert len(test) == 3 * len(got)  # every part of a held-out recording is held out
        assert not got & {d.id.split("-")[0] for d in train}


def test_examples_untagged_hide_history_labels():
    d = _dialogue("s", ["other", "open_question", "complex_reflection"])
    X, y, _ = forecast.examples([d])
    Xu, yu, _ = forecast.examples([d], tagged=False)
    assert list(y) == list(yu) == ["other", "open_question", "complex_reflection"]
    assert list(X["prev_label"]) == ["none", "other", "open_question"]
    assert list(Xu["prev_label"]) == ["none", "none", "none"]


def test_beats_baselines_needs_the_paired_ci_above_zero():
    t = pd.DataFrame(
        {
            "role": ["baseline", "forecaster", "forecaster", "forecaster"],
            "macro_f1": [0.30, 0.32, 0.40, 0.25],
            "delta_macro_f1_ci_low": [0.0, -0.05, 0.02, -0.1],
        }
    )
    # the first forecaster's point estimate is above the baseline, its CI is not
    assert list(forecast_eval.beats_baselines(t)) == [False, False, True, False]


# ----------------------------------------------------------------------------- baselines, scores
def test_baselines_on_a_hand_made_case():
    d = _dialogue("s", ["other", "open_question", "open_question", "complex_reflection"])
    X, y, _ = forecast.examples([d])
    assert list(y) == ["other", "open_question", "open_question", "complex_reflection"]
    assert forecast.majority_baseline(y) == "open_question"
    draws = forecast_eval.class_prior_baseline(["a"] * 3 + ["b"], 4000, seed=0)
    assert abs((draws == "a").mean() - 0.75) < 0.03  # the training shares, by hand
    # first turn: no previous behaviour -> the fallback; then the previous label
    assert list(forecast_eval.previous_baseline(X, "other")) == [
        "other",
        "other",
        "open_question",
        "open_question",
    ]
    assert forecast.majority_baseline(["other", "other", "simple_reflection"]) == "other"


def test_score_matches_sklearn_and_cis_bracket():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y = rng.choice(schema.TAGS, 400)
    p = np.where(rng.random(400) < 0.6, y, rng.choice(schema.TAGS, 400))
    groups = np.repeat(np.arange(20), 20)
    s = forecast_eval.score(y, p, groups, bootstrap=300, seed=0)
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    per = f1_score(y, p, average=None, labels=list(schema.TAGS))
    for tag, v in zip(schema.TAGS, per):
        assert s[f"f1_{tag}"] == pytest.approx(v)
        assert s[f"f1_{tag}_ci_low"] <= v <= s[f"f1_{tag}_ci_high"]
    assert s["macro_f1_ci_low"] < s["macro_f1"] < s["macro_f1_ci_high"]
    assert s["n_test_recordings"] == 20 and s["n_test"] == 400
    perfect = forecast_eval.score(y, y, groups, bootstrap=50)
    assert perfect["macro_f1"] == perfect["macro_f1_ci_low"] == 1.0
    same = forecast_eval.score(y, p, groups, bootstrap=50, reference=p)
    assert (
        same["delta_macro_f1"]
        == same["delta_macro_f1_ci_low"]
        == same["delta_macro_f1_ci_high"]
        == 0.0
    )
    better = forecast_eval.score(y, y, groups, bootstrap=200, reference=p)
    assert better["delta_macro_f1"] == pytest.approx(1.0 - s["macro_f1"])
    assert (
        0
        < better["delta_macro_f1_ci_low"]
        <= better["delta_macro_f1"]
        <= better["delta_macro_f1_ci_high"]
    )


# ----------------------------------------------------------------------------- forecaster
@pytest.fixture(scope="module")
def fitted(sessions):
    s = ForecasterParams()
    train, test = forecast.split_sessions(sessions, s.test_size, seed=42)
    return forecast.fit(train, s, seed=42), test, s


def test_forecaster_beats_both_baselines_on_held_out_sessions(fitted):
    bundle, test, s = fitted
    X, y, g = forecast.examples(test, s.context_turns)
    maj = forecast_eval.score(y, np.full(len(y), bundle["majority"]), g, bootstrap=10)["macro_f1"]
    prev = forecast_eval.score(
        y, forecast_eval.previous_baseline(X, bundle["majority"]), g, bootstrap=10
    )["macro_f1"]
    # the text variant beats both; with the split by recording the language-independent one no
    # longer does (seed 42: 0.335 vs 0.340 for the previous behaviour), which forecaster.csv shows
    f1 = forecast_eval.score(y, bundle["text"].predict(X), g, bootstrap=10)["macro_f1"]
    assert f1 > max(maj, prev), (f1, maj, prev)


def test_predict_next_reads_tags_and_chooses_variant(fitted, tmp_path):
    bundle, test, _ = fitted
    bundle = forecast.load(forecast.save(bundle, tmp_path / "f.joblib"))
    d = test[0]
    i = next(i for i, t in enumerate(d.turns) if i > 4 and t.speaker == "counselor")
    label = forecast.predict_next(bundle, d.turns[:i])
    assert label in schema.TAGS
    X = pd.DataFrame(
        [forecast.turn_features(forecast._as_history(d.turns[:i]), bundle["context_turns"])]
    )
    assert label == bundle["text"].predict(X)[0]
    # the same history as chat messages with tags gives the same features and label
    msgs = [
        {
            "role": "user" if t.speaker == "client" else "assistant",
            "content": schema.tag_text(t.text, forecast.turn_label(t))
            if t.speaker == "counselor" and forecast.turn_label(t)
            else t.text,
        }
        for t in d.turns[:i]
    ]
    assert forecast.predict_next(bundle, msgs) == label
    zh = [
        {"role": "user", "content": "我最近总是睡不着，工作压力很大。"},
        {
            "role": "assistant",
            "content": schema.tag_text("你愿意多说说工作上的压力吗？", "open_question"),
        },
        {
            "role": "user",
            "content": "老板总是加班，我也不知道该怎么办，我觉得自己快撑不住了，每天都很累。",
        },
    ]
    assert forecast.predict_next(bundle, zh) == forecast.predict_next(
        bundle, zh, language="universal"
    )
    with pytest.raises(ValueError, match="language"):
        forecast.predict_next(bundle, zh, language="zh")
    # untagged counselor turns: the variant trained on untagged history answers
    plain = [{**m, "content": schema.strip_tag(m["content"])[1]} for m in zh]
    Xu = pd.DataFrame(
        [forecast.turn_features(forecast._as_history(plain), bundle["context_turns"])]
    )
    assert forecast.predict_next(bundle, plain) == bundle["untagged"].predict(Xu)[0]


def test_load_refuses_foreign_file(tmp_path):
    import joblib

    joblib.dump({"tags": ("a",)}, tmp_path / "x.joblib")
    with pytest.raises(ValueError, match="not a forecaster bundle"):
        forecast.load(tmp_path / "x.joblib")


# ----------------------------------------------------------------------------- evaluate()
def test_forecaster_settings_are_validated_on_load():
    with pytest.raises(params.ParamsError, match=r"\['modle'\]; did you mean 'model'"):
        params.from_dict({"evaluation": {"forecaster": {"modle": "text"}}})
    with pytest.raises(params.ParamsError, match=r"forecaster\.model: 'forest'"):
        params.from_dict({"evaluation": {"forecaster": {"model": "forest"}}})


def test_evaluate_writes_table_and_model(tmp_path):
    P = params.load("params/smoke.yaml")
    P = dataclasses.replace(P, evaluation=dataclasses.replace(P.evaluation, bootstrap=200))
    df = forecast_eval.evaluate(P, tmp_path)
    written = pd.read_csv(tmp_path / "forecaster.csv")
    assert list(written.model) == list(df.model)
    assert {"majority", "class_prior", "previous_behaviour", "forecaster_universal"} <= set(
        written.model
    )
    cols = [
        "model",
        "role",
        "features",
        "n_train",
        "n_test",
        "n_test_recordings",
        "n_test_transcripts",
        "accuracy",
        "macro_f1",
        "macro_f1_ci_low",
        "macro_f1_ci_high",
        "beats_baselines",
        "reference",
        "delta_macro_f1",
        "delta_macro_f1_ci_low",
        "delta_macro_f1_ci_high",
    ]
    cols += [f"f1_{t}{s}" for t in schema.TAGS for s in ("", "_ci_low", "_ci_high")]
    assert set(cols) <= set(written.columns)
    fc = written.set_index("model")
    assert list(written.beats_baselines) == list(
        (written.role == "forecaster") & (written.delta_macro_f1_ci_low > 0)
    )
    # split by recording, the text forecaster's gain over the previous behaviour (0.347 vs 0.340)
    # has a CI that spans 0: not a win
    assert not fc.loc["forecaster_text", "beats_baselines"]
    assert fc.loc["forecaster_text", "macro_f1"] > fc.loc["previous_behaviour", "macro_f1"]
    # untagged it beats the majority class's macro-F1 but not a random draw from the class shares
    assert not fc.loc["forecaster_untagged", "beats_baselines"]
    assert fc.loc["forecaster_untagged", "macro_f1"] > fc.loc["majority", "macro_f1"]
    assert written.reference.iloc[0] in ("majority", "previous_behaviour")
    # a random draw from the class shares: near its expected accuracy sum(p_k q_k), below the
    # previous behaviour's macro-F1 (chance level, not a competitor)
    assert fc.loc["class_prior", "macro_f1"] < fc.loc["previous_behaviour", "macro_f1"]
    assert 0.1 < fc.loc["class_prior", "accuracy"] < fc.loc["majority", "accuracy"]
    # scored as used on untagged history: against the stronger baseline that needs no previous
    # label (the class-prior draw's macro-F1 is above the majority class's)
    blind = fc.loc[["majority", "class_prior"], "macro_f1"].idxmax()
    assert fc.loc["forecaster_untagged", "reference"] == blind == "class_prior"
    assert fc.loc["forecaster_untagged", "delta_macro_f1"] == pytest.approx(
        fc.loc["forecaster_untagged", "macro_f1"] - fc.loc[blind, "macro_f1"]
    )
    forecasters = written[(written.role == "forecaster") & (written.model != "forecaster_untagged")]
    baseline_best = written.loc[written.role == "baseline", "macro_f1"].max()
    assert (forecasters.delta_macro_f1 - (forecasters.macro_f1 - baseline_best)).abs().max() < 1e-9
    bundle = forecast.load(tmp_path / "forecaster.joblib")
    assert not set(bundle["train_sessions"]) & set(bundle["test_sessions"])
    assert not set(bundle["train_recordings"]) & set(bundle["test_recordings"])
