"""The decoding engines behind one interface: the cpu loop writes what transformers' batched
`generate` (hf) writes on tiny random models of the four paper architectures, and the server
engine, against a local /v1/completions server that answers with a real tiny model, writes what
hf writes in this process (stage 04's variants, the conditioned tag, the embedded judge)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONV, tiny_tokenizer
from openai_server import serve
from test_models import BAICHUAN, baichuan_state_dict

from mi_llm import params
from mi_llm.data import corpora
from mi_llm.decode import engine, server
from mi_llm.eval import generation
from mi_llm.llm import local
from mi_llm.models import registry
from mi_llm.params import ROOT, ParamsError

GEMMA = "gemma3-270m"
LLAMA = "llama3-8b-chinese-chat-v2"
SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 2048,
    "initializer_range": 0.2,  # peaked logits: a greedy token is not a near-tie
}


def _records(n=2):
    """Real CPsyCounD dialogues in the 02 test.jsonl record format."""
    ds = corpora.load("cpsycound", ROOT / "data/CPsyCounD/Data", limit=n)
    return [{"id": d.id, "topic": d.meta.get("topic"), "messages": d.to_messages()} for d in ds]


def _prompts():
    """Chat prompts of different lengths: stage 04's rounds of a real dialogue and the short CONV."""
    rounds = generation.rounds(_records(1), max_rounds=3, context_turns=3)
    return [r["messages"] for r in rounds] + [CONV[:2], CONV[:4]]


def tiny_dir(tmp_path, name):
    """The folder of a tiny random model of `name`'s architecture and its tiny tokenizer (Baichuan:
    in its own layout, which the registry converts to Llama on load)."""
    from transformers import AutoModelForCausalLM, Glm4Config, LlamaConfig

    tok = tiny_tokenizer(name)
    d = tmp_path / name
    if name == "baichuan2-7b-chat":
        d.mkdir()
        torch.save(baichuan_state_dict(len(tok)), d / "pytorch_model.bin")
        cfg = {
            "model_type": "baichuan",
            "architectures": ["BaichuanForCausalLM"],
            "vocab_size": len(tok),
            "hidden_act": "silu",
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            **BAICHUAN,
        }
        (d / "config.json").write_text(json.dumps(cfg))
    else:
        kind = LlamaConfig if name.startswith("llama") else Glm4Config
        cfg = kind(
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
            **SMALL,
        )
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


ARCHS = [LLAMA, "glm-4-9b-chat", "baichuan2-7b-chat", GEMMA]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny random Llama 3 (400-token vocabulary, weights at std 0.2) whose greedy tokens are
    far from ties: engines that batch differently still agree to the token."""
    return tiny_dir(tmp_path_factory.mktemp("llama"), LLAMA)


@pytest.fixture(scope="module")
def llama_adapter(llama_dir, tmp_path_factory):
    """A LoRA adapter of llama_dir with non-zero B, drawn from a fixed seed."""
    from peft import LoraConfig, get_peft_model

    model, _ = registry.load(LLAMA, "cpu", dtype="float32", path=llama_dir)
    torch.manual_seed(1)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("llama-adapter")
    get_peft_model(model, lora).save_pretrained(path)
    return path


@pytest.mark.parametrize("name", ARCHS)
def test_cpu_engine_writes_what_hf_generate_writes(name, tmp_path, tiny_model_dir):
    """Greedy, fp32, one batch of prompts of different lengths (left-padded for hf): the same
    replies from the cpu loop and transformers' batched generate, on each paper architecture."""
    if name == GEMMA:
        model, tok = registry.load(GEMMA, "cpu", dtype="float32", path=tiny_model_dir)
    else:
        model, tok = registry.load(name, path=tiny_dir(tmp_path, name), dtype="float32")
    assert model.dtype == torch.float32
    if name == "baichuan2-7b-chat":
        assert type(model).__name__ == "LlamaForCausalLM"  # converted
    prompts = _prompts()
    texts = engine.prompt_texts(tok, prompts)
    assert len({len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts}) == len(texts)
    kw = {
        "batch_size": len(prompts),
        "max_new_tokens": 12,
        "stop_tokens": registry.get(name).special_tokens,
    }
    cpu = engine.generate(model, tok, prompts, engine="cpu", **kw)
    hf = engine.generate(model, tok, prompts, engine="hf", **kw)
    assert cpu == hf
    assert all(cpu) and len(set(cpu)) > 1  # real replies, not one degenerate string
    assert engine.generate(model, tok, prompts, **kw) == cpu  # auto on a CPU: the cpu loop


