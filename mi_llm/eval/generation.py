"""Stage 04's generation: one prompt per counselor round of the test dialogues, replies
of each model variant, resumable records in generations.jsonl."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

from mi_llm import stages
from mi_llm.data.schema import TAGS, DataError, read_split, strip_tag, tag_text
from mi_llm.decode import engine, server
from mi_llm.eval import forecast
from mi_llm.params import VARIANTS  # generation order: the adapter is merged in once

KEY = ("model", "variant", "dialogue_id", "round")


ADAPTED = ("finetuned", "conditioned")  # variants that answer with the 03 adapter


_ANY_TAG = re.compile(r"^\s*<mi:[^>\s]*>\s*")


def split_tag(text: str) -> tuple[str | None, str]:
    """(label, text) of a reply or reference; a malformed <mi:...> tag is cut off with label None."""
    try:
        label, rest = strip_tag(text)
    except ValueError:  # a model may invent a label: it is still not part of the reply's words
        label, rest = None, _ANY_TAG.sub("", text, count=1)
    return label, rest.strip()


def tag_prefix(label: str) -> str:
    """The generation prefix for a behaviour: its tag without the trailing space (tag_text adds one).

    Gemma tokenizes "<mi:x> 听" as ">", " ", "听" but "<mi:x> It" as ">", " It": a prefix ending at
    ">" leaves the model the next token it saw in training, in either language.
    """
    return tag_text("", label).rstrip()


# ----------------------------------------------------------------------------- rounds
def _window(history: list[dict], context_turns: int | None) -> list[dict]:
    """System message (if any) + the last `context_turns` messages, starting at a client turn."""
    system = [m for m in history[:1] if m["role"] == "system"]
    turns = history[len(system) :]
    if context_turns is not None:
        turns = turns[-context_turns:] if context_turns > 0 else turns[-1:]
    while turns and turns[0]["role"] != "user":  # chat templates want user first (Gemma raises)
        turns = turns[1:]
    return system + turns


def rounds(
    records: list[dict],
    max_dialogues: int | None = None,
    max_rounds: int | None = None,
    context_turns: int | None = None,
) -> list[dict]:
    """Prompts of the round-based evaluation: {dialogue_id, round, topic, messages, reference}.

    A round is a counselor (assistant) message that directly follows a client (user) message; its
    prompt is the gold history before it (trimmed by `_window`), ending with that client message.
    Rounds are numbered 0, 1, ... per dialogue; max_rounds keeps the first ones.
    """
    out = []
    for rec in records[:max_dialogues] if max_dialogues is not None else records:
        msgs, n = rec["messages"], 0
        for i, m in enumerate(msgs):
            if max_rounds is not None and n >= max_rounds:
                break
            if m["role"] != "assistant" or i == 0 or msgs[i - 1]["role"] != "user":
                continue
            out.append(
                {
                    "dialogue_id": str(rec["id"]),
                    "round": n,
                    "topic": rec.get("topic"),
                    "messages": _window(msgs[:i], context_turns),
                    "reference": split_tag(m["content"])[1],
                }
            )  # a tagged corpus' tag is not scored
            n += 1
    return out


# ----------------------------------------------------------------------------- records on disk
def read_generations(path: str | Path) -> list[dict]:
    """Records of generations.jsonl ([] when absent); a torn last line (a crash) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # written without its newline: the batch never finished
                break
            raise DataError(path, i, "line", f"not JSON: {e}") from e
    return out


def _append(path: Path, records: list[dict]) -> None:
    """Append records and fsync, after cutting a torn last line left by a crash."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:  # the last byte only: appending costs O(batch), not O(file)
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:  # after a crash only: cut back to the last complete line
            data = path.read_bytes()
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _key(r: dict) -> tuple:
    return tuple(str(r[k]) for k in KEY)


# ----------------------------------------------------------------------------- the stage
def resolve_device(device: str) -> str:
    """params device 'auto' -> cuda when available, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def adapter_dir(P, model: str) -> Path:
    """Where stage 03 saved the LoRA adapter of a model: runs/<name>/03_sft/<model>/adapter/."""
    return P.run_dir / stages.ADAPTER.format(model=model)


def _check_adapter(name: str, adapter: Path) -> None:
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"{adapter}: no PEFT adapter for model {name!r}; run stage 03 first"
        )


def _with_adapter(model, tokenizer, name: str, adapter: Path):
    """Base model + the PEFT adapter, merged for speed; the adapter's tokenizer when it saved one."""
    from peft import PeftModel

    from mi_llm.models import registry

    _check_adapter(name, adapter)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()  # plain model again
    if (adapter / "tokenizer_config.json").exists():
        tokenizer = registry.load_tokenizer(name, adapter)
    return merged.eval(), tokenizer


def decoder(P) -> str:
    """The engine that decodes this run's replies: evaluation.engine, `auto` resolved by device."""
    return engine.resolve(P.evaluation.engine, resolve_device(P.device))


