"""Shared fixtures: the embedded model and a tiny random-weight model built from a config."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:
    _HAS_CUDA = False

# GPU tests live in files ending _gpu.py; without CUDA they are not even collected.
collect_ignore_glob = [] if _HAS_CUDA else ["*_gpu.py"]


def pytest_collection_modifyitems(config, items):
    """Mark GPU test files `gpu` so `-m 'not gpu'` deselects them anywhere."""
    for item in items:
        if item.path.name.endswith("_gpu.py"):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def embedded_model_dir():
    """The cached bf16 folder of the embedded Gemma 3 270M (converted on first use)."""
    from mi_llm import embedded

    return embedded.model_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_model_dir):
    """A tiny random-weight Gemma3ForCausalLM (2 layers, hidden 64) with the Gemma tokenizer."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    out = tmp_path_factory.mktemp("tiny-gemma3")
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg)
    model.generation_config.eos_token_id = [
        tok.eos_token_id,
        tok.convert_tokens_to_ids("<end_of_turn>"),
    ]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter of the tiny model with non-zero B (merging it changes the weights)."""
    from peft import LoraConfig, get_peft_model

    from mi_llm import models

    model, _ = models.load("gemma3-270m", "cpu", path=tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, lora).save_pretrained(path)
    return path
