"""Convert a Baichuan2 checkpoint (remote code, fused W_pack) to a plain Llama checkpoint.

Baichuan2-7B is Llama with two differences: q, k and v live in one fused Linear `W_pack`
(weight [3*hidden, hidden], rows q | k | v) and the output layer is a NormHead whose rows are
L2-normalised before use. Its remote modelling and tokenizer code break on recent transformers, so
we split W_pack into q_proj/k_proj/v_proj, normalise lm_head once, write a LlamaConfig and a fast
tokenizer; the result loads with AutoModelForCausalLM and no remote code.
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
    return {
        k: v for f in files for k, v in torch.load(f, map_location="cpu", weights_only=True).items()
    }


def convert_state_dict(
    sd: dict, hidden_size: int, norm_head: bool = True
) -> dict[str, torch.Tensor]:
    """Baichuan keys/tensors -> Llama keys/tensors (split W_pack, normalise the NormHead)."""
    out = {}
    for key, w in sd.items():
        if key.endswith("self_attn.W_pack.weight"):
            if w.shape[0] != 3 * hidden_size:
                raise ValueError(
                    f"{key}: expected {3 * hidden_size} rows (q|k|v), got {tuple(w.shape)}"
                )
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
        raise ValueError(
            f"expected a Baichuan config (model_type 'baichuan'), got {cfg.get('model_type')!r}"
        )
    return LlamaConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_attention_heads"],
        hidden_act=cfg.get("hidden_act", "silu"),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},  # Baichuan2-7B's RoPE base
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id", 0),
        tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        attention_bias=False,
        mlp_bias=False,
        dtype=cfg.get("torch_dtype", "bfloat16"),
    )


def fast_tokenizer(model_file: str | Path):
    """Baichuan2's SentencePiece BPE model as a `tokenizers` BPE giving sentencepiece's own ids.

    Baichuan2's model: identity normaliser, no dummy prefix, spaces kept as "▁", byte fallback,
    ~1,000 user-defined symbols (punctuation, digits, <reserved_N>) that sentencepiece always cuts
    out whole. SentencePiece merges the adjacent pair whose merged piece scores highest, so the
    merges are ranked by that score (ranking by piece id differs on words such as "Practitioner").
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    norm = proto.normalizer_spec
    if (
        proto.trainer_spec.model_type != 2
        or norm.add_dummy_prefix
        or norm.remove_extra_whitespaces
        or norm.precompiled_charsmap
    ):  # 2 = BPE; anything else needs a different conversion
        raise ValueError(
            f"{model_file}: not a Baichuan2-style SentencePiece BPE model "
            "(expected BPE, identity normaliser, no dummy prefix)"
        )
    pieces = proto.pieces
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    ranked = []  # (-score of the merged piece, its id, left, right)
    for i, p in enumerate(pieces):
        if p.type != 1:  # 1 = NORMAL; control/user-defined/byte pieces are never merge results
            continue
        for k in range(1, len(p.piece)):
            left, right = p.piece[:k], p.piece[k:]
            if left in vocab and right in vocab:
                ranked.append((-p.score, i, vocab[left], vocab[right], left, right))
    merges = [(left, right) for *_, left, right in sorted(ranked)]
    unk = pieces[proto.trainer_spec.unk_id].piece
    tk = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True)
    )
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # 2 = UNKNOWN, 3 = CONTROL (<s>, </s>): special; 4 = USER_DEFINED: plain text cut out whole
    tk.add_tokens(
        [
            AddedToken(p.piece, special=p.type in (2, 3), normalized=False)
            for p in pieces
            if p.type in (2, 3, 4)
        ]
    )
    return tk


def tokenizer(src: str | Path):
    """The fast tokenizer of a Baichuan2 folder (tokenizer.json, or its SentencePiece tokenizer.model)."""
    from transformers import PreTrainedTokenizerFast

    src = Path(src)
    if (src / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(src)
    if not (src / "tokenizer.model").exists():
        raise FileNotFoundError(f"{src}: no tokenizer.json or tokenizer.model")
    # Baichuan2's tokenizer_config: encode adds neither <s> nor </s>; <unk> pads
    tok = PreTrainedTokenizerFast(
        tokenizer_object=fast_tokenizer(src / "tokenizer.model"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    tok.add_special_tokens(
        {"additional_special_tokens": CHAT_TOKENS}, replace_extra_special_tokens=False
    )
    return tok


def convert_tokenizer(src: Path, dst: Path) -> None:
    """Write the folder's tokenizer as tokenizer.json (the ids of Baichuan2's own tokenizer)."""
    from mi_llm.models.tokenizer_files import save_tokenizer

    save_tokenizer(tokenizer(src), dst)


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

    save_file(
        {k: v.contiguous() for k, v in sd.items()},
        tmp / "model.safetensors",
        metadata={"format": "pt"},
    )
    convert_tokenizer(src, tmp)
    gen = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    gen.save_pretrained(tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def cached(hub_id: str, revision: str | None = None) -> Path:
    """The converted Llama folder of a hub Baichuan2 checkpoint, downloading/converting it once."""
    from huggingface_hub import snapshot_download

    from mi_llm.models.embedded import cache_root

    dst = cache_root() / "models" / (hub_id.replace("/", "--") + f"-{revision or 'main'}-llama")
    if not (dst / "config.json").exists():
        src = snapshot_download(hub_id, revision=revision)
        convert(src, dst)
    return dst
