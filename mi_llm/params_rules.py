"""The rules a params recipe's values obey: ranges, run names, figure formats, and the fields of
the mappings passed on to PEFT, TRL and transformers (sft.lora, sft.config, evaluation.generation).

mi_llm.params applies them when a recipe is loaded, so every key is checked before any stage runs
and stage code trusts the typed params it is given.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import typing

import yaml


class ParamsError(ValueError):
    """A params file is invalid; the message names the file and the key."""


def did_you_mean(word: str, known) -> str:
    """'; did you mean 'x'?' for the closest known name ('' when none is close)."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# a run's name is a folder under runs/: letters, digits, '.', '_' and '-', never '.' or '..'
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def name_problem(name) -> str | None:
    """Why `name` cannot name a run folder (None when it can)."""
    if isinstance(name, str) and NAME_RE.fullmatch(name):
        return None
    return (
        f"{name!r} is not a run name: it names the folder runs/<name>/, so it must start with a "
        "letter or digit and hold only letters, digits, '.', '_' and '-'"
    )


# the formats figures are saved in (each one matplotlib's savefig writes; tests check that)
FIGURE_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")

# numbers out of range are errors before any stage runs: (section.key, lowest, highest); None
# values (where the key allows them) mean "all" and are not checked
POSITIVE = "> 0"  # a lowest bound that excludes 0
BELOW_1 = "< 1"  # a highest bound that excludes 1
RANGES = [
    ("seed", 0, None),
    ("llm.max_concurrency", 1, None),
    ("llm.request_timeout", POSITIVE, None),
    ("llm.max_retries", 0, None),
    ("llm.backoff_base", 0, None),
    ("llm.backoff_max", 0, None),
    ("llm.serve_timeout", POSITIVE, None),
    ("llm.serve_kv_tokens", 1, None),
    ("llm.serve_batch_tokens", 1, None),
    ("llm.batch_poll_s", POSITIVE, None),
    ("llm.max_transport_failures", 0, 1),
    ("corpora.limit", 1, None),
    ("quality.judge_sample", 1, None),
    ("quality.max_dialogue_chars", 1, None),
    ("quality.max_tokens", 1, None),
    ("quality.temperature", 0, 2),
    ("quality.parse_retries", 0, None),
    ("quality.bootstrap", 1, None),
    ("quality.top_k", 1, None),
    ("transcription.max_dialogues", 1, None),
    ("transcription.max_turns", 2, None),
    ("transcription.max_tokens", 1, None),
    ("transcription.temperature", 0, 2),
    ("transcription.validation_retries", 0, None),
    ("transcription.min_length_ratio", 0, None),
    ("transcription.max_length_ratio", 0, None),
    ("transcription.n_train", 1, None),
    ("transcription.n_test", 0, None),
    ("transcription.client_edit_tolerance", 0, 0.5),
    ("sft.min_response_chars", 0, None),
    ("sft.context_turns", 1, None),
    ("evaluation.max_dialogues", 1, None),
    ("evaluation.max_rounds", 1, None),
    ("evaluation.context_turns", 1, None),
    ("evaluation.batch_size", 1, None),
    ("evaluation.max_new_tokens", 1, None),
    ("evaluation.bootstrap", 1, None),
    ("evaluation.miti.max_tokens", 1, None),
    ("evaluation.miti.globals_max_tokens", 1, None),
    ("evaluation.miti.temperature", 0, 2),
    ("evaluation.miti.parse_retries", 0, None),
    ("evaluation.miti.context_turns", 0, None),
    ("evaluation.miti.max_utterances", 1, None),
    ("evaluation.miti.annomi_sample", 0, None),
    ("evaluation.miti.gold_sample", 0, None),
    ("evaluation.miti.check_bootstrap", 1, None),
    ("evaluation.forecaster.test_size", POSITIVE, BELOW_1),
    ("evaluation.forecaster.context_turns", 0, None),
    ("evaluation.forecaster.C", POSITIVE, None),
    ("figures.dpi", 1, None),
]