def test_hf_engine_never_runs_the_cpu_loop(tiny_model_dir, monkeypatch):
    from mi_llm.decode import cpu

    model, tok = registry.load(GEMMA, "cpu", dtype="float32", path=tiny_model_dir)

    def refuse(*a, **kw):
        raise AssertionError("engine hf ran the cpu loop")

    monkeypatch.setattr(cpu, "greedy_rows", refuse)
    assert all(engine.generate(model, tok, _prompts()[:2], engine="hf", max_new_tokens=4))
    with pytest.raises(AssertionError, match="cpu loop"):
        engine.generate(model, tok, _prompts()[:2], engine="cpu", max_new_tokens=4)
    assert engine.resolve("auto", "cpu") == "cpu" and engine.resolve("auto", "cuda:0") == "hf"
    with pytest.raises(TypeError, match="server.Endpoint"):
        engine.generate(model, tok, _prompts()[:1], engine="server")


def test_params_engine_is_checked():
    E = params.from_dict({"name": "t"}).evaluation
    assert (E.engine, E.server_url) == ("auto", None)
    with pytest.raises(ParamsError, match=r"evaluation\.engine: 'vllm' is not one of"):
        params.from_dict({"name": "t", "evaluation": {"engine": "vllm"}})
    with pytest.raises(ParamsError, match=r"evaluation\.server_url: None; engine 'server' needs"):
        params.from_dict({"name": "t", "evaluation": {"engine": "server"}})


# ----------------------------------------------------------------------------- the server engine
def _completions(models: dict, seen: list):
    """complete(prompt, request) as vLLM's /v1/completions answers it: the request's model (a
    served name) greedy on the prompt's tokens (no special tokens added when the request says
    so), stopping at its stop_token_ids, the text without special tokens."""

    def complete(prompt: str, req: dict):
        if req["model"] not in models:
            raise ValueError(f"model {req['model']!r} does not exist")
        model, tok = models[req["model"]]
        seen.append((req["model"], prompt))
        assert req["temperature"] == 0.0  # greedy
        ids = tok(prompt, add_special_tokens=req.get("add_special_tokens", True))["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=req["max_tokens"],
                do_sample=False,
                eos_token_id=req["stop_token_ids"],
                pad_token_id=tok.pad_token_id,
            )[0, len(ids) :].tolist()
        stop = next((j for j, t in enumerate(out) if t in req["stop_token_ids"]), None)
        text = tok.decode(out[:stop], skip_special_tokens=True)
        return text, "stop" if stop is not None else "length"

    return complete


@pytest.fixture(scope="module")
def served_models(llama_dir, llama_adapter):
    """The base tiny Llama and the same with the LoRA adapter merged: what a vLLM server serves
    as llama3-8b-chinese-chat-v2 and llama3-8b-chinese-chat-v2-sft."""
    base, tok = registry.load(LLAMA, "cpu", dtype="float32", path=llama_dir)
    merged, mtok = registry.load(LLAMA, "cpu", dtype="float32", path=llama_dir)
    merged, mtok = generation._with_adapter(merged, mtok, LLAMA, llama_adapter)
    return {LLAMA: (base.eval(), tok), LLAMA + server.ADAPTER_SUFFIX: (merged, mtok)}


@pytest.fixture
def fp32(monkeypatch):
    """registry.load in fp32 unless told otherwise: the server's model and the one loaded in this
    process then round alike (in bf16 a batch's padding may flip a near-tie)."""
    real = registry.load

    def load(name, device="cpu", dtype=None, path=None):
        return real(name, device, dtype or "float32", path)

    monkeypatch.setattr(registry, "load", load)


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def _params(**evaluation):
    ev = {
        "models": [LLAMA],
        "variants": ["base", "finetuned", "conditioned"],
        "condition_on": "open_question",
        "max_dialogues": 1,
        "max_rounds": 2,
        "context_turns": 3,
        "batch_size": 2,
        "max_new_tokens": 8,
        **evaluation,
    }
    tagged = {"tag_behaviour": True, "prompt_version": "mi_turn_tagged_v1", "unit": "turn"}
    return params.from_dict(
        {"name": "t", "device": "cpu", "transcription": tagged, "evaluation": ev}
    )


