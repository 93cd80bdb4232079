"""Run parameters: one YAML recipe per run, validated on load.

A params file has top-level sections (llm, corpora, quality, transcription, sft, evaluation,
figures) plus name/seed/device. The same keys are the papermill parameters of every notebook,
whose parameters cell holds the smoke defaults (tests keep the two in sync). Unknown keys and
wrong types are errors, never silently ignored. Relative paths are relative to the project root.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]  # the project root (holds params/, notebooks/, runs/)


class ParamsError(ValueError):
    """A params file is invalid; the message names the file and the key."""


# ----------------------------------------------------------------------------- sections
@dataclass
class LLMParams:
    provider: str = "embedded"  # embedded: in this process | serve: `transformers serve` | remote: base_url
    model: str = "gemma3-270m"  # registry name (embedded) or the endpoint's model id (remote)
    base_url: str | None = None  # remote only; None reads $OPENAI_BASE_URL, then OpenAI's default
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key (never the key)
    max_concurrency: int = 4  # requests in flight at once
    request_timeout: float = 120.0  # seconds per request
    max_retries: int = 5  # transport retries on 429 / 5xx / timeouts, exponential backoff
    cache_path: str | None = None  # SQLite cache of answers; None: runs/<name>/llm_cache.sqlite
    prices: dict = field(default_factory=dict)  # USD per 1M tokens {model: {prompt, completion}}
    backoff_base: float = 1.0  # seconds; retry i waits uniform(0, base * 2**i), at least Retry-After
    backoff_max: float = 60.0  # seconds; cap of one backoff wait
    serve_timeout: float = 300.0  # seconds to wait for the embedded `transformers serve` to answer
    serve_kv_tokens: int = 8192  # embedded: KV cache capacity in tokens (else it takes 90% of RAM)
    serve_batch_tokens: int = 2048  # embedded: most tokens in one continuous-batching step
    batch_poll_s: float = 30.0  # seconds between Batch API status polls


@dataclass
class CorporaParams:
    sources: dict = field(default_factory=dict)  # registry name -> path (file, folder, download)
    on_error: str = "raise"  # raise | skip (bad records are counted and reported)
    limit: int | None = None  # at most this many dialogues per corpus; None: all


@dataclass
class QualityParams:
    prompt_version: str = "judge_v2"
    judge_sample: int = 2  # dialogues per corpus scored by the judge
    max_dialogue_chars: int = 6000  # characters of dialogue shown to the judge; longer ones cut
    max_tokens: int = 128
    temperature: float = 0.0
    parse_retries: int = 2  # an unparseable answer is asked again this often, then missing
    bootstrap: int = 1000  # resamples for the confidence intervals
    top_k: int = 2  # corpora kept for transcription


@dataclass
class TranscriptionParams:
    prompt_version: str = "mi_v1"
    unit: str = "dialogue"  # dialogue: rewrite whole dialogues | turn: one counselor turn in context
    max_dialogues: int | None = None  # per selected corpus; None: all
    max_turns: int | None = None  # keep the first N turns of each dialogue (ends on a counselor turn)
    max_tokens: int = 4096  # per answer (dialogue unit: the whole dialogue; turn unit: one reply)
    temperature: float = 0.7
    validation_retries: int = 2  # an invalid answer is asked again this often, then failed by reason
    min_length_ratio: float = 0.3  # rewritten / source characters (whole dialogue, or one turn)
    max_length_ratio: float = 3.0
    n_train: int = 2000
    n_test: int = 40
    batch_api: bool = False  # OpenAI Batch API instead of live requests (remote only)
    # start each counselor turn with its MI behaviour tag <mi:label> (forecast.TAGS), kept in the
    # corpus so SFT learns it; needs a tagged prompt version (mi_tagged_v1, mi_turn_tagged_v1)
    tag_behaviour: bool = False


@dataclass
class SFTParams:
    models: list = field(default_factory=lambda: ["gemma3-270m"])  # registry names
    min_response_chars: int = 0  # drop counselor turns shorter than this (the therapy-pipeline fix)
    context_turns: int | None = None  # turns of history kept before each reply; None: all
    lora: dict = field(default_factory=dict)  # peft.LoraConfig fields
    config: dict = field(default_factory=dict)  # trl.SFTConfig fields
    merge: bool = False  # also save the merged model


@dataclass
class EvaluationParams:
    models: list = field(default_factory=lambda: ["gemma3-270m"])  # registry names
    # finetuned: + 03 adapter; conditioned: + 03 adapter, each reply begun with an MI behaviour tag
    variants: list = field(default_factory=lambda: ["base", "finetuned"])
    condition_on: str = "forecaster"  # conditioned variant's behaviour: forecaster | a forecast.TAGS label
    max_dialogues: int | None = None  # test dialogues evaluated; None: all
    max_rounds: int | None = None  # counselor turns per dialogue (the first ones); None: all
    context_turns: int | None = None  # messages of gold history kept before each reply; None: all
    batch_size: int = 16  # prompts per generate() call (left-padded, sorted by length)
    max_new_tokens: int = 256  # tokens per reply at most
    generation: dict = field(default_factory=dict)  # transformers GenerationConfig fields; {}: greedy
    bootstrap: int = 1000  # resamples for the 95% CIs and the paired tests
    miti: dict = field(default_factory=dict)
    forecaster: dict = field(default_factory=dict)


@dataclass
class FiguresParams:
    out_dir: str = "figures"
    formats: list = field(default_factory=lambda: ["png", "pdf"])
    dpi: int = 200
    report: bool = True


@dataclass
class Params:
    name: str = "smoke"  # the run's name = the params file's stem; outputs go to runs/<name>/
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    model_paths: dict = field(default_factory=dict)  # registry name -> local folder of its weights
    llm: LLMParams = field(default_factory=LLMParams)
    corpora: CorporaParams = field(default_factory=CorporaParams)
    quality: QualityParams = field(default_factory=QualityParams)
    transcription: TranscriptionParams = field(default_factory=TranscriptionParams)
    sft: SFTParams = field(default_factory=SFTParams)
    evaluation: EvaluationParams = field(default_factory=EvaluationParams)
    figures: FiguresParams = field(default_factory=FiguresParams)

    @property
    def run_dir(self) -> Path:
        """runs/<name>/ under the project root (or under $MI_LLM_RUNS, which tests use)."""
        return Path(os.environ.get("MI_LLM_RUNS") or ROOT / "runs") / self.name

    def stage_dir(self, stage: str) -> Path:
        """runs/<name>/<stage>/, created on demand."""
        d = self.run_dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def to_dict(self) -> dict:
        """Plain dict in the YAML layout (no secrets are ever part of params)."""
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(Params)]


def path(p: str | Path) -> Path:
    """Resolve a params path against the project root."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else ROOT / p


