"""The embedded model answering in this process (`Generator`) or as a served process.

`python -m mi_llm.llm.local --parent PID serve ...` runs `transformers serve` under a watchdog that
kills it (and anything it started) within a second of process PID's death; mi_llm.llm.api.serve starts
the server that way, and on Linux also asks the kernel to kill it with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from mi_llm.decode import engine
from mi_llm.models.devices import compute_dtype


# ----------------------------------------------------------------------------- in-process generation
class Generator:
    """The embedded model answering chat requests in this process, in batches (llm provider embedded).

    The model loads on the first request that the answer cache does not hold, so a re-run whose
    answers are all cached loads nothing. Prompts that share their start (the instructions and
    few-shot examples of a stage's requests) are batched together; a reply stops at the model's
    end-of-turn token, and sampling (temperature > 0) draws with a seed per batch. The decoding
    engine (mi_llm.decode.engine; `auto`: cpu on a CPU, hf on CUDA): cpu decodes with stage 04's
    loop, the shared start encoded once, greedily at temperature 0 (`cpu.greedy_rows`), else
    sampled at the request's temperature and top_p (`cpu.sampled_rows`); hf, and a checkpoint
    whose generation config adds logits processors (penalties, ...), decode with transformers'
    `generate` on left-padded batches.
    """

    def __init__(
        self,
        folder,
        batch_size: int = 8,
        device: str | None = None,
        seed: int = 0,
        engine: str = "auto",
    ):
        if engine not in ("auto", "hf", "cpu"):
            raise ValueError(
                f"in-process embedded model: engine {engine!r} is not auto, hf or cpu (a server "
                "is llm.provider serve)"
            )
        self.folder, self.batch_size, self.seed = Path(folder), batch_size, seed
        self.device, self.engine = device, engine
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
            # the checkpoint's dtype, but fp32 on a CPU without native bf16 (emulated bf16 is slower)
            dtype = "float32" if compute_dtype("bfloat16", self.device) == "float32" else "auto"
            self.model = AutoModelForCausalLM.from_pretrained(
                str(self.folder), dtype=dtype, attn_implementation="sdpa"
            )
            self.model.to(self.device).eval()
            self.engine = engine.resolve(self.engine, self.device)
        return self.model, self.tok

    def batches(self, prompts: list[list[dict]], settings: dict):
        """Yield (indices, [(text, finish_reason, prompt_tokens, completion_tokens)]) per batch.

        settings: the chat-completion settings the requests carry (max_tokens, temperature, top_p).
        """
        import copy

        import torch

        from mi_llm.decode import cpu

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
        loop = ("sample" if temp > 0 else "greedy") if cpu.plain_greedy(plain) else None
        loop = loop if self.engine == "cpu" else None  # hf: transformers' generate
        for n, idx in enumerate(cpu.batches_by_prefix(ids, self.batch_size)):
            torch.manual_seed(self.seed + n)  # sampling only: greedy draws nothing
            rows = engine.new_tokens(
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
            "usage: python -m mi_llm.llm.local --parent PID serve FOLDER [options]",
            file=sys.stderr,
        )
        return 2
    watch_parent(int(argv[1]))
    from transformers.cli.transformers import main as transformers_main

    sys.argv = ["transformers", *argv[2:]]
    return transformers_main() or 0


if __name__ == "__main__":
    sys.exit(main())