def test_server_engine_writes_what_hf_writes_in_process(
    llama_dir, llama_adapter, served_models, tmp_path, fp32
):
    """Stage 04 through a completions server: each variant asks the served name of its weights,
    the conditioned prompts end with the tag, and the replies are those of the hf engine."""
    test = _write(tmp_path / "test.jsonl", _records(1))
    kw = {
        "model_paths": {LLAMA: llama_dir},
        "adapter_dirs": {LLAMA: llama_adapter},
        "progress": False,
    }
    seen = []
    with serve(None, complete=_completions(served_models, seen), models=list(served_models)) as url:
        P = _params(engine="server", server_url=url)
        got = generation.run(P, test, tmp_path / "server.jsonl", **kw)
        reqs = url.stats.completions  # a batch of prompts per request, no <bos> added twice
        assert max(len(r["prompt"]) for r in reqs) == 2
        assert all(r["add_special_tokens"] is False for r in reqs)
    want = generation.run(_params(engine="hf"), test, tmp_path / "hf.jsonl", **kw)
    assert len(got) == 6 and [r["reply"] for r in got] == [r["reply"] for r in want]
    assert len({r["reply"] for r in got}) > 3  # real, different replies (one may stop at once)
    asked = {(m, p.endswith("<mi:open_question>")) for m, p in seen}
    assert asked == {(LLAMA, False), (LLAMA + "-sft", False), (LLAMA + "-sft", True)}
    assert {r["settings"] for r in got}.isdisjoint({r["settings"] for r in want})  # never mixed


def test_server_engine_fails_before_any_request(llama_dir, llama_adapter, tmp_path):
    """A server that is down, or serves no adapter, or settings it cannot take: one clear error
    before a completion is asked."""
    test = _write(tmp_path / "test.jsonl", _records(1))
    kw = {
        "model_paths": {LLAMA: llama_dir},
        "adapter_dirs": {LLAMA: llama_adapter},
        "progress": False,
    }
    with serve(None, complete=lambda p, r: "x", models=[LLAMA]) as url:
        with pytest.raises(server.ServerError, match=rf"does not serve \['{LLAMA}-sft'\]"):
            generation.run(_params(engine="server", server_url=url), test, tmp_path / "g", **kw)
        P = _params(engine="server", server_url=url, generation={"num_beams": 2})
        with pytest.raises(ValueError, match=r"\['num_beams'\] have no /v1/completions"):
            generation.run(P, test, tmp_path / "g", **kw)
        assert url.stats.completions == []
    with pytest.raises(server.ServerError, match="no OpenAI-compatible server answers"):
        generation.run(_params(engine="server", server_url=url), test, tmp_path / "g", **kw)
    assert not (tmp_path / "g").exists() or not (tmp_path / "g").read_text()


def test_server_request_settings():
    greedy = server.request_settings({}, 16, [1, 2])
    assert greedy == {
        "max_tokens": 16,
        "stop_token_ids": [1, 2],
        "add_special_tokens": False,
        "temperature": 0.0,
    }
    sampled = server.request_settings({"do_sample": True, "top_p": 0.9}, 16, [1], seed=7)
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"]) == (1.0, 0.9, 7)
    assert server.request_settings({"repetition_penalty": 1.1}, 4, [])["repetition_penalty"] == 1.1


def test_conditioned_chat_through_the_server(
    llama_dir, llama_adapter, served_models, tmp_path, fp32
):
    """The chat's conditioned variant with engine server: the tagged prompt goes to the adapter's
    served name, and the reply is the one the hf engine writes in process."""
    from mi_llm.chat import serving

    run = tmp_path / "runs" / "chatrun"  # a run folder as the study leaves it
    P = {
        "name": "chatrun",
        "model_paths": {LLAMA: str(llama_dir)},
        "evaluation": {"models": [LLAMA]},
    }
    ad = run / "03_sft" / LLAMA / "adapter"
    ad.mkdir(parents=True)
    for f in llama_adapter.iterdir():
        (ad / f.name).write_bytes(f.read_bytes())
    (run / "provenance.json").write_text(json.dumps({"params": P}), encoding="utf-8")
    served = serving.resolve(run, variant="conditioned", merge=False)
    served.condition_on = "open_question"
    msgs = [{"role": "user", "content": "我最近睡不好。"}]
    seen = []
    with serve(None, complete=_completions(served_models, seen), models=list(served_models)) as url:
        ask = serving.conditioned_backend(served, max_tokens=8, engine="server", server_url=url)
        reply, *_, meta = ask(msgs, {})
    want, *_ = serving.conditioned_backend(served, max_tokens=8, engine="hf")(msgs, {})
    assert reply == want and reply and meta["behaviour"] == "open_question"
    assert seen[0][0] == LLAMA + "-sft" and seen[0][1].endswith("<mi:open_question>")


def test_embedded_judge_engines_agree(tiny_model_dir):
    """The embedded judge (llm provider embedded) decodes with either engine, the same replies."""
    prompts = _prompts()[:3]
    out = {}
    for name in ("cpu", "hf"):
        gen = local.Generator(tiny_model_dir, batch_size=3, device="cpu", engine=name)
        gen.load()[0].float()
        out[name] = [a for _, batch in gen.batches(prompts, {"max_tokens": 6}) for a in batch]
    assert out["cpu"] == out["hf"] and all(t for t, *_ in out["cpu"])
    with pytest.raises(ValueError, match="engine 'server'"):
        local.Generator(tiny_model_dir, engine="server")