# the fields of the mappings passed on to PEFT, TRL and transformers that have a type and a range:
# key -> (type, lowest, highest); other keys of these mappings must be fields of the receiving class
# (mi_llm.study.check asks PEFT, TRL and transformers), with the types they declare
MAPPINGS = {
    "sft.lora": {
        "r": (int, 1, None),
        "lora_alpha": (int, 1, None),
        "lora_dropout": (float, 0, BELOW_1),
    },
    "sft.config": {
        "per_device_train_batch_size": (int, 1, None),
        "per_device_eval_batch_size": (int, 1, None),
        "gradient_accumulation_steps": (int, 1, None),
        "learning_rate": (float, POSITIVE, 1),
        "max_steps": (int, 1, None),  # or -1: TRL's "train num_train_epochs epochs"
        "num_train_epochs": (float, POSITIVE, None),
        "warmup_steps": (float, 0, None),
        "warmup_ratio": (float, 0, 1),
        "logging_steps": (float, POSITIVE, None),
        "save_steps": (float, POSITIVE, None),
        "eval_steps": (float, POSITIVE, None),
        "save_total_limit": (int, 1, None),
        "max_length": (int, 1, None),
        "weight_decay": (float, 0, None),
        "max_grad_norm": (float, 0, None),
        "adam_beta1": (float, 0, BELOW_1),
        "adam_beta2": (float, 0, BELOW_1),
        "adam_epsilon": (float, POSITIVE, None),
        "dataloader_num_workers": (int, 0, None),
    },
    "evaluation.generation": {
        "do_sample": (bool, None, None),
        "temperature": (float, POSITIVE, None),
        "top_p": (float, POSITIVE, 1),
        "top_k": (int, 0, None),
        "min_p": (float, 0, 1),
        "typical_p": (float, POSITIVE, 1),
        "repetition_penalty": (float, POSITIVE, None),
        "no_repeat_ngram_size": (int, 0, None),
        "num_beams": (int, 1, None),
        "num_return_sequences": (int, 1, 1),  # one reply per round
        "min_new_tokens": (int, 0, None),
        "length_penalty": (float, None, None),
    },
}
# keys of those mappings that mi_llm sets itself, and the key that sets them instead
OWNED = {
    "sft.config": {
        "output_dir": "the run (runs/<name>/03_sft/<model>)",
        "seed": "seed",
        "use_cpu": "device",
    },
    "evaluation.generation": {
        "max_new_tokens": "evaluation.max_new_tokens",
        "eos_token_id": "the model's chat template (its end-of-turn tokens)",
        "pad_token_id": "the model's tokenizer",
    },
}
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "typical_p")  # inert unless do_sample


def span(lo, hi) -> str:
    """A range in words: '> 0', '>= 1', 'in [0, 1]', 'in [0, 1)'."""
    low = "> 0" if lo == POSITIVE else None if lo is None else f">= {lo}"
    if hi is None:
        return low or "any number"
    left = "(0" if lo == POSITIVE else f"[{lo}"
    return f"in {left}, 1)" if hi == BELOW_1 else f"in {left}, {hi}]"


def out_of_range(value, lo, hi) -> bool:
    """Whether a number lies outside [lo, hi] (POSITIVE: above 0; BELOW_1: under 1; None: open)."""
    low = value <= 0 if lo == POSITIVE else lo is not None and value < lo
    high = value >= 1 if hi == BELOW_1 else hi is not None and value > hi
    return bool(low or high)


