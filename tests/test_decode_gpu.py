"""GPU checks of the decoding engines (collected only with CUDA): `auto` is hf there, and the hf
engine's batched greedy replies on CUDA in fp32 are those it writes on the CPU."""

from __future__ import annotations

import torch
from conftest import CONV
from test_decode import tiny_dir

from mi_llm.decode import engine
from mi_llm.models import registry

NAME = "llama3-8b-chinese-chat-v2"


def test_hf_engine_on_cuda_writes_what_it_writes_on_cpu(tmp_path):
    tiny_llama = tiny_dir(tmp_path, NAME)  # peaked logits: no near-tie for the devices to split
    prompts = [CONV[:2], CONV[:4], [CONV[1]]]
    kw = {"batch_size": 3, "max_new_tokens": 8, "stop_tokens": registry.get(NAME).special_tokens}
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products, as on the CPU
    gpu, tok = registry.load(NAME, "cuda", dtype="float32", path=tiny_llama)
    assert engine.resolve("auto", next(gpu.parameters()).device) == "hf"
    on_gpu = engine.generate(gpu, tok, prompts, **kw)  # auto: hf on CUDA
    cpu, tok = registry.load(NAME, "cpu", dtype="float32", path=tiny_llama)
    assert on_gpu == engine.generate(cpu, tok, prompts, engine="hf", **kw)
    assert all(on_gpu)


def test_hf_engine_in_bf16_on_cuda(tmp_path):
    tiny_llama = tiny_dir(tmp_path, NAME)
    model, tok = registry.load(NAME, "cuda", path=tiny_llama)
    assert next(model.parameters()).dtype == torch.bfloat16
    replies = engine.generate(model, tok, [CONV[:2], CONV[:4]], engine="hf", max_new_tokens=8)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
