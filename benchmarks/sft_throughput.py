"""LoRA SFT throughput: TRL's defaults against the project's configuration, same model, same data.

    .venv/bin/python benchmarks/sft_throughput.py            # CPU: a small random Llama
    .venv/bin/python benchmarks/sft_throughput.py --model gemma3-270m   # CPU: the embedded model
    python benchmarks/sft_throughput.py --gpu                # GPU: an 8B Llama-3-shaped random model

Both configurations train the same LoRA (r=16, all linear layers) on the same samples (the shipped
PsyDTCorpus dialogues, one prompt/completion sample per counselor reply with 6 turns of context, so
the loss is on the reply) with the same rows per step and max_length:
  defaults: TRL as a user runs it: SFTTrainer + SFTConfig(max_steps, per_device_train_batch_size,
            max_length) and nothing else (rows padded to the longest in the batch, no packing; TRL's
            fused LM head, which on CPU scores every position of the vocabulary)
  trl-packing: TRL as a user who knows it runs it: the defaults plus packing=True (TRL's
            best-fit-decreasing, padding-free) and assistant_only_loss=True, in the project's
            compute dtype, so that the ratio to the project is what its own trainer adds
  defaults-fp32: the same as defaults, with the model in fp32; run only where the project computes in fp32
            (a CPU without native bf16), so the table separates the dtype's share of the speed-up
            from the loss-position and packing share
  project : mi_llm.train.sft's configuration (sft.sft_config) and trainer (mi_llm.train.loss): the output
            layer and cross-entropy at the label positions only, padding-free best-fit-decreasing
            packing, FlashAttention-2 when flash_attn is installed (GPU; else SDPA), Liger's fused
            linear cross-entropy and kernels when liger_kernel is installed (GPU).
The optimisations active on this device are printed. The peak FLOP/s behind MFU is measured (or
read from the datasheet) in its own step before any training. Each configuration runs in its own
subprocess so that peak memory (CUDA allocated on a GPU, and the process' peak RSS) is its own.

Tokens are real (non-padding) tokens. FLOPs per real token, counted as model FLOPs (a
multiply-add = 2 FLOPs; recomputation under gradient checkpointing is not counted):
  4 * N_matmul        forward (2N) + backward for activation gradients (2N); the base weights are
                      frozen, so the weight-gradient matmuls (another 2N of full fine-tuning's 6N) are skipped
  + 6 * N_lora        LoRA weights: forward, activation and weight gradients
  + 12 * L * d_attn * c   attention scores and values: forward 4*L*d*c (QK^T and AV), backward 2x,
                      c = mean number of keys a query attends to (causal: (len+1)/2 per sequence)
where N_matmul counts the weights of every Linear layer incl. the output layer (not the embedding
lookup), L layers, d_attn = heads * head_dim. MFU = achieved FLOP/s / peak FLOP/s; the peak is the
datasheet's dense bf16 figure on known GPUs, else (CPU) a measured large matmul in the compute dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
SHAPES = {  # random-weight Llama shapes (no download)
    "cpu": {
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
    },
    "gpu": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    },  # Llama-3-8B
}


def data_rows() -> list[dict]:
    """Prompt/completion samples from the shipped PsyDTCorpus dialogues (real text)."""
    from mi_llm.train import sft

    dialogues = json.loads(
        (ROOT / "data/PsyDTCorpus/PsyDTCorpus_sample.json").read_text(encoding="utf-8")
    )
    return [r for d in dialogues for r in sft.samples(d["messages"], 1, 6)]


def bpe_tokenizer(rows, vocab_size=8000):
    """A byte-level BPE tokenizer trained on the samples, with Llama 3's chat special tokens."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    tk = Tokenizer(BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    text = [m["content"] for r in rows for m in r["prompt"] + r["completion"]]
    tk.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=specials[0], eos_token=specials[4], pad_token=specials[1]
    )


