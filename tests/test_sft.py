"""Stage 03: SFT samples, params validation, clear errors, and checkpoint/resume on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DATA, make_params

from mi_llm import params as params_mod
from mi_llm.data.schema import DataError
from mi_llm.models import registry
from mi_llm.train import sft

DIALOGUE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "u1"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "u2"},
    {"role": "assistant", "content": "a long reply"},
    {"role": "user", "content": "u3"},
    {"role": "assistant", "content": "another long one"},
]


def test_samples_whole_dialogue_by_default():
    assert sft.samples(DIALOGUE) == [{"messages": DIALOGUE}]


def test_samples_min_chars_and_context_window():
    out = sft.samples(DIALOGUE, min_response_chars=5, context_turns=2)
    assert [s["completion"][0]["content"] for s in out] == ["a long reply", "another long one"]
    # system kept; window of <= 2 turns that starts on a user turn
    assert out[0]["prompt"] == [DIALOGUE[0], DIALOGUE[3]]
    assert out[1]["prompt"] == [DIALOGUE[0], DIALOGUE[5]]
    full = sft.samples(DIALOGUE, min_response_chars=5, context_turns=None)
    assert full[1]["prompt"] == DIALOGUE[:6]
    # characters, not words: a 4-character Chinese reply passes a 4-char minimum
    zh = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "说说看吧"}]
    assert len(sft.samples(zh, min_response_chars=4, context_turns=1)) == 1
    assert sft.samples(zh, min_response_chars=5, context_turns=1) == []


def test_check_params_names_bad_keys():
    P = make_params(models=["nope"], lora={"rank": 8}, config={"max_step": 3})
    errs = "\n".join(sft.check_params(P))
    assert "unknown model 'nope'" in errs
    assert "sft.lora.rank: not a field of peft" in errs
    assert "sft.config.max_step: not a field of trl" in errs
    with pytest.raises(params_mod.ParamsError, match="sft.config.seed: set by mi_llm"):
        make_params(config={"seed": 1})  # refused on load, before any check
    assert sft.check_params(make_params()) == []
    bad = make_params(config={"padding_free": True, "max_length": 256})
    assert any("padding_free" in e for e in sft.check_params(bad))


def test_shipped_params_are_valid():
    for f in ["params/smoke.yaml", "params/paper.yaml"]:
        assert sft.check_params(params_mod.load(params_mod.ROOT / f)) == [], f


def test_train_fails_clearly(run_root):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        sft.train(make_params(models=["nope"]), "nope")
    (run_root / "runs/t" / sft.TRAIN_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no training split; run stage 02"):
        sft.train(make_params(), "llama3-8b-chinese-chat-v2")


def test_bad_record_names_file_record_field(run_root):
    f = run_root / "runs/t" / sft.TRAIN_FILE
    f.write_text(json.dumps({"id": "x7", "messages": [{"role": "client", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl: record x7: field 'messages\[0\].role'"):
        sft.read_train(make_params())


def test_fit_context_keeps_the_reply_within_max_length(tiny_llama):
    from transformers import AutoTokenizer

    tok = registry.prepare_tokenizer(
        registry.get("llama3-8b-chinese-chat-v2"), AutoTokenizer.from_pretrained(tiny_llama)
    )
    msgs = json.loads(DATA.read_text(encoding="utf-8"))[0]["messages"]
    rows = sft.samples(msgs, context_turns=None, min_response_chars=1)
    fitted = sft.fit_context(rows, tok, 160)
    assert [r["completion"] for r in fitted] == [r["completion"] for r in rows]
    for r in fitted:
        ctx = [m for m in r["prompt"] if m["role"] != "system"]
        assert ctx[0]["role"] == "user"
        assert len(ctx) == 1 or sft._n_tokens(tok, r["prompt"] + r["completion"]) <= 160
    assert sum(len(r["prompt"]) for r in fitted) < sum(len(r["prompt"]) for r in rows)


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter/adapter_model.safetensors")


def test_resume_after_interruption_matches_uninterrupted_run(run_root, tiny_llama, monkeypatch):
    from transformers import TrainerCallback

    name = "llama3-8b-chinese-chat-v2"
    P = make_params()
    full = sft.train(P, name, progress=False, model_path=tiny_llama)
    out = run_root / "runs/t/03_sft" / name
    want = _adapter(out)
    assert full["steps"] == 4 and full["resumed_from"] is None
    assert (
        0 < full["first_loss"] < 20 and full["last_loss"] > 0
    )  # every packed row holds trained tokens

    class StopAt2(TrainerCallback):  # an interruption right after the checkpoint at step 2
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                control.should_training_stop = True

    monkeypatch.setenv(params_mod.RUNS_ENV, str(run_root / "second/runs"))
    (run_root / "second/runs/t/02_mi_transcription").mkdir(parents=True)
    (run_root / "second/runs/t" / sft.TRAIN_FILE).write_bytes(
        (run_root / "runs/t" / sft.TRAIN_FILE).read_bytes()
    )
    assert sft.train(P, name, progress=False, model_path=tiny_llama, callbacks=[StopAt2()]) == {
        "stopped_at": 2
    }
    out2 = run_root / "second/runs/t/03_sft" / name
    assert not (out2 / "adapter").exists() and (out2 / "checkpoints/checkpoint-2").is_dir()
    resumed = sft.train(P, name, progress=False, model_path=tiny_llama)
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["steps"] == 4
    got = _adapter(out2)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    log = (out2 / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,learning_rate,tokens_per_s" and [
        r.split(",")[0] for r in log[1:]
    ] == list("1234")
    report = json.loads((out2 / "report.json").read_text())
    assert (
        report["train_tokens"] > 0 and report["tokens_per_s"] > 0 and report["peak_memory_mb"] > 0
    )
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out2 / "adapter")  # the template travels with the adapter
    assert saved.chat_template == registry.get(name).chat_template


@pytest.mark.parametrize(
    "name,kind",
    [
        ("ddp", "MULTI_GPU"),
        ("deepspeed_zero2", "DEEPSPEED"),
        ("deepspeed_zero3", "DEEPSPEED"),
        ("fsdp", "FSDP"),
    ],
)
def test_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(params_mod.ROOT / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.name == kind and cfg.mixed_precision == "bf16"
    if name.startswith("deepspeed"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])


def test_command_line_entry_point_rejects_unknown_model(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "mi_llm.train.sft", "params/smoke.yaml", "--model", "nope"],
        check=False,
        cwd=params_mod.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0 and "unknown model 'nope'" in r.stderr


def test_finished_run_is_kept(run_root, tiny_llama):
    P = make_params(config={**make_params().sft.config, "max_steps": 2})
    name = "llama3-8b-chinese-chat-v2"
    first = sft.train(P, name, progress=False, model_path=tiny_llama)
    again = sft.train(P, name, progress=False, model_path=tiny_llama)  # no retraining, same report
    assert again == first and first["steps"] == 2


@pytest.mark.slow
def test_changed_data_or_params_retrain_instead_of_keeping_a_stale_adapter(
    run_root, tiny_llama, capsys
):
    import hashlib

    P = make_params(config={**make_params().sft.config, "max_steps": 2})
    name = "llama3-8b-chinese-chat-v2"
    out = run_root / "runs/t/03_sft" / name
    first = sft.train(P, name, progress=False, model_path=tiny_llama)
    train_file = run_root / "runs/t" / sft.TRAIN_FILE
    assert first["identity"]["train_sha256"] == hashlib.sha256(train_file.read_bytes()).hexdigest()
    ident = json.loads((out / "checkpoints" / sft.IDENTITY_FILE).read_text())
    assert ident == first["identity"]

    # the training data changed: one record fewer
    train_file.write_text(
        "".join(train_file.read_text(encoding="utf-8").splitlines(True)[:-1]), encoding="utf-8"
    )
    second = sft.train(P, name, progress=False, model_path=tiny_llama)
    assert "training data changed" in capsys.readouterr().err
    assert second["resumed_from"] is None and second["n_samples"] < first["n_samples"]
    assert second["identity"]["train_sha256"] != first["identity"]["train_sha256"]
    assert second["identity"]["sft_params_sha256"] == first["identity"]["sft_params_sha256"]

    # the learning rate changed
    P2 = make_params(config={**P.sft.config, "learning_rate": 1e-4})
    third = sft.train(P2, name, progress=False, model_path=tiny_llama)
    assert "sft params changed" in capsys.readouterr().err
    assert (
        third["resumed_from"] is None
        and third["identity"]["sft_params_sha256"] != second["identity"]["sft_params_sha256"]
    )
    assert third["first_loss"] == pytest.approx(
        second["first_loss"], rel=1e-4
    )  # same data, same start
    assert third["last_loss"] != second["last_loss"]  # trained again with the new rate
    assert sft.train(P2, name, progress=False, model_path=tiny_llama) == third  # unchanged: kept

    # checkpoints of an older version record no identity: retrained, not trusted
    (out / "checkpoints" / sft.IDENTITY_FILE).unlink()
    fourth = sft.train(P2, name, progress=False, model_path=tiny_llama)
    assert "record no identity.json" in capsys.readouterr().err and fourth["resumed_from"] is None


# ----------------------------------------------------------------------------- loss at label positions
def _packed_batch(tok, rows, padding_free=True):
    """A TRL-collated batch of prompt/completion rows with the assistant-only labels (-100 elsewhere)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = []
    for r in rows:
        enc = tok.apply_chat_template(
            r["prompt"] + r["completion"],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, mask = enc["input_ids"], enc["assistant_masks"]
        examples.append({"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]})
    return DataCollatorForLanguageModeling(
        pad_token_id=tok.pad_token_id, padding_free=padding_free
    )(examples)


def _full_loss(model, batch, num_items):
    """The reference: full logits at every position, shifted labels, summed NLL / num_items (fp32)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()  # as in training (packed rows)
    labels = batch["labels"][:, 1:]
    return (
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        / num_items
    )


@pytest.mark.parametrize(
    "name,padding_free", [("gemma3-270m", True), ("llama3-8b-chinese-chat-v2", False)]
)
def test_label_position_loss_equals_full_computation(request, name, padding_free):
    """Same loss and same LoRA gradients as full logits + cross-entropy, under gradient accumulation."""
    from peft import LoraConfig, get_peft_model

    from mi_llm.train import loss

    folder = request.getfixturevalue("tiny_model_dir" if name == "gemma3-270m" else "tiny_llama")
    model, tok = registry.load(name, dtype="float32", path=folder)
    torch.manual_seed(1)  # LoRA B random (not zero) so that every LoRA weight has a gradient
    model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules="all-linear",
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        ),
    )
    rows = [
        r
        for d in json.loads(DATA.read_text(encoding="utf-8"))[:2]
        for r in sft.samples(d["messages"], 1, 2)
    ][:4]
    micro = [_packed_batch(tok, rows[:2], padding_free), _packed_batch(tok, rows[2:], padding_free)]
    # token-weighted accumulation: every micro-batch divides by the tokens of the whole step
    num_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    assert (
        0 < int((micro[0]["labels"] != -100).sum()) < micro[0]["labels"].numel() // 2
    )  # a real mask

    def grads(fn):
        model.zero_grad()
        total = sum(fn(b) for b in micro)
        total.backward()
        return total.detach(), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad
        }

    want_loss, want = grads(lambda b: _full_loss(model, b, num_items))
    loss.add_loss_positions_head(model.get_base_model(), liger=False)
    got_loss, got = grads(
        lambda b: model(**b, fused_lm_head=True, num_items_in_batch=num_items).loss
    )
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    assert want.keys() == got.keys() and len(want) > 0
    for k in want:
        assert want[k].abs().sum() > 0, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)
    out = model(**micro[0], fused_lm_head=True)  # TRL's metrics read these fields
    assert out.label_mask.sum() == (micro[0]["labels"][:, 1:] != -100).sum()
    assert (out.entropy > 0).sum() == out.label_mask.sum() and out.is_top1.dtype == torch.bool
    plain = model(
        **{k: v for k, v in micro[0].items() if k != "labels"}
    )  # generation path unchanged
    assert plain.logits.shape[1] == micro[0]["input_ids"].shape[1]


def test_trainer_scores_only_label_positions(run_root, tiny_llama, monkeypatch):
    """sft.train runs the loss-positions head: the output layer sees only the labelled rows."""
    from mi_llm.train import loss

    seen = []
    real = loss.label_position_scores

    def spy(hidden, weight, bias, labels, *a, **kw):
        seen.append((hidden.shape[0], int((labels != -100).sum())))
        return real(hidden, weight, bias, labels, *a, **kw)

    monkeypatch.setattr(loss, "label_position_scores", spy)
    P = make_params(config={**make_params().sft.config, "max_steps": 1})
    sft.train(P, "llama3-8b-chinese-chat-v2", progress=False, model_path=tiny_llama)
    assert seen and all(k == n > 0 for k, n in seen)


def test_last_checkpoint_is_the_largest_step(tmp_path):
    assert sft.last_checkpoint(tmp_path / "absent") is None
    assert sft.last_checkpoint(tmp_path) is None
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-2", "checkpoint-x", "runs"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-99").write_text("a file, not a checkpoint")
    assert sft.last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


def test_tokenizer_fingerprint_is_light_and_follows_the_vocabulary(embedded_model_dir):
    from datasets.fingerprint import Hasher
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    sft.light_fingerprint(tok)
    fingerprint = Hasher.hash({"processing_class": tok})
    again = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    assert Hasher.hash({"processing_class": again}) == fingerprint
    spec = json.loads(again.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    a, b = "▁hello", "▁world"
    vocab[a], vocab[b] = vocab[b], vocab[a]  # the same size and the same Python-side copies
    again._tokenizer = Tokenizer.from_str(json.dumps(spec))
    assert Hasher.hash({"processing_class": again}) != fingerprint
    assert len(tok._vocab) == tok.vocab_size  # the Python copies themselves are left in place