def check_ranges(p, where: str) -> None:
    """Raise ParamsError naming the first number out of its range (RANGES)."""
    for key, lo, hi in RANGES:
        value = p
        for k in key.split("."):
            value = getattr(value, k)
        if value is not None and out_of_range(value, lo, hi):
            raise ParamsError(
                f"{where}.{key}: {value!r} is out of range; it must be {span(lo, hi)}"
            )
    tp = p.transcription
    if tp.max_length_ratio <= tp.min_length_ratio:
        raise ParamsError(
            f"{where}.transcription.max_length_ratio: {tp.max_length_ratio} must be above "
            f"min_length_ratio {tp.min_length_ratio}"
        )


def check_mapping(section: str, mapping: dict, where: str) -> None:
    """Types and ranges of the known fields of one passed-on mapping (MAPPINGS), owned keys, and
    sampling knobs that would do nothing without do_sample."""
    owned = OWNED.get(section, {})
    for key, value in mapping.items():
        at = f"{where}.{section}.{key}"
        if key in owned:
            raise ParamsError(f"{at}: set by mi_llm from {owned[key]}; remove it here")
        if key not in MAPPINGS[section]:
            continue
        tp, lo, hi = MAPPINGS[section][key]
        if key == "max_length" and value is None:
            continue
        if tp is bool:
            if not isinstance(value, bool):
                raise ParamsError(f"{at}: expected true or false, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float) if tp is float else int):
            what = "an integer" if tp is int else "a number"
            raise ParamsError(f"{at}: expected {what}, got {value!r}")
        if key == "max_steps" and value == -1:
            continue
        if out_of_range(value, lo, hi):
            extra = " (or -1: train num_train_epochs epochs)" if key == "max_steps" else ""
            raise ParamsError(f"{at}: {value!r} is out of range; it must be {span(lo, hi)}{extra}")
    if section == "evaluation.generation" and not mapping.get("do_sample"):
        inert = [k for k in SAMPLING if k in mapping]
        if inert:
            raise ParamsError(
                f"{where}.{section}.{inert[0]}: has no effect in greedy decoding; set "
                f"{section}.do_sample: true to sample, or remove {', '.join(inert)}"
            )


def check_finite(value, where: str) -> None:
    """Refuse NaN and infinities anywhere in a value (YAML's .nan, .inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{where}: {value!r} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, f"{where}[{i}]")


# ----------------------------------------------------------------------------- YAML
class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str):
    """A YAML value (duplicate keys refused); an error is one ParamsError line: where:line:column."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ParamsError(f"{where}{at}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{where}: YAML syntax error: {' '.join(str(e).split())}") from None


def apply_overrides(data: dict, overrides, params_cls) -> dict:
    """The recipe mapping with `KEY=VALUE` overrides set (dotted keys, YAML values: `3`, `null`,
    `[a, b]`); a key that names no params field is refused here, the value's type by from_dict."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        where = f"--set {item}"
        if not sep or not key.strip():
            raise ParamsError(f"{where}: expected KEY=VALUE, e.g. quality.top_k=3")
        if key.strip() == "name":
            raise ParamsError(
                f"{where}: the run's name is the params file's stem; copy the file to run it "
                "under another name"
            )
        parts, node, cls = key.strip().split("."), data, params_cls
        for i, k in enumerate(parts):
            if cls is not None:  # a params section: the key must be one of its fields
                fields = {f.name: f for f in dataclasses.fields(cls)}
                if k not in fields:
                    at = ".".join(parts[:i]) or "params"
                    raise ParamsError(
                        f"{where}: {at} has no key {k!r}{did_you_mean(k, fields)} "
                        f"(known: {', '.join(sorted(fields))})"
                    )
                hint = typing.get_type_hints(cls)[k]
                cls = hint if dataclasses.is_dataclass(hint) else None
                if i < len(parts) - 1 and cls is None and hint is not dict:
                    raise ParamsError(f"{where}: {'.'.join(parts[: i + 1])} holds no keys")
            if i == len(parts) - 1:
                node[k] = parse_yaml(text, where)
            else:
                if not isinstance(node.get(k), dict):
                    node[k] = {}
                node = node[k]
    return data
