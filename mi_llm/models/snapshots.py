"""Local hub snapshots of the paper's three models: their published tokenizer files, and tiny
random-weight checkpoints of their real architectures (no download, no remote code).

`data/tokenizers/<folder>/` ships each model's tokenizer files as its hub snapshot lays them out
(large ones xz-compressed; PROVENANCE.md there gives sources, hashes and licenses).
`tokenizer_folder(name)` restores the snapshot into the cache; `tiny_checkpoint(name, out)` writes a
checkpoint whose config is the model's own with only the sizes shrunk, with the real tokenizer:
Baichuan2 in its raw `W_pack` layout (model_type "baichuan", which `registry.load` converts), GLM-4 and
Llama 3 as their transformers classes.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
from pathlib import Path

from mi_llm.params import ROOT

SHIPPED = ROOT / "data" / "tokenizers"

# the tiny sizes: 2 layers of width 64 (the vocabulary stays the real one, so the embeddings dominate:
# 125,696-151,552 tokens x 64 x 2 (embed + head) = 16-19M parameters)
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}


def shipped_folder(name: str) -> Path:
    """data/tokenizers/<folder> of a registry model (KeyError naming the models that have one)."""
    from mi_llm.models import registry

    spec = registry.get(name)
    if spec.tokenizer_files is None:
        have = [n for n in registry.NAMES if registry.get(n).tokenizer_files]
        raise KeyError(f"model {name!r} has no shipped tokenizer files; models with them: {have}")
    return SHIPPED / spec.tokenizer_files


def tokenizer_folder(name: str) -> Path:
    """The model's tokenizer snapshot, restored once (xz files decompressed) into the cache."""
    from mi_llm.models.embedded import cache_root

    src = shipped_folder(name)
    digest = hashlib.sha256(
        b"".join(f.name.encode() + f.read_bytes() for f in sorted(src.iterdir()))
    ).hexdigest()[:12]
    dst = cache_root() / "tokenizers" / f"{src.name}-{digest}"
    if dst.is_dir():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".xz":
            (tmp / f.stem).write_bytes(lzma.decompress(f.read_bytes()))
        else:
            shutil.copy(f, tmp / f.name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def _tiny_config(cfg: dict) -> dict:
    """A config.json mapping with the model's own settings and the TINY sizes."""
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    heads, kv = TINY["num_attention_heads"], cfg.get("num_key_value_heads")
    cfg |= TINY
    if kv is not None:  # keep grouped-query attention grouped: 32 heads / 8 kv -> 4 / 1
        cfg["num_key_value_heads"] = max(1, heads * kv // 32)
    if "head_dim" in cfg:
        cfg["head_dim"] = TINY["hidden_size"] // heads
    cfg["max_position_embeddings"] = min(cfg.get("max_position_embeddings", 4096), 4096)
    cfg["torch_dtype"] = "float32"
    return cfg


def tiny_checkpoint(name: str, out: str | Path, seed: int = 0) -> Path:
    """Write (once) a random-weight checkpoint of `name`'s architecture with its real tokenizer."""
    import torch

    out = Path(out)
    if (out / "config.json").exists():
        return out
    src = tokenizer_folder(name)
    cfg = _tiny_config(json.loads((src / "config.json").read_text(encoding="utf-8")))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("config.json", "*.py"))
    torch.manual_seed(seed)
    if cfg["model_type"] == "baichuan":
        _write_baichuan(cfg, tmp)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.for_model(**cfg)
        model = AutoModelForCausalLM.from_config(config)
        gen = src / "generation_config.nonhf.json"  # GLM-4's eos ids include <|user|>
        if gen.exists():
            model.generation_config.eos_token_id = json.loads(gen.read_text())["eos_token_id"]
        model.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _write_baichuan(cfg: dict, dst: Path) -> None:
    """Baichuan2's own layout: fused q|k|v `W_pack`, an un-normalised NormHead, its config.json."""
    import torch
    from safetensors.torch import save_file

    H, inter, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    std = cfg.get("initializer_range", 0.02)

    def r(*shape):
        return torch.randn(*shape) * std

    sd = {
        "model.embed_tokens.weight": r(V, H),
        "model.norm.weight": torch.ones(H),
        "lm_head.weight": r(V, H),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd |= {
            p + "self_attn.W_pack.weight": r(3 * H, H),
            p + "self_attn.o_proj.weight": r(H, H),
            p + "mlp.gate_proj.weight": r(inter, H),
            p + "mlp.up_proj.weight": r(inter, H),
            p + "mlp.down_proj.weight": r(H, inter),
            p + "input_layernorm.weight": torch.ones(H),
            p + "post_attention_layernorm.weight": torch.ones(H),
        }
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
