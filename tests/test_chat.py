"""The chat: OpenAI-compatible endpoint in front of a model server, crisis referral, sessions saved in
the dialogue schema. Fast tests use the local test server as the model; the end-to-end test serves a
tiny model with a merged LoRA adapter through `transformers serve` (tests/test_chat_browser.py)."""

from __future__ import annotations

import json
import re

import openai
import pytest
from conftest import CHAT_MODEL, counselor, make_run
from openai_server import serve as fake_model

from mi_llm.chat import referral, safety, safety_model, serving, store, web
from mi_llm.data.schema import DataError, Dialogue, validate


def test_openai_client_talks_and_sessions_are_saved_in_the_dialogue_schema(
    tiny_model_dir, tiny_adapter, tmp_path
):
    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    with (
        fake_model(counselor) as backend,
        web.serve(run, backend_url=backend, backend_model="ft") as c,
    ):
        client = openai.OpenAI(base_url=c.url + "/v1", api_key="none")
        assert [m.id for m in client.models.list().data] == [f"{CHAT_MODEL}:finetuned"]
        msgs = [{"role": "user", "content": "我想少喝点酒，但是很难。"}]
        r1 = client.chat.completions.create(model=c.model_id, messages=msgs)
        reply = r1.choices[0].message.content
        assert (
            reply.startswith("听起来") and "[2 system]" in reply
        )  # the run's system prompt was sent
        msgs += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "周末尤其难。"},
        ]
        r2 = client.chat.completions.create(
            model=c.model_id, messages=msgs
        )  # no session id: matched
        other = client.chat.completions.create(
            model=c.model_id, messages=[{"role": "user", "content": "Hi there"}]
        )
        assert backend.stats.count == 3 and {r["model"] for r in backend.stats.requests} == {"ft"}
    files = sorted((run / "chat").glob("*.jsonl"))
    assert len(files) == 2
    sessions = store.read_sessions(run / "chat")
    d = next(s for s in sessions if len(s.turns) == 4)
    validate(d)
    assert [t.speaker for t in d.turns] == ["client", "counselor", "client", "counselor"]
    assert d.turns[3].text == r2.choices[0].message.content
    assert d.corpus == "chat" and d.meta["model"] == CHAT_MODEL and d.meta["variant"] == "finetuned"
    assert d.meta["adapter_sha256"] == serving.adapter_sha256(
        run / "03_sft" / CHAT_MODEL / "adapter"
    )
    assert len(d.meta["adapter_sha256"]) == 64 and d.meta["started"] <= d.meta["updated"]
    assert all("time" in t.annotations for t in d.turns) and d.meta["events"] == []
    assert Dialogue.from_dict(json.loads(files[0].read_text(encoding="utf-8"))).id in {
        s.id for s in sessions
    }
    assert other.choices[0].message.content.startswith("听起来")


