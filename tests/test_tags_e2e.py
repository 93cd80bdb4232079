"""An MI behaviour tag survives transcription (02), SFT formatting (03) and generation (04).

The real code path on the shipped samples: a test server that answers the tagged prompt like a
model that follows it, the smoke params with tag_behaviour on, TRL's own tokenization of the SFT
samples on the tiny Gemma, and the conditioned variant on the adapter the SFT trainer saved.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import mi_model, sample_dialogues
from openai_server import serve

from mi_llm import params
from mi_llm.data import schema, transcribe
from mi_llm.decode import engine
from mi_llm.eval import generation
from mi_llm.llm import api
from mi_llm.models import registry
from mi_llm.params import ROOT
from mi_llm.train import sft

NAME = "gemma3-270m"  # registry entry whose template/eot the tiny model shares


def tagged_answer(req: dict) -> str:
    """One rewritten counselor turn, tagged with a label that depends on the request."""
    return f"<mi:{schema.TAGS[len(str(req['messages'])) % len(schema.TAGS)]}> {mi_model(req)}"


def tag_params() -> params.Params:
    """Smoke params with tagged transcription, a 1-step fp32 SFT and the conditioned variant."""
    P = params.load(ROOT / "params/smoke.yaml")
    return dataclasses.replace(
        P,
        name="tags_e2e",
        device="cpu",
        llm=dataclasses.replace(P.llm, provider="remote", request_timeout=10),
        transcription=dataclasses.replace(
            P.transcription,
            prompt_version="mi_turn_tagged_v1",
            unit="turn",
            tag_behaviour=True,
            max_length_ratio=5.0,
            n_train=4,
            n_test=2,
        ),
        sft=dataclasses.replace(P.sft, config={**P.sft.config, "max_steps": 1, "bf16": False}),
        evaluation=dataclasses.replace(
            P.evaluation,
            variants=["conditioned"],
            condition_on="simple_reflection",
            max_new_tokens=4,
            max_rounds=2,
        ),
    )


def trained_text(tok, row: dict) -> str:
    """The tokens of a tokenized SFT row that carry loss, decoded (TRL: labels, -100 = no loss)."""
    assert "labels" in row, f"TRL's tokenized rows changed: {sorted(row)}"
    return tok.decode([i for i, lab in zip(row["input_ids"], row["labels"]) if lab != -100])


def test_a_tag_goes_from_transcription_through_sft_to_generation(
    tiny_model_dir, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    monkeypatch.setenv(params.RUNS_ENV, str(tmp_path))
    P = tag_params()
    # 02: the transcriber's tags are validated and kept in the stored assistant turns
    with serve(tagged_answer) as url:
        recs, fails, rep = transcribe.transcribe(
            api.Endpoint(url, "m", "k", "remote"), sample_dialogues(3), P, tmp_path / "cache.sqlite"
        )
    assert not fails and len(recs) == 6 and sum(rep["behaviours"].values()) == 12
    train, test = transcribe.split(recs, 4, 2, P.seed)
    transcribe.save(P.stage_dir("02_mi_transcription"), train, test, rep, fails)
    # 03: every training completion starts with its tag, and TRL trains on the tag's tokens
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = sft.build_dataset(P, tok)
    assert len(data) == 8 and all(schema.strip_tag(r["completion"][0]["content"])[0] for r in data)
    spec = registry.get(NAME)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=sft.sft_config(P, spec, tmp_path / "ckpt"),
        train_dataset=data,
        processing_class=tok,
        peft_config=sft.lora_config(P, spec),
    )
    trained = "".join(trained_text(tok, row) for row in trainer.train_dataset)
    for r in data:
        assert r["completion"][0]["content"] in trained  # tag and words, unchanged, carry the loss
    assert all(r["prompt"][-1]["content"] not in trained for r in data)  # the client's words do not
    trainer.save_model(str(generation.adapter_dir(P, NAME)))
    # 04: the conditioned reply was prompted with the tag, is stored plain, and names its behaviour
    gens = generation.run(P, model_paths={NAME: tiny_model_dir}, progress=False)
    assert len(gens) == 4 and {g["behaviour"] for g in gens} == {"simple_reflection"}
    for g in gens:
        assert "<mi:" not in g["reply"] and "<mi:" not in g["reference"]
        assert (
            any(m["content"].startswith("<mi:") for m in g["messages"] if m["role"] == "assistant")
            or len(g["messages"]) == 1
        )  # the history is the tagged corpus the model was trained on
    assert engine.prompt_texts(
        tok, [gens[0]["messages"]], [generation.tag_prefix("simple_reflection")]
    )[0].endswith("<start_of_turn>model\n<mi:simple_reflection>")


def test_tag_params_are_a_valid_params_file(tmp_path):
    P = tag_params()
    again = params.from_dict({**P.to_dict(), "name": "tags_e2e"})
    assert again.transcription.tag_behaviour and again.evaluation.variants == ["conditioned"]
    with pytest.raises(params.ParamsError, match="tag_behaviour"):
        params.from_dict({"transcription": {"tag_behaviour": "yes"}})
