"""Convert a Baichuan2 checkpoint (remote code, fused W_pack) to a plain Llama checkpoint.

Baichuan2-7B is Llama with two differences: q, k and v live in one fused Linear `W_pack`
(weight [3*hidden, hidden], rows q | k | v) and the output layer is a NormHead whose rows are
L2-normalised before use. Its remote modelling and tokenizer code break on recent transformers, so
we split W_pack into q_proj/k_proj/v_proj, normalise lm_head once, write a LlamaConfig and a fast
Llama tokenizer; the result loads with AutoModelForCausalLM and no remote code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

# Baichuan2 chat markers: user_token_id 195, assistant_token_id 196 in its generation_config
CHAT_TOKENS = ["<reserved_106>", "<reserved_107>"]


def read_state_dict(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder (*.safetensors, else pytorch_model*.bin)."""
    from safetensors.torch import load_file

    files = sorted(src.glob("*.safetensors"))
    if files:
        return {k: v for f in files for k, v in load_file(f).items()}
    files = sorted(src.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{src}: no *.safetensors or pytorch_model*.bin weights")
    return {k: v for f in files for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}


def convert_state_dict(sd: dict, hidden_size: int, norm_head: bool = True) -> dict[str, torch.Tensor]:
    """Baichuan keys/tensors -> Llama keys/tensors (split W_pack, normalise the NormHead)."""
    out = {}
    for key, w in sd.items():
        if key.endswith("self_attn.W_pack.weight"):
            if w.shape[0] != 3 * hidden_size:
                raise ValueError(f"{key}: expected {3 * hidden_size} rows (q|k|v), got {tuple(w.shape)}")
            prefix = key[: -len("W_pack.weight")]
            q, k, v = w.split(hidden_size, dim=0)
            out[prefix + "q_proj.weight"], out[prefix + "k_proj.weight"] = q.clone(), k.clone()
            out[prefix + "v_proj.weight"] = v.clone()
        elif key == "lm_head.weight" and norm_head:
            # NormHead: logits = h @ normalize(W).T; normalise in fp32, store in the source dtype
            out[key] = torch.nn.functional.normalize(w.float(), dim=-1).to(w.dtype)
        elif "rotary_emb.inv_freq" in key:
            continue  # a buffer that Llama recomputes
        else:
            out[key] = w
    return out


def llama_config(cfg: dict):
    """LlamaConfig equivalent to a Baichuan config.json mapping."""
    from transformers import LlamaConfig

    if cfg.get("model_type") != "baichuan":
        raise ValueError(f"expected a Baichuan config (model_type 'baichuan'), got {cfg.get('model_type')!r}")
    return LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"], num_key_value_heads=cfg["num_attention_heads"],
        hidden_act=cfg.get("hidden_act", "silu"), rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},  # Baichuan2-7B's RoPE base
        bos_token_id=cfg.get("bos_token_id", 1), eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id", 0), tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        attention_bias=False, mlp_bias=False, dtype=cfg.get("torch_dtype", "bfloat16"),
    )


def convert_tokenizer(src: Path, dst: Path) -> None:
    """Write a fast Llama tokenizer with the chat markers kept whole (needs sentencepiece for .model)."""
    from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

    if (src / "tokenizer.json").exists():
        tok = PreTrainedTokenizerFast.from_pretrained(src)
    elif (src / "tokenizer.model").exists():
        # Baichuan2's SentencePiece model: no BOS/EOS added by encode, no dummy prefix
        tok = LlamaTokenizerFast(vocab_file=str(src / "tokenizer.model"), add_bos_token=False,
                                 add_eos_token=False, legacy=False, add_prefix_space=False)
    else:
        raise FileNotFoundError(f"{src}: no tokenizer.json or tokenizer.model")
    tok.add_special_tokens({"additional_special_tokens": CHAT_TOKENS}, replace_extra_special_tokens=False)
    tok.save_pretrained(dst)


def convert(src: str | Path, dst: str | Path, norm_head: bool = True) -> Path:
    """Convert the Baichuan folder `src` into a Llama folder `dst` (written atomically)."""
    from transformers import GenerationConfig

    src, dst = Path(src), Path(dst)
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    config = llama_config(cfg)
    sd = convert_state_dict(read_state_dict(src), cfg["hidden_size"], norm_head)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.save_pretrained(tmp)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
    convert_tokenizer(src, tmp)
    gen = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                           pad_token_id=config.pad_token_id)
    gen.save_pretrained(tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def cached(hub_id: str, revision: str | None = None) -> Path:
    """The converted Llama folder of a hub Baichuan2 checkpoint, downloading/converting it once."""
    from huggingface_hub import snapshot_download

    from .embedded import cache_root

    dst = cache_root() / "models" / (hub_id.replace("/", "--") + f"-{revision or 'main'}-llama")
    if not (dst / "config.json").exists():
        src = snapshot_download(hub_id, revision=revision)
        convert(src, dst)
    return dst
