"""GPU checks (collected only with CUDA): SFT on CUDA with bf16 and padding-free packing."""

from __future__ import annotations

import torch
from conftest import make_params

from mi_llm import params as params_mod
from mi_llm.models import registry
from mi_llm.train import sft


def test_sft_trains_on_cuda(run_root, tiny_llama):
    P = params_mod.from_dict({**make_params().to_dict(), "device": "cuda"})
    report = sft.train(P, "llama3-8b-chinese-chat-v2", progress=False, model_path=tiny_llama)
    assert report["steps"] == 4 and report["peak_memory_kind"] == "cuda_max_allocated"
    assert report["packing"] and report["padding_free"]


def test_load_puts_model_on_cuda(tiny_llama):
    model, tok = registry.load("llama3-8b-chinese-chat-v2", device="cuda", path=tiny_llama)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "你好"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )["input_ids"].cuda()
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.device.type == "cuda" and out.shape[1] > ids.shape[1]
    assert next(model.parameters()).dtype == torch.bfloat16