@pytest.mark.parametrize("on_crisis", ["refer", "refer_then_reply"])
def test_flagged_message_gets_the_referral_and_the_event_is_logged(
    tiny_model_dir, tiny_adapter, tmp_path, on_crisis
):
    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    with (
        fake_model(counselor) as backend,
        web.serve(run, backend_url=backend, on_crisis=on_crisis, country="UK") as c,
    ):
        zh = c.say("有时候我觉得我消失了对谁都好。", session="s-zh")
        en = c.say("I've been saving up my pills.", session="s-en")
        calm = c.say(
            "Work was fine today.",
            session="s-en",
            history=[
                {"role": "user", "content": "I've been saving up my pills."},
                {"role": "assistant", "content": en["choices"][0]["message"]["content"]},
            ],
        )
        asked = backend.stats.count
    zh_text, en_text = (
        zh["choices"][0]["message"]["content"],
        en["choices"][0]["message"]["content"],
    )
    assert zh_text.startswith(safety.referral("zh", "UK")) and "116 123" in zh_text
    assert zh["mi_llm"]["screen"]["construct"] in safety.CONSTRUCTS
    assert en_text.startswith(safety.referral("en", "UK")) and "Samaritans" in en_text
    assert zh["mi_llm"]["referral"] and not calm["mi_llm"]["referral"]
    assert asked == (
        1 if on_crisis == "refer" else 3
    )  # refer: the model answered only the calm turn
    if on_crisis == "refer_then_reply":
        assert "听起来" in zh_text.split(safety.referral("zh", "UK"))[1]
    d = Dialogue.from_dict(json.loads((run / "chat" / "s-en.jsonl").read_text(encoding="utf-8")))
    assert len(d.turns) == 4
    (ev,) = d.meta["events"]
    assert (ev["type"], ev["category"], ev["turn"], ev["language"]) == (
        "crisis_referral",
        safety.SUICIDE,
        0,
        "en",
    )
    assert ev["evidence"] in "I've been saving up my pills." and ev["action"] == on_crisis
    assert ev["construct"] in safety.CONSTRUCTS and ev["text"] == "I've been saving up my pills."
    logged = (run / "chat" / "events" / "crisis.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(logged) == 2 and json.loads(logged[1])["construct"] == ev["construct"]
    assert d.turns[0].annotations["screen"]["flagged"] and d.turns[1].annotations["referral"]
    assert not d.turns[2].annotations["screen"]["flagged"]


def test_bad_requests_and_runs_are_refused_with_a_reason(tiny_model_dir, tiny_adapter, tmp_path):
    with pytest.raises(FileNotFoundError, match="provenance.json"):
        serving.resolve(tmp_path)
    run = make_run(tmp_path, tiny_model_dir)  # no adapter
    with pytest.raises(FileNotFoundError, match="no PEFT adapter"):
        serving.resolve(run, variant="finetuned")
    with pytest.raises(ValueError, match="variant 'conditional'"):
        serving.resolve(run, variant="conditional")
    with pytest.raises(FileNotFoundError, match="no PEFT adapter"):
        serving.resolve(run, variant="conditioned")
    assert serving.resolve(run, variant="base").folder == tiny_model_dir
    with (
        fake_model(counselor) as backend,
        web.serve(run, variant="base", backend_url=backend) as c,
    ):
        client = openai.OpenAI(base_url=c.url + "/v1", api_key="none", max_retries=0)
        m = c.model_id
        with pytest.raises(openai.BadRequestError, match="last message must be the client"):
            client.chat.completions.create(
                model=m, messages=[{"role": "assistant", "content": "hi"}]
            )
        with pytest.raises(openai.BadRequestError, match="session id"):
            client.chat.completions.create(
                model=m, messages=[{"role": "user", "content": "hi"}], user="../../etc"
            )
        with pytest.raises(openai.BadRequestError, match="stream"):
            client.chat.completions.create(
                model=m, messages=[{"role": "user", "content": "hi"}], stream=True
            )
        served = re.escape(f"served: ['{m}']")
        with pytest.raises(openai.BadRequestError, match=f"model 'x' is not served here; {served}"):
            client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    zz = web.serve(run, variant="base", backend_url="http://127.0.0.1:9/v1", country="ZZ")
    with pytest.raises(ValueError, match="no crisis hotline configured for country 'ZZ'"), zz:
        pass


def test_conditioned_variant_prefills_the_behaviour_tag_in_process(
    tiny_model_dir, tiny_adapter, tmp_path
):
    """The conditioned chat generates with stage 04's code: the reply is what follows the tag
    <mi:label>, the label is the run's condition_on (or the request's mi_behaviour) and is saved."""
    from mi_llm.decode import engine
    from mi_llm.eval import generation
    from mi_llm.models import registry

    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    prov = json.loads((run / "provenance.json").read_text(encoding="utf-8"))
    prov["params"]["evaluation"]["condition_on"] = "complex_reflection"
    (run / "provenance.json").write_text(json.dumps(prov), encoding="utf-8")
    remote = web.serve(run, variant="conditioned", backend_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="generated in this process"), remote:
        pass
    msgs = [{"role": "user", "content": "我想少喝点酒，但是很难。"}]
    with web.serve(run, variant="conditioned", max_tokens=8) as c:
        client = openai.OpenAI(base_url=c.url + "/v1", api_key="none", max_retries=0)
        assert [m.id for m in client.models.list().data] == [f"{CHAT_MODEL}:conditioned"]
        r1 = client.chat.completions.create(model=c.model_id, messages=msgs)
        r2 = client.chat.completions.create(
            model=c.model_id, messages=msgs, extra_body={"mi_behaviour": "open_question"}
        )
        with pytest.raises(openai.BadRequestError, match="mi_behaviour 'question'"):
            client.chat.completions.create(
                model=c.model_id, messages=msgs, extra_body={"mi_behaviour": "question"}
            )
    # the same reply as stage 04's generation with the same merged weights and prefix
    model, tok = registry.load(CHAT_MODEL, "cpu", path=tiny_model_dir)
    model, tok = generation._with_adapter(
        model, tok, CHAT_MODEL, run / "03_sft" / CHAT_MODEL / "adapter"
    )
    system = [{"role": "system", "content": "你是一名动机式访谈咨询师。"}]
    for r, label in ((r1, "complex_reflection"), (r2, "open_question")):
        [want] = engine.generate(
            model,
            tok,
            [system + msgs],
            max_new_tokens=8,
            overrides=serving.anti_loop(serving.NO_REPEAT_NGRAM),  # the chat's default
            stop_tokens=registry.get(CHAT_MODEL).special_tokens,
            prefixes=[generation.tag_prefix(label)],
        )
        assert r.choices[0].message.content == generation.split_tag(want)[1].strip()
    sessions = store.read_sessions(run / "chat")
    labels = sorted(d.turns[1].annotations["behaviour"] for d in sessions)
    assert labels == ["complex_reflection", "open_question"]
    assert {d.meta["variant"] for d in sessions} == {"conditioned"}


def _repeated_ngrams(ids: list[int], n: int, start: int) -> list[tuple]:
    """The n-grams of ids that end at or after `start` and occurred earlier in ids."""
    seen, repeated = set(), []
    for i in range(len(ids) - n + 1):
        g = tuple(ids[i : i + n])
        if i + n > start and g in seen:
            repeated.append(g)
        seen.add(g)
    return repeated


def test_the_repetition_guard_reaches_the_model_server_and_stops_a_greedy_loop(
    tiny_model_dir, tiny_adapter, tmp_path
):
    """no_repeat_ngram is sent as transformers serve's `generation_config` field (0: not sent; a
    negative size is refused before anything starts); in process, the greedy decode that loops
    without it repeats no n-gram of the conversation with it."""
    import torch

    from mi_llm.decode import engine
    from mi_llm.models import registry

    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    msgs = [{"role": "user", "content": "I want to drink less, but it is hard."}]
    for n, want in ((serving.NO_REPEAT_NGRAM, {"no_repeat_ngram_size": 10}), (0, None)):
        with (
            fake_model(counselor) as backend,
            web.serve(run, backend_url=backend, backend_model="ft", no_repeat_ngram=n) as c,
        ):
            client = openai.OpenAI(base_url=c.url + "/v1", api_key="none", max_retries=0)
            client.chat.completions.create(model=c.model_id, messages=msgs)
        [req] = backend.stats.requests
        sent = req.get("generation_config")
        assert (json.loads(sent) if sent is not None else None) == want
    refused = web.serve(run, backend_url="http://127.0.0.1:9/v1", no_repeat_ngram=-1)
    with pytest.raises(ValueError, match="negative"), refused:
        pass
    model, tok = registry.load(CHAT_MODEL, "cpu", path=tiny_model_dir)
    [text] = engine.prompt_texts(tok, [msgs])
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    start = enc["input_ids"].shape[1]
    out = {}
    for n in (0, 3):
        cfg = engine.generation_config(model, tok, 60, serving.anti_loop(n))
        cfg.eos_token_id = None  # the random model's whole 60 tokens, however it would stop
        with torch.inference_mode():
            out[n] = model.generate(**enc, generation_config=cfg)[0].tolist()
        assert len(out[n]) == start + 60
    assert _repeated_ngrams(out[0], 3, start)  # the tiny model loops when greedy
    assert _repeated_ngrams(out[3], 3, start) == []


def test_start_and_talk_keep_one_session_for_notebooks(tiny_model_dir, tiny_adapter, tmp_path):
    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    with fake_model(counselor) as backend:
        c = web.start(run, backend_url=backend)
        try:
            first = c.talk("我想多运动。")
            second = c.talk("但是下班太累了。")
        finally:
            c.stop()
        with pytest.raises(Exception):  # noqa: B017 (stopped: the port no longer answers)
            c.say("还在吗？")
    assert "[2 system]" in first and "[4 system]" in second  # the history travelled with each turn
    (d,) = store.read_sessions(run / "chat")
    assert d.id == c.session and [t.text for t in d.turns] == [
        "我想多运动。",
        first,
        "但是下班太累了。",
        second,
    ]


def test_chat_command_serves_until_sigterm(tiny_model_dir, tiny_adapter, tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with fake_model(counselor) as backend:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mi_llm",
                "chat",
                str(run),
                "--port",
                str(port),
                "--backend",
                backend,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            t0 = time.monotonic()
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                        page = r.read().decode()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() - t0 < 120, proc.stdout.read()
                    time.sleep(0.3)
            assert "gemma3-270m:finetuned" in page and "/v1/chat/completions" in page
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and f"page:     http://127.0.0.1:{port}/" in out


def test_referral_is_sent_and_logged_when_the_model_fails(tiny_model_dir, tiny_adapter, tmp_path):
    """refer_then_reply with a backend that answers 500: the referral still arrives (HTTP 200) in
    the message's category and script, and the event is in the log before the model was asked."""

    train = safety.read_set(safety_model.packaged(safety_model.TRAIN_FILE))
    harm = next(
        r["text"]
        for r in train
        if r["construct"] == "harm_others"
        and r["lang"] == "zh-Hant"
        and safety.rules_screen(r["text"]).flagged
    )
    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    with (
        fake_model(counselor, script=lambda n, req: "500") as backend,
        web.serve(run, backend_url=backend, on_crisis="refer_then_reply") as c,
    ):
        out = c.say(harm, session="s-harm")
        with pytest.raises(Exception, match="502"):
            c.say("今天天气不错。", session="s-calm")  # no crisis: the model's failure shows
    texts = referral.render_all()
    assert out["mi_llm"]["referral"] and out["mi_llm"]["screen"]["category"] == safety.HARM
    assert out["choices"][0]["message"]["content"] == texts[(safety.HARM, "zh-Hant")]
    (event,) = [
        json.loads(x)
        for x in (run / "chat" / "events" / "crisis.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert event["construct"] == "harm_others" and event["session"] == "s-harm"
    d = Dialogue.from_dict(json.loads((run / "chat" / "s-harm.jsonl").read_text(encoding="utf-8")))
    assert "model_error" in d.turns[1].annotations


def test_a_bad_referral_file_fails_at_start_up(tiny_model_dir, tiny_adapter, tmp_path):
    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    bad = tmp_path / "ref.yaml"
    bad.write_text(
        "replies:\n  harm_others:\n    zh: 请拨打 {hotline}，{country}\n", encoding="utf-8"
    )
    starting = web.serve(run, backend_url="http://127.0.0.1:9/v1", referral_file=bad)
    with pytest.raises(DataError, match="replies.harm_others.zh"), starting:
        pass


def test_page_says_what_it_is_and_shows_the_crisis_line(tiny_model_dir, tiny_adapter, tmp_path):
    import httpx

    run = make_run(tmp_path, tiny_model_dir, tiny_adapter)
    with (
        fake_model(counselor) as backend,
        web.serve(run, backend_url=backend, country="UK") as c,
    ):
        page = httpx.get(c.url + "/").text
    assert "研究原型，不是心理咨询师" in page and "research prototype, not a counsellor" in page
    assert "Samaritans 116 123" in page and "Samaritans on 116 123" in page
    assert f"Run <b>{run.name}</b>, model <b>{CHAT_MODEL}</b>, variant <b>finetuned</b>" in page
    assert '<body class="smoke">' in page and "replies mean nothing" in page  # the embedded 270M
    assert page.index("research prototype") < page.index('id="log"')  # before the first message
