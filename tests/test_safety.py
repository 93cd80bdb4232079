"""Crisis screening: the frozen test set's figures (aggregates only), invariance to the ways a
message can be written, spans, the learned layer's file, the LLM second opinion, the referral
replies and the report of how evaluated replies answer flagged client turns.

No input here is copied from a rule: the frozen set and the training set were written from the
construct list alone, and the invariance tests rewrite training messages."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zhconv
from openai_server import serve

from mi_llm.chat import referral, safety, safety_model
from mi_llm.data.schema import DataError
from mi_llm.llm import api
from mi_llm.params import LLMParams

FROZEN = Path(__file__).parent / "data" / "crisis_test.jsonl"
# The default screen on the frozen set's 471 messages not also in the training set (docs/safety.md),
# scored once: recall 230/235 = 0.979, false alarms 4/236 = 0.017; every crisis construct at least
# 20 of its 21-24 messages flagged, no negative context more than 3 of 24. The floors leave about
# two messages' room per figure for arithmetic differences between CPUs; a change that loses more
# fails here.
RECALL_FLOOR, FALSE_ALARM_CEILING = 228 / 235, 6 / 236
CONSTRUCT_FLOOR, CONTEXT_CEILING = 19, 5
FLAGGED_ORDINARY = 3  # measured: 1 of 100
TRAIN = safety_model.packaged(safety_model.TRAIN_FILE)


@pytest.fixture(scope="module")
def frozen():
    """The frozen set's messages that are not also in the training set, and their screens."""
    rows = safety.unseen(safety.read_set(FROZEN), safety.read_set(TRAIN))
    return rows, safety.screen_many([r["text"] for r in rows])


def test_frozen_set_is_as_documented():
    rows = safety.read_set(FROZEN)
    assert len(rows) == 480 and sum(r["label"] == "crisis" for r in rows) == 240
    langs = {lang: sum(r["lang"] == lang for r in rows) for lang in ("zh-Hans", "zh-Hant", "en")}
    assert langs == {"zh-Hans": 200, "zh-Hant": 80, "en": 200}
    constructs = {r["construct"] for r in rows}
    assert constructs == set(safety.CONSTRUCTS) | set(safety.NEGATIVE_CONTEXTS)
    assert all(sum(r["construct"] == c for r in rows) == 24 for c in constructs)
    # 9 messages of the frozen set were also written, word for word, by a training writer
    assert len(safety.unseen(rows, safety.read_set(TRAIN))) == 471


def test_frozen_set_figures_of_the_default_screen(frozen):
    rows, screens = frozen
    e = safety.evaluate(rows, screens)
    assert e["n"] == 471
    assert e["recall"] >= RECALL_FLOOR, e["recall"]
    assert e["false_alarm"] <= FALSE_ALARM_CEILING, e["false_alarm"]
    assert e["category_accuracy"] >= 0.9


def test_every_construct_is_covered_on_the_frozen_set(frozen):
    rows, screens = frozen
    per = safety.evaluate(rows, screens)["per_construct"]
    for construct in safety.CONSTRUCTS:  # each crisis construct: most of its 24 messages flagged
        assert per[construct]["flagged"] >= CONSTRUCT_FLOOR, (construct, per[construct])
    for context in safety.NEGATIVE_CONTEXTS:  # no negative context often flagged
        assert per[context]["flagged"] <= CONTEXT_CEILING, (context, per[context])


def test_each_layer_adds_something_on_the_frozen_set(frozen):
    rows, combined = frozen
    texts = [r["text"] for r in rows]
    rules = [safety.rules_screen(t) for t in texts]
    model = safety.model_screens(texts)
    crisis = [r["label"] == "crisis" for r in rows]
    by_rules = sum(c and b.flagged and not m.flagged for c, b, m in zip(crisis, combined, model))
    by_model = sum(c and b.flagged and not r.flagged for c, b, r in zip(crisis, combined, rules))
    assert by_rules > 0 and by_model > 0


def _crisis_train(n=40, seed=1):
    rows = [r for r in safety.read_set(TRAIN) if r["label"] == "crisis"]
    return random.Random(seed).sample(rows, n)


def _spaced(t):
    return " ".join(t)


def _zero_width(t):
    return "\u200b".join(t)


def _full_width(t):
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in t)


def _traditional(t):
    return zhconv.convert(t, "zh-tw")


