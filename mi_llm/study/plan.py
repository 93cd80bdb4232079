"""What a run will cost, estimated before anything starts: `python -m mi_llm plan params/X.yaml`.

Per stage: the LLM requests and their prompt and completion tokens (from the params and the shape of
the corpora's dialogues), the API cost from `llm.prices`, and the GPU hours of fine-tuning and
generation from the throughput a GPU check measured (benchmarks/gpu_check.sh writes
benchmarks/results/gpu-*.json). Every figure is an estimate and is printed as one, with what it
rests on. Nothing is sent, downloaded or started.

The shape of the dialogues (counselor turns and characters per dialogue) is read from each corpus's
folder in the params, at most SAMPLE dialogues of it, or from the shipped sample of that corpus when
the folder is not there yet. Tokens are counted with GLM-4's shipped tokenizer as a stand-in for
the endpoint's, whose tokenizer may split Chinese text into more or fewer tokens.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mi_llm import params as params_mod

SAMPLE = 200  # dialogues per corpus read for the shape
SAMPLES = "params/smoke.yaml"  # its corpora.sources are the shipped samples
RESULTS = "benchmarks/results"


@dataclass
class Line:
    stage: str
    what: str
    requests: int = 0  # LLM requests (first attempts; retries come on top)
    prompt_tokens: float = 0.0
    completion_tokens: float = (
        0.0  # at most: every answer at its max_tokens, or as long as its source
    )
    gpu_hours: float | None = None
    note: str = ""


def _tokens_per_char() -> float:
    """Tokens per character of the shipped Chinese sample dialogues, by GLM-4's tokenizer."""
    from tokenizers import Tokenizer

    from mi_llm.models import snapshots

    tok = Tokenizer.from_file(str(snapshots.tokenizer_folder("glm-4-9b-chat") / "tokenizer.json"))
    text = "".join(t.text for d in _dialogues("cpsycound", "data/CPsyCounD/Data") for t in d.turns)
    return len(tok.encode(text).ids) / max(len(text), 1)


def _dialogues(corpus: str, path: str):
    from mi_llm.data import corpora

    out = []
    for d in corpora.LOADERS[corpus](params_mod.path(path)):
        if not isinstance(d, Exception):
            out.append(d)
        if len(out) >= SAMPLE:
            break
    return out


def shapes(P) -> dict[str, dict]:
    """Per corpus: mean counselor turns, characters and client characters per dialogue, and where
    they were read (the run's folder, or the shipped sample when that is not there)."""
    samples = params_mod.load(SAMPLES).corpora.sources
    out = {}
    for corpus, path in P.corpora.sources.items():
        src = path if params_mod.path(path).exists() else samples.get(corpus)
        ds = _dialogues(corpus, src) if src and params_mod.path(src).exists() else []
        if not ds:
            continue
        out[corpus] = {
            "read": "run's folder" if src == path else "shipped sample",
            "n_read": len(ds),
            "counselor_turns": sum(sum(t.speaker == "counselor" for t in d.turns) for d in ds)
            / len(ds),
            "turns": sum(len(d.turns) for d in ds) / len(ds),
            "chars": sum(len(t.text) for d in ds for t in d.turns) / len(ds),
        }
    return out


def _prompt_chars(version: str) -> int:
    from mi_llm.llm import prompts

    return len(prompts.load(version))


def gpu_throughput(results: str | None = None) -> dict:
    """The newest GPU check's measured figures: SFT tokens/s (the project's trainer, 8B-shaped) and
    generation new tokens/s (batched); {} when no GPU check has run."""
    files = (
        [Path(results)] if results else sorted(Path(params_mod.ROOT / RESULTS).glob("gpu-*.json"))
    )
    if results and not files[0].is_file():
        raise ValueError(f"--gpu-results {results}: no such file")
    files = [f for f in files if f.exists() and not f.stem.endswith("dryrun")]
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(
            f"{files[-1]}: not a GPU check result (benchmarks/gpu_check.sh): {e}"
        ) from None
    steps = {s["name"]: s for s in data.get("steps", [])}
    out = {"file": str(files[-1]), "device": data.get("device")}
    sft = steps.get("sft_throughput", {})
    row = re.search(r"^project\s+(\S+\s+){7}([\d.]+)", sft.get("output_tail", ""), re.MULTILINE)
    if sft.get("rc") == 0 and row:
        out["sft_tokens_s"] = float(row.group(2))
    gen = steps.get("eval_generation", {})
    m = re.search(r"batched:\s+[\d.]+ replies/s\s+([\d.]+) new tok/s", gen.get("output_tail", ""))
    if gen.get("rc") == 0 and m:
        out["gen_tokens_s"] = float(m.group(1))
    return out