# ----------------------------------------------------------------------------- building
def _check_type(value, tp, where):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(value, arg, where)
            except ParamsError:
                pass
        raise ParamsError(f"{where}: expected {tp}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ParamsError(f"{where}: expected null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    base = origin or tp
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, bool):
        raise ParamsError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, base):
        raise ParamsError(f"{where}: expected {getattr(base, '__name__', base)}, got {value!r}")
    return value


def _build(cls, data, where):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict, where: str = "params") -> Params:
    """Validate a params mapping (unknown keys and wrong types raise ParamsError)."""
    p = _build(Params, data, where)
    for choice, allowed in [
        (("llm", "provider"), ("embedded", "serve", "remote")),
        (("corpora", "on_error"), ("raise", "skip")),
        (("transcription", "unit"), ("dialogue", "turn")),
        (("device",), ("auto", "cpu", "cuda")),
    ]:
        value = p
        for key in choice:
            value = getattr(value, key)
        if value not in allowed:
            raise ParamsError(f"{where}.{'.'.join(choice)}: {value!r} is not one of {allowed}")
    return p


def load(file: str | Path) -> Params:
    """Load and validate a params YAML file; its `name` must equal the file's stem."""
    file = path(file)
    if not file.exists():
        raise ParamsError(f"{file}: no such params file")
    with open(file, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    p = from_dict(data, where=str(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file))
    if p.name != file.stem:
        raise ParamsError(f"{file}: name {p.name!r} must equal the file's stem {file.stem!r}")
    return p


def from_namespace(ns: dict) -> Params:
    """Build params from a notebook's globals (the papermill parameters), one key per section."""
    missing = [s for s in SECTIONS if s not in ns]
    if missing:
        raise ParamsError(f"notebook parameters cell lacks {missing}")
    return from_dict({s: ns[s] for s in SECTIONS}, where="notebook parameters")
