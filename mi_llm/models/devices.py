"""What this machine computes in: native bf16 on the CPU or not, and the dtype a run uses."""

from __future__ import annotations

from pathlib import Path


def cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX). Without it torch emulates
    bf16 products, several times slower than fp32 (benchmarks/README.md)."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch: read the CPU flags
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_dtype(dtype: str, device: str) -> str:
    """The dtype to compute in: `dtype`, except bf16 on a CPU without native bf16, which runs in fp32."""
    return (
        "float32"
        if dtype == "bfloat16" and str(device).startswith("cpu") and not cpu_bf16()
        else dtype
    )