def build_model(args, attn: str, dtype: str = "bfloat16"):
    """(model, tokenizer, registry spec): the embedded Gemma or a random Llama from a config."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from mi_llm.models import registry

    if args.model:
        model, tok = registry.load(args.model, dtype=dtype)  # SDPA
        return model, tok, registry.get(args.model)
    spec = registry.get("llama3-8b-chinese-chat-v2")  # its template and LoRA targets
    tok = registry.prepare_tokenizer(spec, bpe_tokenizer(data_rows()))
    cfg = LlamaConfig(
        **SHAPES["gpu" if args.gpu else "cpu"],
        max_position_embeddings=8192,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if args.gpu else "cpu"):  # initialised in place, in bf16 (16 GB at 8B)
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    return model, tok, spec


def flops_per_token(model, mean_ctx: float) -> tuple[float, int, int]:
    """(model FLOPs per real token for LoRA SFT, N_matmul, N_lora) as in the module docstring."""
    import torch

    n_matmul = n_lora = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
            n_matmul += mod.weight.numel()
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    cfg = model.config.get_text_config()
    d_attn = cfg.num_attention_heads * getattr(
        cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads
    )
    attn = 12 * cfg.num_hidden_layers * d_attn * mean_ctx
    return 4 * n_matmul + 6 * n_lora + attn, n_matmul, n_lora


def peak_flops(gpu: bool) -> tuple[float, str]:
    """Peak dense bf16 FLOP/s: the datasheet figure of a known GPU, else a measured matmul."""
    import torch

    if gpu:
        name = torch.cuda.get_device_name()
        for key, val in GPU_PEAK_BF16.items():
            if key in name:
                return val, f"{name} datasheet dense bf16"
    from mi_llm.models import devices

    n, dev = (8192, "cuda") if gpu else (2048, "cpu")
    dtype = getattr(
        torch, devices.compute_dtype("bfloat16", dev)
    )  # fp32 on a CPU without native bf16
    a = torch.randn(n, n, dtype=dtype, device=dev)
    b = torch.randn(n, n, dtype=dtype, device=dev)
    a @ b  # warm-up
    best = float("inf")
    # the best of five: a moment of contention on a shared machine is not the peak
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        if gpu:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best, f"measured {n}^3 {str(dtype)[6:]} matmul on {dev}, best of 5"


def has(package: str) -> bool:
    """Whether an optional package is importable."""
    import importlib.util

    return importlib.util.find_spec(package) is not None


def run_one(args, which: str) -> dict:
    """Train `which` ('defaults' | 'defaults-fp32' | 'trl-packing' | 'project') for warmup +
    measured steps; return its figures."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from mi_llm import params
    from mi_llm.models import devices
    from mi_llm.train import sft
    from mi_llm.train.loss import LossPositionsSFTTrainer, use_liger

    project = which == "project"
    attn = (
        "flash_attention_2"
        if project and args.gpu and has("flash_attn") and not args.model
        else "sdpa"
    )
    # defaults: the checkpoint's bf16 (TRL loads dtype "auto" and trains with bf16 autocast);
    # project and defaults-fp32: devices.compute_dtype, fp32 on a CPU without native bf16
    dtype = (
        "bfloat16"
        if which == "defaults"
        else devices.compute_dtype("bfloat16", "cuda" if args.gpu else "cpu")
    )
    model, tok, spec = build_model(args, attn, dtype)
    rows = data_rows()
    lens = [
        min(
            len(
                tok.apply_chat_template(
                    r["prompt"] + r["completion"], tokenize=True, return_dict=True
                )["input_ids"]
            ),
            args.seq,
        )
        for r in rows
    ]
    mean_ctx = sum(n * (n + 1) / 2 for n in lens) / sum(lens)  # keys per query, token-weighted
    common = {
        "max_steps": args.warmup + args.steps,
        "per_device_train_batch_size": args.batch,
        "max_length": args.seq,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "include_num_input_tokens_seen": "non_padding",
        "disable_tqdm": True,
    }
    out_dir = tempfile.mkdtemp(prefix=f"sft-bench-{which}-")
    if project:
        liger = args.gpu and has("liger_kernel")
        P = params.from_dict(
            {
                "name": "bench",
                "device": "cuda" if args.gpu else "cpu",
                "seed": 0,
                "sft": {
                    "config": {
                        **common,
                        "learning_rate": 1e-4,
                        "gradient_checkpointing": args.grad_ckpt,
                        "use_liger_kernel": liger,
                    }
                },
            }
        )
        cfg = sft.sft_config(P, spec, out_dir)
        trainer_cls = LossPositionsSFTTrainer
    else:  # the user's few lines; gradient checkpointing only where the model would not fit without it
        packed = {"packing": True, "packing_strategy": "bfd", "assistant_only_loss": True}
        cfg = SFTConfig(
            output_dir=out_dir,
            seed=0,
            use_cpu=not args.gpu,
            learning_rate=1e-4,
            gradient_checkpointing=args.grad_ckpt,
            **common,
            **(packed if which == "trl-packing" else {}),
        )
        trainer_cls = SFTTrainer
    P = params.from_dict(
        {"name": "bench", "sft": {"lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}}}
    )
    timer = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                if args.gpu:
                    torch.cuda.synchronize()
                timer.update(t0=time.perf_counter(), tok0=state.num_input_tokens_seen)

        def on_step_end(self, a, state, control, **kw):
            if args.gpu:
                torch.cuda.synchronize()
            timer.update(t1=time.perf_counter(), tok1=state.num_input_tokens_seen)

    data = Dataset.from_list(
        rows * max(1, (args.batch * (args.warmup + args.steps) * 2) // len(rows) + 1)
    )
    trainer = trainer_cls(
        model=model,
        args=cfg,
        train_dataset=data,
        processing_class=tok,
        peft_config=sft.lora_config(P, spec),
        callbacks=[Timer()],
    )
    if args.gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    secs, tokens = timer["t1"] - timer["t0"], timer["tok1"] - timer["tok0"]
    fpt, n_matmul, n_lora = flops_per_token(trainer.model, mean_ctx)
    peak = args.peak_flops
    mem = torch.cuda.max_memory_allocated() / 2**20 if args.gpu else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    device = "cuda" if args.gpu else "cpu"
    return {
        "config": which,
        "dtype": str(dtype),
        "attn": attn,
        "packing": bool(cfg.packing),
        "liger": bool(cfg.use_liger_kernel),
        "loss_positions": project,
        "liger_flce": project and use_liger(device),
        "tokens_per_s": tokens / secs,
        "s_per_step": secs / args.steps,
        "tokens_per_step": tokens / args.steps,
        "tflops": tokens / secs * fpt / 1e12,
        "mfu": tokens / secs * fpt / peak,
        "peak_mem_mb": mem if mem is not None else rss,
        "peak_rss_mb": rss,
        "flops_per_token": fpt,
        "n_matmul": n_matmul,
        "n_lora": n_lora,
        "mean_ctx": mean_ctx,
    }


def optimisations(gpu: bool, model: str | None) -> list[str]:
    """The project's optimisations and whether each is active on this device."""
    cuda = gpu
    from mi_llm.models import devices

    bf16 = cuda or devices.cpu_bf16()
    return [
        f"bf16: {'on' if bf16 else 'off: this CPU has no native bf16 (emulated bf16 products 4x+ slower), fp32 instead'}",
        "output layer + cross-entropy at label positions only: on",
        "padding-free best-fit-decreasing packing: on",
        f"FlashAttention-2: {'on' if cuda and has('flash_attn') and not model else 'off (GPU with flash_attn only; SDPA here)'}",
        f"Liger fused linear cross-entropy + kernels: {'on' if cuda and has('liger_kernel') else 'off (GPU with liger_kernel only)'}",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", action="store_true", help="8B Llama-shaped model on CUDA")
    ap.add_argument("--model", help="a registry model instead of a random Llama (e.g. gemma3-270m)")
    ap.add_argument("--batch", type=int, help="rows per step (default 2 on CPU, 4 on GPU)")
    ap.add_argument(
        "--seq", type=int, help="max_length in tokens (default 512 on CPU, 2048 on GPU)"
    )
    ap.add_argument("--steps", type=int, default=4, help="measured steps")
    ap.add_argument("--warmup", type=int, default=2, help="steps before timing starts")
    ap.add_argument(
        "--grad-ckpt", type=int, help="gradient checkpointing 0/1 (default: 1 on GPU, 0 on CPU)"
    )
    ap.add_argument(
        "--one",
        choices=["defaults", "defaults-fp32", "trl-packing", "project", "peak"],
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--peak-flops", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.batch = a.batch or (4 if a.gpu else 2)
    a.seq = a.seq or (2048 if a.gpu else 512)
    a.grad_ckpt = bool(
        a.gpu if a.grad_ckpt is None else a.grad_ckpt
    )  # 8B x 8k tokens/step needs it
    if a.one == "peak":
        Path(a.out).write_text(json.dumps(peak_flops(a.gpu)))
        return 0
    if a.one:
        Path(a.out).write_text(json.dumps(run_one(a, a.one)))
        return 0

    def sub(which: str, *extra: str):  # separate processes: each its own peak memory
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                which,
                "--out",
                f.name,
                "--batch",
                str(a.batch),
                "--seq",
                str(a.seq),
                "--steps",
                str(a.steps),
                "--warmup",
                str(a.warmup),
                "--grad-ckpt",
                str(int(a.grad_ckpt)),
                *extra,
            ]
            cmd += ["--gpu"] * a.gpu + (["--model", a.model] if a.model else [])
            subprocess.run(cmd, check=True)
            return json.loads(Path(f.name).read_text())

    peak, peak_src = sub("peak")  # before any training, on an otherwise idle process
    print(f"peak {peak / 1e12:.2f} TFLOP/s ({peak_src}), measured before training", flush=True)
    print(
        "project optimisations on this device:\n  " + "\n  ".join(optimisations(a.gpu, a.model)),
        flush=True,
    )
    from mi_llm.models import devices

    # where the project computes in fp32 (a CPU without native bf16), TRL's defaults are also run
    # in fp32, so the table separates the dtype's share from the loss-position and packing share
    fp32 = devices.compute_dtype("bfloat16", "cuda" if a.gpu else "cpu") != "bfloat16"
    sides = ["defaults", *(["defaults-fp32"] * fp32), "trl-packing", "project"]
    results = [sub(which, "--peak-flops", str(peak)) for which in sides]
    for r in results:
        r.update(peak_flops=peak, peak_src=peak_src)
    print_table(a, results)
    return 0


def print_table(a, results) -> None:
    """The comparison table and the project/defaults ratio."""
    r0 = results[0]
    print(
        f"\nLoRA SFT throughput: {a.model or ('Llama-3-8B-shaped' if a.gpu else 'small Llama')} "
        f"random weights={not a.model}, N_matmul={r0['n_matmul'] / 1e6:.1f}M, N_lora={r0['n_lora'] / 1e6:.2f}M, "
        f"{a.batch} rows x <= {a.seq} tokens, mean attended keys {r0['mean_ctx']:.0f}, "
        f"gradient checkpointing {a.grad_ckpt} (recompute not counted)"
    )
    print(
        f"FLOPs/token = 4*N_matmul + 6*N_lora + 12*L*d_attn*ctx = {r0['flops_per_token'] / 1e9:.3f} GFLOP; "
        f"peak {r0['peak_flops'] / 1e12:.2f} TFLOP/s ({r0['peak_src']})"
    )
    print(
        f"{'config':13} {'dtype':8} {'attn':18} {'packing':7} {'liger':5} {'loss pos':8} {'tok/step':>8} {'s/step':>7} "
        f"{'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak MB':>8} {'peak RSS MB':>11}"
    )
    for r in results:
        print(
            f"{r['config']:13} {r['dtype']:8} {r['attn']:18} {r['packing']!s:7} {r['liger']!s:5} {r['loss_positions']!s:8} "
            f"{r['tokens_per_step']:8.0f} {r['s_per_step']:7.2f} {r['tokens_per_s']:9.1f} {r['tflops']:8.3f} "
            f"{r['mfu']:6.1%} {r['peak_mem_mb']:8.0f} {r['peak_rss_mb']:11.0f}"
        )
    tps = {r["config"]: r["tokens_per_s"] for r in results}
    print(f"project / defaults tokens/s: {tps['project'] / tps['defaults']:.2f}x")
    print(
        f"vs TRL packing: project {tps['project']:.1f} tok/s against TRL packing + assistant-only "
        f"loss {tps['trl-packing']:.1f} tok/s (both {results[-1]['dtype']}): "
        f"{tps['project'] / tps['trl-packing']:.2f}x"
    )
    if "defaults-fp32" in tps:
        print(
            f"  of which the dtype (defaults-fp32 / defaults): "
            f"{tps['defaults-fp32'] / tps['defaults']:.2f}x; label-position loss + packing "
            f"(project / defaults-fp32): {tps['project'] / tps['defaults-fp32']:.2f}x"
        )


if __name__ == "__main__":
    sys.exit(main())
