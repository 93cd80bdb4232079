"""The model registry: chat templates (golden strings), loss masks, tiny models per architecture,
and the Baichuan2 -> Llama converter (logits identical to a plain-torch Baichuan forward pass)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import CONV, SPECIALS, tiny_tokenizer

from mi_llm.models import registry
from mi_llm.models.tokenizer_files import save_tokenizer

S, U1, A1, U2, A2 = (m["content"] for m in CONV)

# Each model's documented format (model cards / the tokenizers' own templates / Baichuan2's
# build_chat_input), with the end-of-turn token that closes every assistant reply.
GOLDEN = {
    "gemma3-270m": (
        f"<bos><start_of_turn>user\n{S}\n\n{U1}<end_of_turn>\n<start_of_turn>model\n{A1}<end_of_turn>\n"
        f"<start_of_turn>user\n{U2}<end_of_turn>\n<start_of_turn>model\n{A2}<end_of_turn>\n"
    ),
    "llama3-8b-chinese-chat-v2": (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{S}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A1}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U2}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A2}<|eot_id|>"
    ),
    "glm-4-9b-chat": (
        f"[gMASK]<sop><|system|>\n{S}<|user|>\n{U1}<|assistant|>\n{A1}<|user|>\n{U2}<|assistant|>\n{A2}<|user|>"
    ),
    "baichuan2-7b-chat": f"{S}<reserved_106>{U1}<reserved_107>{A1}</s><reserved_106>{U2}<reserved_107>{A2}</s>",
}
# What the model sees before it answers (add_generation_prompt=True on system + first user turn)
PROMPT = {
    "gemma3-270m": f"<bos><start_of_turn>user\n{S}\n\n{U1}<end_of_turn>\n<start_of_turn>model\n",
    "llama3-8b-chinese-chat-v2": (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{S}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "glm-4-9b-chat": f"[gMASK]<sop><|system|>\n{S}<|user|>\n{U1}<|assistant|>",
    "baichuan2-7b-chat": f"{S}<reserved_106>{U1}<reserved_107>",
}
# The exact text the loss must cover: each reply plus its end-of-turn token, nothing else
ASSISTANT_SPANS = {
    "gemma3-270m": [f"{A1}<end_of_turn>\n", f"{A2}<end_of_turn>\n"],
    "llama3-8b-chinese-chat-v2": [f"{A1}<|eot_id|>", f"{A2}<|eot_id|>"],
    "glm-4-9b-chat": [f"\n{A1}<|user|>", f"\n{A2}<|user|>"],
    "baichuan2-7b-chat": [f"{A1}</s>", f"{A2}</s>"],
}


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dir):
    """The registry's tokenizer for every model: Gemma's real one, tiny BPE ones for the others."""
    from transformers import AutoTokenizer

    out = {
        "gemma3-270m": registry.prepare_tokenizer(
            registry.get("gemma3-270m"), AutoTokenizer.from_pretrained(tiny_model_dir)
        )
    }
    for name in SPECIALS:
        out[name] = registry.prepare_tokenizer(registry.get(name), tiny_tokenizer(name))
    return out


def test_registry_names_and_unknown():
    assert set(registry.NAMES) == set(GOLDEN)
    for name in registry.NAMES:
        spec = registry.get(name)
        assert "generation" in spec.chat_template and spec.eot_token in spec.chat_template
    with pytest.raises(KeyError, match="unknown model 'gpt-5'.*glm-4-9b-chat"):
        registry.get("gpt-5")


@pytest.mark.parametrize("name", list(GOLDEN))
def test_template_matches_documented_format(tokenizers, name):
    tok = tokenizers[name]
    assert tok.apply_chat_template(CONV, tokenize=False) == GOLDEN[name]
    prompt = tok.apply_chat_template(CONV[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == PROMPT[name]
    assert GOLDEN[name].startswith(prompt)  # inference sees exactly the training prefix


def _runs(ids, mask):
    """Contiguous runs of ids where mask is 1."""
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs, cur = runs + [cur], []
    return runs + [cur] if cur else runs


@pytest.mark.parametrize("name", list(GOLDEN))
def test_loss_mask_is_exactly_the_assistant_replies(tokenizers, name):
    tok = tokenizers[name]
    spec = registry.get(name)
    out = tok.apply_chat_template(
        CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    runs = _runs(ids, mask)
    assert [tok.decode(r) for r in runs] == ASSISTANT_SPANS[name]
    eot = tok.convert_tokens_to_ids(spec.eot_token)
    assert all(eot in r for r in runs)  # the model learns to stop
    assert tok.pad_token != spec.eot_token  # padding never hides the eot token from the loss
    unmasked = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert A1 not in unmasked and A2 not in unmasked and S in unmasked and U2 in unmasked


def test_loss_mask_through_trl(tokenizers):
    """TRL's own check agrees that every template trains the end-of-turn token."""
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    for name, tok in tokenizers.items():
        assert is_chat_template_stop_token_trained(tok), name