def estimate(P, shape: dict, tpc: float, gpu: dict) -> list[Line]:
    """The lines of the plan (see the module's docstring for what each rests on)."""
    if not shape:
        raise params_mod.ParamsError(f"{P.name}: no corpus of corpora.sources could be read")
    mean = {k: sum(s[k] for s in shape.values()) / len(shape) for k in ("chars", "turns")}
    mean["counselor_turns"] = sum(s["counselor_turns"] for s in shape.values()) / len(shape)
    dlg = mean["chars"] * tpc  # tokens of one dialogue
    q, t, ev = P.quality, P.transcription, P.evaluation
    lines = []
    shown = min(mean["chars"], q.max_dialogue_chars) * tpc
    n = len(shape) * q.judge_sample
    lines.append(
        Line(
            "01_corpus_quality",
            f"{len(shape)} corpora x {q.judge_sample} judged dialogues",
            n,
            n * (_prompt_chars(q.prompt_version) * tpc + shown),
            n * q.max_tokens,
        )
    )
    n_dlg = t.n_train + t.n_test
    if t.unit == "dialogue":
        n = n_dlg
        prompt = _prompt_chars(t.prompt_version) * tpc + dlg
        completion = min(dlg, t.max_tokens)
    else:
        turns = (
            mean["counselor_turns"]
            if t.max_turns is None
            else min(t.max_turns, mean["counselor_turns"])
        )
        n = round(n_dlg * turns)
        prompt = _prompt_chars(t.prompt_version) * tpc + dlg / 2  # the context so far, on average
        completion = min(dlg / max(mean["turns"], 1), t.max_tokens)
    lines.append(
        Line(
            "02_mi_transcription",
            f"{n_dlg} dialogues ({t.n_train} train + {t.n_test} test), unit {t.unit}",
            n,
            n * prompt,
            n * completion,
            note=f"up to {1 + t.validation_retries}x with validation retries",
        )
    )
    epochs = float(P.sft.config.get("num_train_epochs", 3))
    train_tokens = t.n_train * dlg * epochs * len(P.sft.models)
    hours = train_tokens / gpu["sft_tokens_s"] / 3600 if "sft_tokens_s" in gpu else None
    lines.append(
        Line(
            "03_sft",
            f"{len(P.sft.models)} models x {t.n_train} dialogues x {epochs:g} epochs "
            f"= {_m(train_tokens)} tokens",
            gpu_hours=hours,
        )
    )
    dialogues = t.n_test if ev.max_dialogues is None else min(ev.max_dialogues, t.n_test)
    rounds = (
        mean["counselor_turns"]
        if ev.max_rounds is None
        else min(ev.max_rounds, mean["counselor_turns"])
    )
    replies = round(dialogues * rounds * len(ev.models) * len(ev.variants))
    new_tokens = replies * ev.max_new_tokens
    hours = new_tokens / gpu["gen_tokens_s"] / 3600 if "gen_tokens_s" in gpu else None
    lines.append(
        Line(
            "04_evaluation",
            f"generation: {replies} replies ({dialogues} dialogues x "
            f"{rounds:.1f} rounds x {len(ev.models)} models x {len(ev.variants)} variants), "
            f"at most {ev.max_new_tokens} new tokens each",
            gpu_hours=hours,
        )
    )
    m = ev.miti
    if m.enabled:
        coded = (
            replies
            if m.max_utterances is None
            else min(replies, dialogues * m.max_utterances * len(ev.models) * len(ev.variants))
        )
        checks = m.annomi_sample + m.gold_sample
        context = m.context_turns * dlg / max(mean["turns"], 1)
        per_code = _prompt_chars(m.prompt_version) * tpc + context
        n = coded + checks
        lines.append(
            Line(
                "04_evaluation",
                f"MITI codes: {coded} replies + {checks} coder-check utterances",
                n,
                n * per_code,
                n * m.max_tokens,
            )
        )
        if m.rate_globals:
            g = dialogues * len(ev.models) * len(ev.variants)
            lines.append(
                Line(
                    "04_evaluation",
                    f"MITI globals: {g} dialogues",
                    g,
                    g * (_prompt_chars(m.prompt_version) * tpc + dlg),
                    g * m.globals_max_tokens,
                )
            )
    return lines