def fingerprint(P, name: str, variant: str, weights, adapter: Path | None) -> str:
    """Short hash of what determines a variant's replies (a re-run must match it to resume).

    The conditioned variant's per-round behaviours are checked record by record on resume.
    """
    import hashlib

    from mi_llm.runs import sha256_file
    from mi_llm.train.identity import base_identity

    E = P.evaluation
    facts = {
        "model": name,
        "weights": str(weights or ""),
        "base": base_identity(name, weights),  # the weights' sha256, not only their folder
        "variant": variant,
        "seed": P.seed,
        "max_new_tokens": E.max_new_tokens,
        "generation": E.generation,
        "context_turns": E.context_turns,
        "engine": decoder(P),  # bf16 rounding and a server's kernels may change a greedy token
        "adapter": sha256_file(adapter / "adapter_model.safetensors")
        if variant in ADAPTED and adapter and (adapter / "adapter_model.safetensors").exists()
        else None,
    }
    if variant == "conditioned":
        facts["condition_on"] = E.condition_on
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _check_fingerprints(
    out_path: Path, existing: list[dict], name: str, variant: str, fp: str
) -> None:
    stale = {
        r.get("settings") for r in existing if r["model"] == name and r["variant"] == variant
    } - {fp}
    if stale:
        raise ValueError(
            f"{out_path}: replies of {name}/{variant} were made with other settings "
            f"({sorted(map(str, stale))} != {fp}: weights, adapter or generation params "
            "changed); delete the file or use a new run name"
        )


def behaviours(condition_on: str, histories: list[list[dict]], forecaster_path=None) -> list[str]:
    """The MI behaviour of each conditioned round: a fixed TAGS label, or the forecaster's on its history."""
    if condition_on in TAGS:
        return [condition_on] * len(histories)
    if condition_on != "forecaster":
        raise ValueError(
            f"evaluation.condition_on: {condition_on!r} is not 'forecaster' or one of {list(TAGS)}"
        )
    if forecaster_path is None or not Path(forecaster_path).exists():
        raise FileNotFoundError(
            f"{forecaster_path}: no forecaster; run forecast_eval.evaluate (04, evaluation.forecaster"
            f".enabled) before generation, or set evaluation.condition_on to one of {list(TAGS)}"
        )
    bundle = forecast.load(forecaster_path)
    return [forecast.predict_next(bundle, h) for h in histories]


def _check_behaviours(out_path: Path, existing: list[dict], name: str, todo: list[dict]) -> None:
    want = {_key({"model": name, "variant": "conditioned", **r}): r["behaviour"] for r in todo}
    stale = sorted(k for r in existing if (k := _key(r)) in want and r.get("behaviour") != want[k])
    if stale:
        raise ValueError(
            f"{out_path}: {len(stale)} conditioned replies of {name} (first {stale[0]}) were made for "
            "other behaviours (forecaster or condition_on changed); delete the file or use a new run name"
        )


def _record(name: str, variant: str, r: dict, reply: str, fp: str) -> dict:
    """One generations.jsonl record; the reply without a tag, its label under "behaviour"."""
    written, text = split_tag(reply)
    return {
        "model": name,
        "variant": variant,
        "dialogue_id": r["dialogue_id"],
        "round": r["round"],
        "topic": r["topic"],
        "messages": r["messages"],
        "reference": r["reference"],
        "reply": text,
        "behaviour": r["behaviour"] if variant == "conditioned" else written,
        "settings": fp,
    }


def _generate_variant(P, model, tok, name, variant, pending, out_path, progress, fp):
    from tqdm.auto import tqdm

    from mi_llm.models import registry
    from mi_llm.runs import set_seed

    E = P.evaluation
    set_seed(P.seed)  # same seed for every variant: sampled runs differ by the model alone
    bar = tqdm(
        total=len(pending), desc=f"generate {name}/{variant}", unit="reply", disable=not progress
    )
    batches = engine.generate_batches(
        model,
        tok,
        [r["messages"] for r in pending],
        engine=decoder(P),
        seed=P.seed,
        batch_size=E.batch_size,
        max_new_tokens=E.max_new_tokens,
        overrides=E.generation,
        stop_tokens=registry.get(name).special_tokens,
        prefixes=[tag_prefix(r["behaviour"]) for r in pending]
        if variant == "conditioned"
        else None,
    )
    for idx, replies in batches:
        _append(
            out_path,
            [_record(name, variant, pending[i], reply, fp) for i, reply in zip(idx, replies)],
        )
        bar.update(len(idx))
    bar.close()