def _save_tiny(tmp_path, name, config, tok):
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    d = tmp_path / name
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("name", ["llama3-8b-chinese-chat-v2", "glm-4-9b-chat", "gemma3-270m"])
def test_load_tiny_model_per_architecture(tmp_path, tiny_model_dir, name):
    from transformers import Glm4Config, LlamaConfig

    small = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 256,
    }
    if name == "gemma3-270m":
        d = tiny_model_dir
    else:
        tok = tiny_tokenizer(name)
        cfg = (LlamaConfig if name.startswith("llama") else Glm4Config)(
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
            **small,
        )
        d = _save_tiny(tmp_path, name, cfg, tok)
    model, tok = registry.load(name, path=d, dtype="float32")
    eot = tok.convert_tokens_to_ids(registry.get(name).eot_token)
    assert eot in model.generation_config.eos_token_id
    ids = tok.apply_chat_template(CONV, tokenize=True, return_dict=True, return_tensors="pt")[
        "input_ids"
    ]
    logits = model(input_ids=ids).logits
    assert (
        logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()
    )


# ----------------------------------------------------------------------------- Baichuan converter
BAICHUAN = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 256,
}


def baichuan_state_dict(vocab):
    """Random weights in Baichuan2-7B's layout (fused W_pack, un-normalised NormHead)."""
    H, I, L = BAICHUAN["hidden_size"], BAICHUAN["intermediate_size"], BAICHUAN["num_hidden_layers"]
    g = torch.Generator().manual_seed(0)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    sd = {
        "model.embed_tokens.weight": r(vocab, H, s=1.0),
        "model.norm.weight": 1 + r(H),
        "lm_head.weight": r(vocab, H, s=3.0),
    }
    for i in range(L):
        p = f"model.layers.{i}."
        sd |= {
            p + "self_attn.W_pack.weight": r(3 * H, H),
            p + "self_attn.o_proj.weight": r(H, H),
            p + "mlp.gate_proj.weight": r(I, H),
            p + "mlp.up_proj.weight": r(I, H),
            p + "mlp.down_proj.weight": r(H, I),
            p + "input_layernorm.weight": 1 + r(H),
            p + "post_attention_layernorm.weight": 1 + r(H),
        }
    return sd