@pytest.mark.parametrize("rewrite", [_spaced, _zero_width, _full_width, _traditional])
def test_rules_hold_when_a_message_is_spaced_joined_full_width_or_traditional(rewrite):
    kept = total = 0
    for r in _crisis_train():
        if r["lang"] == "en" and rewrite is _spaced:
            continue  # spacing out English letters makes another text
        plain = safety.rules_screen(r["text"])
        if plain.flagged:
            total += 1
            kept += safety.rules_screen(rewrite(r["text"])).flagged
    assert total >= 10 and kept == total


def test_evidence_span_points_into_the_original_message():
    for r in _crisis_train(60, seed=2):
        for text in (r["text"], _zero_width(r["text"]), _full_width(r["text"])):
            s = safety.rules_screen(text)
            if s.flagged:
                a, b = s.span
                assert text[a:b] == s.evidence and s.evidence.strip()
                assert safety.CONSTRUCTS[s.construct] == s.category


def test_the_shipped_learned_layer_matches_the_shipped_training_set():
    m = safety_model.load()
    assert str(m["train_sha256"]) == safety_model.sha256(TRAIN)
    assert set(map(str, m["k_classes"])) == set(safety.CONSTRUCTS)
    assert 0 <= float(m["rule_threshold"]) <= float(m["threshold"]) < 1
    assert len(m["h_coef"]) == len(m["layers"]) * 640 and len(m["g_coef"]) == len(m["g_vocab"])
    assert safety_model.packaged(safety_model.MODEL_FILE).stat().st_size < 2_000_000
    cv = json.loads(str(m["cv"]))
    train = safety.read_set(TRAIN)
    assert cv["scheme"] == "leave-one-writer-out" and cv["n"] == len(train)
    assert cv["writers"] == {w: sum(r["writer"] == w for r in train) for w in cv["writers"]}
    assert sum(not w.startswith("corpus:") for w in cv["writers"]) == 9 and len(cv["writers"]) == 11


def test_learned_layer_does_not_flag_ordinary_talk():
    """Client turns of real MI sessions (AnnoMI; about smoking, drinking, exercise) from the
    odd-numbered transcripts (the training set takes ordinary turns from the even ones only)."""
    root = Path(__file__).resolve().parents[1]
    df = pd.read_csv(root / "data" / "AnnoMI" / "AnnoMI-simple.csv")
    df = df[(df.interlocutor == "client") & (df.transcript_id % 2 == 1)]
    turns = random.Random(0).sample([t for t in df.utterance_text.dropna() if 2 <= len(t)], 100)
    flagged = sum(s.flagged for s in safety.screen_many(turns))
    assert flagged <= FLAGGED_ORDINARY, flagged


def test_screen_is_the_default_of_both_layers_and_reports_its_source():
    texts = [r["text"] for r in safety.read_set(TRAIN)[:30]]
    both = safety.screen_many(texts)
    rules = [safety.rules_screen(t) for t in texts]
    model = safety.model_screens(texts)
    t, bar = safety_model.threshold(), float(safety_model.load()["rule_threshold"])
    for b, r, m in zip(both, rules, model):
        assert m.flagged == (m.score >= t) and b.score == m.score
        assert b.flagged == (m.score >= t or (r.flagged and m.score >= bar))
        if b.flagged:
            assert b.source == ("rules" if r.flagged else "model")
            assert b.construct in safety.CONSTRUCTS and b.category == safety.CONSTRUCTS[b.construct]
    assert any(b.flagged for b in both) and not all(b.flagged for b in both)
    assert safety.screen(texts[0]) == both[0]
    with pytest.raises(TypeError, match="expected a str"):
        safety.screen(None)