def _run_model(P, name, variants, todo, existing, out_path, weights, ad, progress) -> None:
    """Generate the missing rounds of one model: base first, then base + adapter (finetuned, conditioned)."""
    from mi_llm.models import registry

    done = {_key(r) for r in existing}
    pending = {
        v: [r for r in todo if _key({"model": name, "variant": v, **r}) not in done]
        for v in variants
    }
    if any(v in ADAPTED for v in variants):
        _check_adapter(name, ad)  # fail before spending minutes on the base variant
    fps = {v: fingerprint(P, name, v, weights, ad) for v in variants}
    for v in variants:
        _check_fingerprints(out_path, existing, name, v, fps[v])
    if "conditioned" in variants:
        _check_behaviours(out_path, existing, name, todo)
    if not any(pending.values()):
        return
    if decoder(P) == "server":  # the server holds the weights: only the tokenizer is loaded here
        for v in variants:
            tok = registry.load_tokenizer(
                name, ad if v in ADAPTED and (ad / "tokenizer_config.json").exists() else weights
            )
            url = server.Endpoint(P.evaluation.server_url, server.model_name(name, v in ADAPTED))
            if pending[v]:
                _generate_variant(P, url, tok, name, v, pending[v], out_path, progress, fps[v])
        return
    model, tok = registry.load(name, resolve_device(P.device), path=weights)
    model.eval()
    merged = False
    for v in variants:
        if v in ADAPTED and not merged:
            model, tok = _with_adapter(model, tok, name, ad)
            merged = True
        if pending[v]:
            _generate_variant(P, model, tok, name, v, pending[v], out_path, progress, fps[v])


def _check_server(P, variants: list[str]) -> None:
    """Engine server: the generation settings translate and every model the run asks is served,
    before a model loads or a request costs."""
    E = P.evaluation
    server.request_settings(E.generation, E.max_new_tokens, [])
    names = [server.model_name(m, v in ADAPTED) for m in E.models for v in variants]
    server.check_models(E.server_url, list(dict.fromkeys(names)))


def run(
    P,
    test_path=None,
    out_path=None,
    model_paths: dict | None = None,
    adapter_dirs: dict | None = None,
    progress: bool = True,
    forecaster_path=None,
) -> list[dict]:
    """Generate every missing (model, variant, dialogue, round) into generations.jsonl; return them.

    model_paths / adapter_dirs override, per model name, the weights (default: P.model_paths, else
    the registry) and the 03 adapter (tests use a tiny model); forecaster_path the bundle the
    conditioned variant asks (default: 04's forecaster.joblib). The returned records are those of
    this configuration, in key order.
    """
    from mi_llm.params import path

    model_paths = {k: path(v) for k, v in {**P.model_paths, **(model_paths or {})}.items()}

    E = P.evaluation
    test_path = Path(test_path or P.run_dir / stages.TEST)
    out_path = Path(out_path or P.run_dir / stages.GENERATIONS)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not test_path.exists():
        raise FileNotFoundError(f"{test_path}: no MI test set; run stage 02 first")
    records = read_split(test_path)
    todo = rounds(records, E.max_dialogues, E.max_rounds, E.context_turns)
    if "conditioned" in E.variants:  # the forecaster reads the whole gold history, not the window
        if not any(
            split_tag(m["content"])[0]
            for r in records
            for m in r["messages"]
            if m["role"] == "assistant"
        ):
            warnings.warn(
                f"{test_path}: no counselor turn is tagged (transcription.tag_behaviour off), so the "
                "conditioned variant's <mi:...> prefix is a prompt the model was not fine-tuned on"
            )
        full = rounds(records, E.max_dialogues, E.max_rounds, None)
        fc = forecaster_path or P.run_dir / stages.FORECASTER_MODEL
        for r, label in zip(todo, behaviours(E.condition_on, [f["messages"] for f in full], fc)):
            r["behaviour"] = label
    existing = read_generations(out_path)
    variants = sorted(E.variants, key=VARIANTS.index)  # the adapter is merged in once, after base
    done = {_key(r) for r in existing}
    if decoder(P) == "server" and any(
        _key({"model": m, "variant": v, **r}) not in done
        for m in E.models
        for v in variants
        for r in todo
    ):
        _check_server(P, variants)
    for name in E.models:
        ad = Path((adapter_dirs or {}).get(name) or adapter_dir(P, name))
        _run_model(P, name, variants, todo, existing, out_path, model_paths.get(name), ad, progress)
    wanted = {
        _key({"model": m, "variant": v, **r}) for m in E.models for v in variants for r in todo
    }
    recs = {_key(r): r for r in read_generations(out_path) if _key(r) in wanted}
    return sorted(
        recs.values(), key=lambda r: (r["model"], r["variant"], r["dialogue_id"], r["round"])
    )


def examples(generations: list[dict], n: int = 3, width: int = 120):
    """The first n rounds side by side: last client turn, reference and each variant's reply."""
    import pandas as pd

    df = pd.DataFrame(generations)
    if df.empty:
        return df
    df["client"] = df["messages"].map(lambda m: m[-1]["content"] if m else "")
    wide = df.pivot_table(
        index=["model", "dialogue_id", "round", "client", "reference"],
        columns="variant",
        values="reply",
        aggfunc="first",
    ).reset_index()
    wide.columns.name = None
    return wide.head(n).map(
        lambda v: v[:width] + "…" if isinstance(v, str) and len(v) > width else v
    )