def baichuan_forward(sd, ids):
    """Baichuan2-7B's forward pass in plain torch: RMSNorm, W_pack attention with RoPE, SwiGLU, NormHead."""
    H, nh, eps = BAICHUAN["hidden_size"], BAICHUAN["num_attention_heads"], BAICHUAN["rms_norm_eps"]
    hd, T = H // nh, ids.shape[0]
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    emb = torch.cat([torch.outer(torch.arange(T).float(), inv)] * 2, dim=-1)  # [T, hd]
    cos, sin = emb.cos(), emb.sin()

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rot(x):
        return torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], dim=-1)

    causal = torch.full((T, T), float("-inf")).triu(1)
    h = sd["model.embed_tokens.weight"][ids]  # [T, H]
    for i in range(BAICHUAN["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms(h, sd[p + "input_layernorm.weight"])
        q, k, v = (x @ sd[p + "self_attn.W_pack.weight"].T).unflatten(-1, (3, H)).unbind(-2)
        q, k, v = (t.view(T, nh, hd).transpose(0, 1) for t in (q, k, v))  # [nh, T, hd]
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + causal, dim=-1)
        h = h + (att @ v).transpose(0, 1).reshape(T, H) @ sd[p + "self_attn.o_proj.weight"].T
        x = rms(h, sd[p + "post_attention_layernorm.weight"])
        h = (
            h
            + (F.silu(x @ sd[p + "mlp.gate_proj.weight"].T) * (x @ sd[p + "mlp.up_proj.weight"].T))
            @ sd[p + "mlp.down_proj.weight"].T
        )
    return rms(h, sd["model.norm.weight"]) @ F.normalize(sd["lm_head.weight"], dim=-1).T


def test_baichuan_converter_gives_identical_logits(tmp_path):
    tok = tiny_tokenizer("baichuan2-7b-chat")
    src = tmp_path / "baichuan"
    src.mkdir()
    sd = baichuan_state_dict(len(tok))
    torch.save(sd, src / "pytorch_model.bin")
    cfg = {
        "model_type": "baichuan",
        "architectures": ["BaichuanForCausalLM"],
        "vocab_size": len(tok),
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        **BAICHUAN,
    }
    (src / "config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(src)
    model, ltok = registry.load(
        "baichuan2-7b-chat", path=src, dtype="float32"
    )  # converts, then loads
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = ltok.apply_chat_template(CONV, tokenize=True, return_dict=True, return_tensors="pt")[
        "input_ids"
    ][0]
    assert ltok.decode(ids) == GOLDEN["baichuan2-7b-chat"]
    with torch.no_grad():
        got = model(input_ids=ids[None]).logits[0]
    want = baichuan_forward(sd, ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (
        ltok.convert_tokens_to_ids("<reserved_106>"),
        ltok.convert_tokens_to_ids("<reserved_107>"),
    ) == (3, 4)


def test_converter_rejects_wrong_layout():
    from mi_llm.models import convert_baichuan

    with pytest.raises(ValueError, match="W_pack.weight: expected 192 rows"):
        convert_baichuan.convert_state_dict(
            {"model.layers.0.self_attn.W_pack.weight": torch.zeros(10, 64)}, 64
        )
    with pytest.raises(ValueError, match="expected a Baichuan config"):
        convert_baichuan.llama_config({"model_type": "llama"})


def test_saved_tokenizer_loads_without_parsing_tokenizer_json_twice(tmp_path, embedded_model_dir):
    """save_tokenizer writes the added tokens to tokenizer_config.json too: the folder loads the same
    tokenizer, and transformers reads the 33 MB tokenizer.json once, not twice."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    plain, ours = tmp_path / "plain", tmp_path / "ours"
    tok.save_pretrained(plain)
    save_tokenizer(tok, ours)
    cfg = json.loads((ours / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert len(cfg["added_tokens_decoder"]) == len(tok.added_tokens_decoder)

    reads = []
    real = json.load

    def counting(fp, *a, **kw):
        reads.append(os.path.basename(getattr(fp, "name", "")))
        return real(fp, *a, **kw)

    json.load = counting
    try:
        loaded = {}
        for folder in (plain, ours):
            reads.clear()
            loaded[folder.name] = (
                AutoTokenizer.from_pretrained(folder),
                reads.count("tokenizer.json"),
            )
    finally:
        json.load = real
    (a, n_plain), (b, n_ours) = loaded["plain"], loaded["ours"]
    assert n_ours == 1 and n_plain >= n_ours
    text = "<start_of_turn>user\n我最近睡不好<end_of_turn>\n<start_of_turn>model\n"
    assert a(text)["input_ids"] == b(text)["input_ids"] == tok(text)["input_ids"]
    assert a.added_tokens_decoder == b.added_tokens_decoder
    assert a.special_tokens_map == b.special_tokens_map and type(a) is type(b)