def cost(P, line: Line) -> float | None:
    """USD of a line's tokens at `llm.prices`: 0 for a local model, None without a price."""
    price = P.llm.prices.get(P.llm.model)
    if P.llm.provider != "remote" or not line.requests:
        return 0.0
    if not price:
        return None
    return (
        line.prompt_tokens * price["prompt"] + line.completion_tokens * price["completion"]
    ) / 1e6


def text(P, lines: list[Line], shape: dict, tpc: float, gpu: dict) -> str:
    """The printed plan."""
    local = P.llm.provider != "remote"
    out = [f"Plan for {P.name} (ESTIMATES, nothing has run; LLM: {P.llm.model}, {P.llm.provider})"]
    head = f"{'stage':20} {'requests':>9} {'prompt tok':>11} {'compl. tok':>11} {'API USD':>9} {'GPU h':>7}  what"
    out.append(head)
    total_usd, total_h, unpriced = 0.0, 0.0, False
    for ln in lines:
        usd = cost(P, ln)
        unpriced |= usd is None and ln.requests > 0
        total_usd += usd or 0.0
        total_h += ln.gpu_hours or 0.0
        out.append(
            f"{ln.stage:20} {ln.requests or '':>9} {_m(ln.prompt_tokens):>11} "
            f"{_m(ln.completion_tokens):>11} {_usd(usd, ln.requests, local):>9} "
            f"{'' if ln.gpu_hours is None else f'~{ln.gpu_hours:.1f}':>7}  {ln.what}"
            + (f" ({ln.note})" if ln.note else "")
        )
    out.append(
        f"estimated total: API ~${total_usd:,.0f}"
        + (" (local model: no API cost)" if local else "")
        + (f" + requests without a price in llm.prices for {P.llm.model!r}" if unpriced else "")
        + (f", GPU ~{total_h:.1f} h" if total_h else "")
    )
    out += _weights(P)
    out.append("what the estimates rest on:")
    for c, s in shape.items():
        out.append(
            f"  {c}: {s['counselor_turns']:.1f} counselor turns, {s['chars']:,.0f} characters a "
            f"dialogue (mean of {s['n_read']} dialogues of the {s['read']})"
        )
    out.append(
        f"  {tpc:.2f} tokens a character (GLM-4's tokenizer on the shipped CPsyCounD sample); "
        "completion tokens are upper bounds (answers at their max_tokens, rewrites as long as "
        "their source); retries and re-runs come on top"
    )
    if gpu:
        out.append(
            f"  GPU: {gpu.get('device') or 'device not recorded'} ({gpu['file']}): "
            + ", ".join(
                f"{k} {v:,.0f}" for k, v in gpu.items() if k in ("sft_tokens_s", "gen_tokens_s")
            )
            + " (the check's 8B-shaped trainer and its generation benchmark, not this recipe's "
            "models and lengths; GPU hours for one GPU)"
        )
    elif P.device == "cpu":
        out.append("  GPU hours: none, the recipe runs on the CPU (device: cpu)")
    else:
        out.append(
            "  GPU hours: not estimated, no GPU check result in benchmarks/results/ "
            "(run `bash benchmarks/gpu_check.sh` on the GPU machine first)"
        )
    return "\n".join(out)


def _weights(P) -> list[str]:
    """One line per hub model of the recipe: pinned and fetched, or the command that fetches it."""
    from mi_llm.models import hub, registry

    lock, lines = registry.locked(), []
    for n in hub.models_of(P):
        if n in lock and hub.cached_folder(n):
            lines.append(f"weights: {n} fetched, pinned at {lock[n]['commit'][:12]}")
        else:
            lines.append(f"weights: {n} not fetched yet (python -m mi_llm models fetch {n})")
    return lines


def _m(x: float) -> str:
    return "" if not x else f"{x / 1e6:.2f}M" if x >= 1e5 else f"{x:,.0f}"  # tokens


def _usd(usd: float | None, requests: int, local: bool) -> str:
    if not requests:
        return ""
    if local:
        return "local"
    return "no price" if usd is None else f"~{usd:,.2f}"


def cli(params_file: str, gpu_results: str | None = None) -> int:
    """Print the plan of a params file; 2 with one paragraph when the params are wrong."""
    try:
        P = params_mod.load(params_file)
        shape = shapes(P)
        tpc = _tokens_per_char()
        gpu = gpu_throughput(gpu_results)
        print(text(P, estimate(P, shape, tpc, gpu), shape, tpc, gpu))
    except ValueError as e:  # ParamsError included: one paragraph, no traceback
        print(f"[mi_llm] {e}")
        return 2
    return 0