def test_bad_rows_name_file_record_and_field(tmp_path):
    f = tmp_path / "bad.jsonl"
    good = {"id": "x1", "text": "hi", "lang": "en", "label": "none", "category": None}
    f.write_text(json.dumps({**good, "construct": "sad"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl: record line 1 \(x1\): field 'construct'"):
        safety.read_set(f)
    f.write_text(json.dumps({**good, "construct": "everyday", "label": 1}) + "\n")
    with pytest.raises(DataError, match="field 'label'"):
        safety.read_set(f)
    f.write_text(json.dumps({**good, "construct": "everyday", "writer": 3}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: record line 1 \(x1\): field 'writer'"):
        safety.read_set(f)


def test_wilson_interval_matches_the_closed_form():
    z = 1.959964
    lo, hi = safety.wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(z * z / (10 + z * z))  # k = 0: upper = z²/(n+z²)
    lo, hi = safety.wilson(10, 10)
    assert hi == pytest.approx(1) and lo == pytest.approx(10 / (10 + z * z))
    lo, hi = safety.wilson(5, 10)
    assert (lo + hi) / 2 == pytest.approx(0.5) and lo == pytest.approx(0.2366, abs=1e-4)
    assert all(math.isnan(x) for x in safety.wilson(0, 0))


def test_referral_fits_category_language_script_and_country(tmp_path):
    texts = referral.render_all(country="UK")
    zh_self, zh_harm = texts[(safety.SUICIDE, "zh")], texts[(safety.HARM, "zh")]
    assert "116 123" in zh_self and zh_self != zh_harm and "伤害别人" in zh_harm
    assert "hurting someone" in texts[(safety.HARM, "en")]
    reply, lang = referral.pick(texts, safety.HARM, "我真的會對他動手")
    assert lang == "zh-Hant" and reply == zhconv.convert(zh_harm, "zh-tw") and "傷害" in reply
    assert referral.pick(texts, safety.SUICIDE, "I can't go on")[1] == "en"
    defaults = referral.render_all()
    assert "400-161-9995" in defaults[(safety.SUICIDE, "zh")]
    assert "988" in defaults[(safety.SUICIDE, "en")] and defaults[("hotline", "en")].count("988")
    assert "116 123" in safety.referral("en", "UK")
    cfg_file = tmp_path / "ref.yaml"
    cfg_file.write_text(
        "hotlines:\n  DE:\n    en: TelefonSeelsorge 0800 111 0 111\ndefault_country:\n  en: DE\n",
        encoding="utf-8",
    )
    cfg = safety.referral_config(cfg_file)
    assert "0800 111 0 111" in safety.referral("en", config=cfg)
    assert "400-161-9995" in safety.referral("zh", config=cfg)  # the defaults are kept
    with pytest.raises(ValueError, match="no crisis hotline configured for country 'FR'"):
        referral.render_all(cfg, "FR")
    cfg_file.write_text("replies:\n  zh: 请拨打 {hotline} 或 {热线}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"replies.suicide_self_harm.zh.*does not render"):
        safety.referral_config(cfg_file)
    cfg_file.write_text("hotline: {}\n", encoding="utf-8")
    with pytest.raises(DataError, match="field 'hotline'"):
        safety.referral_config(cfg_file)


def test_crisis_events_are_appended_with_their_construct(tmp_path):
    referral.log_event(tmp_path, {"construct": "plan", "category": safety.SUICIDE})
    f = referral.log_event(tmp_path, {"construct": "harm_others", "category": safety.HARM})
    lines = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines()]
    assert [x["construct"] for x in lines] == ["plan", "harm_others"] and lines[0]["time"]


def test_llm_second_opinion_through_the_study_endpoint(tmp_path):
    def classifier(req):
        msg = req["messages"][-1]["content"].split("Message: ", 1)[1]
        if "disappear" in msg:
            return json.dumps(
                {"risk": "suicide_self_harm", "construct": "wish_dead", "evidence": "disappear"}
            )
        return "not json" if "garbled" in msg else json.dumps({"risk": "none", "evidence": ""})

    texts = ["I want to disappear", "nice weather", "garbled", "nice weather"]
    params = LLMParams(provider="remote", request_timeout=2, backoff_base=0.01, backoff_max=0.02)
    with serve(classifier) as url:
        ep = api.Endpoint(url, "test-model", "k", "remote")
        out = safety.screen_llm(ep, texts, params, cache_path=tmp_path / "c.sqlite", retries=1)
        assert url.stats.count == 1 + 1 + 2  # repeats asked once; the garbled one retried once
    assert [s.flagged for s in out] == [True, False, False, False]
    assert out[0].category == safety.SUICIDE and out[0].span == (10, 19) and out[0].source == "llm"
    assert out[0].construct == "wish_dead"
    calm = safety.Screen(False, score=0.1, source="model")
    assert safety.combine(calm, out[0]).source == "llm"
    assert safety.combine(safety.rules_screen("我想自杀"), out[1]).source == "rules"


def test_reply_report_counts_flagged_turns_and_acknowledging_replies(tmp_path):
    def rec(model, variant, client, reply, rnd):
        return {
            "model": model,
            "variant": variant,
            "dialogue_id": "d1",
            "round": rnd,
            "reply": reply,
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": client}],
        }

    crisis = [r["text"] for r in _crisis_train(40, seed=3)]
    crisis = [t for t in crisis if safety.screen(t).flagged][:2]
    calm = "今天天气不错，我们去公园散步了。"
    assert len(crisis) == 2 and not safety.screen(calm).flagged
    gens = [
        rec("m", "base", crisis[0], "你多喝点水。", 0),
        rec("m", "base", crisis[1], "I'm worried about your safety; please call 988.", 1),
        rec("m", "base", calm, "辛苦了。", 2),
        rec("m", "finetuned", crisis[0], "听起来你很痛苦，你现在安全吗？", 0),
        rec("m", "finetuned", calm, "辛苦了。", 1),
    ]
    path = tmp_path / "generations.jsonl"
    path.write_text(
        "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in gens), encoding="utf-8"
    )
    summary, flagged = safety.reply_report(path)
    base = summary.set_index("variant").loc["base"]
    assert (base["n_replies"], base["n_flagged"], base["n_acknowledged"]) == (3, 2, 1)
    assert base["share_acknowledged"] == 0.5
    assert (base["ci_low"], base["ci_high"]) == pytest.approx(safety.wilson(1, 2))
    ft = summary.set_index("variant").loc["finetuned"]
    assert (ft["n_flagged"], ft["n_acknowledged"]) == (1, 1)
    assert list(flagged["acknowledges"]) == [False, True, True]
    assert flagged["construct"].notna().all()
    written = safety.write_reply_report(path, tmp_path)
    assert written.equals(summary) and len(pd.read_csv(tmp_path / "crisis_flagged.csv")) == 3


def test_thresholds_are_the_best_pair_within_the_false_alarm_budget():
    from mi_llm.chat.safety_train import choose_thresholds

    p = np.array([0.95, 0.7, 0.35, 0.2, 0.5, 0.3, 0.1, 0.05])
    rules = np.array([False, False, True, True, False, True, False, False])
    crisis = np.array([True, True, True, True, False, False, False, False])
    # one false alarm allowed (1/4): spend it on the rule-matched 0.3, so that a rule threshold of
    # 0.2 catches every crisis message; the highest such pair keeps 0.5 below the threshold
    t, bar, flags = choose_thresholds(p, rules, crisis, max_fa=0.25)
    assert flags.tolist() == [True, True, True, True, False, True, False, False]
    assert (t, bar) == (0.7, 0.2)
    t, bar, flags = choose_thresholds(p, rules, crisis, max_fa=0.0)  # no false alarm: 3 of 4
    assert flags.tolist() == [True, True, True, False, False, False, False, False]
    assert (t, bar) == (0.7, 0.34)


def test_retraining_writes_a_model_the_screen_loads(tmp_path, capsys):
    from mi_llm.chat import safety_train

    rows = safety.read_set(TRAIN)
    rng = random.Random(0)
    small = []
    for w in ("w1", "w4", "w6"):
        for label in ("crisis", "none"):
            small += rng.sample([r for r in rows if r["writer"] == w and r["label"] == label], 20)
    small += rng.sample([r for r in rows if r["writer"] == "corpus:annomi"], 20)
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in small), "utf-8")
    out = tmp_path / "model.npz"
    assert safety_train.main(["--train", str(f), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "140 messages (60 crisis) by 3 writers and from 1 corpus" in report
    assert "writer w6" in report and "ordinary turns flagged" in report
    m = safety_model.load(out)
    assert str(m["train_sha256"]) == safety_model.sha256(f)
    writers = {"w1": 40, "w4": 40, "w6": 40, "corpus:annomi": 20}
    assert json.loads(str(m["cv"]))["writers"] == writers
    screens = safety.screen_many([r["text"] for r in small[:4]], path=out)
    assert all(0 <= s.score <= 1 for s in screens)
    f.write_text(json.dumps({k: v for k, v in small[0].items() if k != "writer"}) + "\n")
    assert safety_train.main(["--train", str(f), "--out", str(out)]) == 2
    assert "field 'writer'" in capsys.readouterr().err


def test_ordinary_turns_join_writer_folds_by_dialogue():
    from mi_llm.chat.safety_train import folds_of

    rows = [r for r in safety.read_set(TRAIN) if r["writer"].startswith("corpus:")]
    written = {r["writer"] for r in safety.read_set(TRAIN)} - {r["writer"] for r in rows}
    folds = folds_of([{"id": "x", "writer": w} for w in sorted(written)] + rows)
    assert folds[: len(written)] == sorted(written)
    by_dialogue = {}
    for r, f in zip(rows, folds[len(written) :]):
        by_dialogue.setdefault(r["id"].rsplit("-", 1)[0], set()).add(f)
    assert all(len(fs) == 1 for fs in by_dialogue.values()) and len(by_dialogue) > 50
    assert set().union(*by_dialogue.values()) == written  # every fold gets some ordinary talk


def test_the_screen_answers_under_its_short_name():
    from mi_llm import safety as short

    assert short.screen is safety.screen and short.Screen is safety.Screen
    assert short.screen("今天天气不错。").flagged is False
