"""Run parameters: one YAML recipe per run, validated on load.

A params file has top-level sections (llm, corpora, quality, transcription, sft, evaluation,
figures) plus name/seed/device. The same keys are the papermill parameters of every notebook,
whose parameters cell holds the smoke defaults (tests keep the two in sync). Unknown keys and
wrong types are errors, never silently ignored. Relative paths are relative to the project root.

Run folders live in runs/<name>/ under the project root. The one way to put them elsewhere (tests,
the accelerate check, a scratch disk) is the environment variable $MI_LLM_RUNS (RUNS_ENV): set it to
the folder that replaces runs/; it is read each time a run folder is asked for (runs_root()), and
child processes (papermill kernels, `accelerate launch`) inherit it.
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
RUNS_ENV = "MI_LLM_RUNS"  # the folder that replaces runs/ when set (see the module docstring)


def runs_root() -> Path:
    """The folder holding every run: $MI_LLM_RUNS when set, else runs/ under the project root."""
    return Path(os.environ.get(RUNS_ENV) or ROOT / "runs")


class ParamsError(ValueError):
    """A params file is invalid; the message names the file and the key."""


def section_settings(given, defaults: dict, where: str) -> dict:
    """A params section (its dataclass or a mapping) over its defaults; unknown keys raise ParamsError."""
    given = dataclasses.asdict(given) if dataclasses.is_dataclass(given) else dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


# ----------------------------------------------------------------------------- sections
@dataclass
class LLMParams:
    provider: str = (
        "embedded"  # embedded: in this process | serve: `transformers serve` | remote: base_url
    )
    model: str = "gemma3-270m"  # registry name (embedded) or the endpoint's model id (remote)
    base_url: str | None = None  # remote only; None reads $OPENAI_BASE_URL, then OpenAI's default
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key (never the key)
    max_concurrency: int = 4  # requests in flight at once
    request_timeout: float = 120.0  # seconds per request
    max_retries: int = 5  # transport retries on 429 / 5xx / timeouts, exponential backoff
    cache_path: str | None = None  # SQLite cache of answers; None: runs/<name>/llm_cache.sqlite
    prices: dict = field(default_factory=dict)  # USD per 1M tokens {model: {prompt, completion}}
    backoff_base: float = (
        1.0  # seconds; retry i waits uniform(0, base * 2**i), at least Retry-After
    )
    backoff_max: float = 60.0  # seconds; cap of one backoff wait
    serve_timeout: float = 300.0  # seconds to wait for the embedded `transformers serve` to answer
    serve_kv_tokens: int = 8192  # embedded: KV cache capacity in tokens (else it takes 90% of RAM)
    serve_batch_tokens: int = 2048  # embedded: most tokens in one continuous-batching step
    batch_poll_s: float = 30.0  # seconds between Batch API status polls
    # share of a stage's units that may fail on transport errors (dead or flaky endpoint) before the
    # stage fails with "re-run to resume"; 0: any such failure fails the stage
    max_transport_failures: float = 0.0


@dataclass
class CorporaParams:
    sources: dict = field(default_factory=dict)  # registry name -> path (file, folder, download)
    on_error: str = "raise"  # raise | skip (bad records are counted and reported)
    limit: int | None = None  # at most this many dialogues per corpus; None: all
    # fixtures (a PROVENANCE.json saying "fixture": true: dialogues written for this project in a
    # corpus's format) are refused unless this is true; smoke runs and tests only
    allow_fixtures: bool = False


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
    unit: str = (
        "dialogue"  # dialogue: rewrite whole dialogues | turn: one counselor turn in context
    )
    max_dialogues: int | None = None  # per selected corpus; None: all
    max_turns: int | None = (
        None  # keep the first N turns of each dialogue (ends on a counselor turn)
    )
    max_tokens: int = 4096  # per answer (dialogue unit: the whole dialogue; turn unit: one reply)
    temperature: float = 0.7
    validation_retries: int = (
        2  # an invalid answer is asked again this often, then failed by reason
    )
    min_length_ratio: float = 0.3  # rewritten / source characters (whole dialogue, or one turn)
    max_length_ratio: float = 3.0
    n_train: int = 2000
    n_test: int = 40
    batch_api: bool = False  # OpenAI Batch API instead of live requests (remote only)
    # start each counselor turn with its MI behaviour tag <mi:label> (schema.TAGS), kept in the
    # corpus so SFT learns it; needs a tagged prompt version (mi_tagged_v1, mi_turn_tagged_v1)
    tag_behaviour: bool = False
    # whole-dialogue unit: a client turn may differ from its source by at most this share of its
    # characters after whitespace/punctuation normalisation (1 - difflib ratio); more is client_altered
    client_edit_tolerance: float = 0.05


@dataclass
class SFTParams:
    models: list = field(default_factory=lambda: ["gemma3-270m"])  # registry names
    min_response_chars: int = 0  # drop counselor turns shorter than this (the therapy-pipeline fix)
    context_turns: int | None = None  # turns of history kept before each reply; None: all
    lora: dict = field(default_factory=dict)  # peft.LoraConfig fields
    config: dict = field(default_factory=dict)  # trl.SFTConfig fields
    merge: bool = False  # also save the merged model


@dataclass
class MitiParams:  # evaluation.miti: the MITI 4.2.1 coder (mi_llm.eval.miti); paths from the project root
    enabled: bool = True  # false: stage 04 skips MITI coding
    prompt_version: str = "miti_v3"  # mi_llm/prompts/<version>.md with `## code` and `## globals`
    max_tokens: int = 8  # tokens of a code answer (one or two code words)
    globals_max_tokens: int = 64  # tokens of the globals JSON answer
    temperature: float = 0.0
    parse_retries: int = 1  # an unparseable answer is asked again this often, then marked missing
    context_turns: int = 4  # turns of preceding conversation shown with each utterance
    max_utterances: int | None = None  # counselor utterances coded per dialogue; None: all
    rate_globals: bool = True  # also rate the four globals per dialogue
    annomi_path: str = "data/AnnoMI"  # folder (simple + full CSV) read by mi_llm.data.corpora
    annomi_sample: int = 40  # AnnoMI therapist utterances coded for the coder check; 0: none
    gold_path: str = "data/MI_Welivita_Pu_gold_test/test_output.csv"  # gold MI sentences (CSV)
    gold_sample: int = 40  # Welivita & Pu gold sentences coded for the coder check; 0: none
    check_bootstrap: int = 1000  # resamples of the coder-check kappa's 95% CI
    human_worksheets: dict = field(default_factory=dict)  # coder name -> folder of worksheets


FORECASTER_KINDS = ("universal", "text", "char", "boost")  # forecast.build makes each


@dataclass
class ForecasterParams:  # evaluation.forecaster: the next-behaviour forecaster (mi_llm.eval.forecast)
    enabled: bool = True
    annomi_path: str = "data/AnnoMI"  # folder: simple's codes + full's question/reflection subtypes
    mi_quality: list = field(default_factory=lambda: ["high", "low"])  # AnnoMI sessions used
    test_size: float = (
        0.2  # share of sessions held out (split by session, stratified by mi_quality)
    )
    context_turns: int = 2  # preceding utterances whose words form the context feature
    model: str = (
        "text"  # forecaster kind (FORECASTER_KINDS), chosen by benchmarks/forecaster_models.py
    )
    C: float = 0.1  # inverse L2 strength of the logistic regression


VARIANTS = ("base", "finetuned", "conditioned")  # evaluation.variants; generation order
ENGINES = ("auto", "hf", "cpu", "server")  # evaluation.engine (mi_llm.decode.engine)


@dataclass
class EvaluationParams:
    models: list = field(default_factory=lambda: ["gemma3-270m"])  # registry names
    # finetuned: + 03 adapter; conditioned: + 03 adapter, each reply begun with an MI behaviour tag
    variants: list = field(default_factory=lambda: ["base", "finetuned"])
    condition_on: str = (
        "forecaster"  # conditioned variant's behaviour: forecaster | a schema.TAGS label
    )
    max_dialogues: int | None = None  # test dialogues evaluated; None: all
    max_rounds: int | None = None  # counselor turns per dialogue (the first ones); None: all
    context_turns: int | None = None  # messages of gold history kept before each reply; None: all
    batch_size: int = 16  # prompts per generate() call (left-padded, sorted by length)
    # decoding (docs/decoding.md): hf (transformers' generate, left-padded batches) | cpu (the
    # project's CPU loop) | server (an OpenAI-compatible /v1/completions endpoint at server_url,
    # e.g. vLLM) | auto: cpu when the device is a CPU, hf on CUDA
    engine: str = "auto"
    server_url: str | None = None  # engine server: base URL, e.g. http://127.0.0.1:8000/v1
    max_new_tokens: int = 256  # tokens per reply at most
    generation: dict = field(
        default_factory=dict
    )  # transformers GenerationConfig fields; {}: greedy
    bootstrap: int = 1000  # resamples for the 95% CIs and the paired tests
    content_metrics: bool = False  # also BLEU/ROUGE on content only (no punctuation), beside
    miti: MitiParams = field(default_factory=MitiParams)
    forecaster: ForecasterParams = field(default_factory=ForecasterParams)


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
        """runs/<name>/ under the project root, or <$MI_LLM_RUNS>/<name> (runs_root())."""
        return runs_root() / self.name

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


# numbers out of range are errors before any stage runs: (section.key, lowest, highest); None
# values (where the key allows them) mean "all" and are not checked
POSITIVE = "> 0"  # a lowest bound that excludes 0
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
    ("evaluation.forecaster.test_size", POSITIVE, 1),
    ("evaluation.forecaster.context_turns", 0, None),
    ("evaluation.forecaster.C", POSITIVE, None),
    ("figures.dpi", 1, None),
]


def check_ranges(p: Params, where: str = "params") -> None:
    """Raise ParamsError naming the first number out of its range (RANGES)."""
    for key, lo, hi in RANGES:
        value = p
        for k in key.split("."):
            value = getattr(value, k)
        if value is None:
            continue
        low = value <= 0 if lo == POSITIVE else value < lo
        if low or (hi is not None and value > hi):
            span = POSITIVE if lo == POSITIVE else f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ParamsError(f"{where}.{key}: {value!r} is out of range; it must be {span}")
    tp = p.transcription
    if tp.max_length_ratio <= tp.min_length_ratio:
        raise ParamsError(
            f"{where}.transcription.max_length_ratio: {tp.max_length_ratio} must be above "
            f"min_length_ratio {tp.min_length_ratio}"
        )


def from_dict(data: dict, where: str = "params") -> Params:
    """Validate a params mapping (unknown keys, wrong types and numbers out of range raise ParamsError)."""
    p = _build(Params, data, where)
    check_ranges(p, where)
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
    _check_evaluation_choices(p.evaluation, f"{where}.evaluation")
    return p


def _check_evaluation_choices(e: EvaluationParams, where: str) -> None:
    """Variants, condition_on and the forecaster's kind and MI qualities are names from fixed lists."""
    from mi_llm.data.schema import TAGS  # the behaviour tags

    for key, values, allowed in [
        ("variants", e.variants, VARIANTS),
        ("forecaster.mi_quality", e.forecaster.mi_quality, ("high", "low")),
    ]:
        bad = [v for v in values if v not in allowed]
        if bad or len(set(values)) != len(values):
            what = f"unknown {bad}" if bad else f"repeated names in {values}"
            raise ParamsError(f"{where}.{key}: {what}; known: {list(allowed)}")
    if e.condition_on not in ("forecaster", *TAGS):
        raise ParamsError(
            f"{where}.condition_on: {e.condition_on!r} is not 'forecaster' or one of {list(TAGS)}"
        )
    if e.engine not in ENGINES:
        raise ParamsError(f"{where}.engine: {e.engine!r} is not one of {list(ENGINES)}")
    if e.engine == "server" and not (e.server_url or "").startswith(("http://", "https://")):
        raise ParamsError(
            f"{where}.server_url: {e.server_url!r}; engine 'server' needs the http(s) base URL of "
            "an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (docs/decoding.md)"
        )
    if e.forecaster.model not in FORECASTER_KINDS:
        raise ParamsError(
            f"{where}.forecaster.model: {e.forecaster.model!r} is not one of {list(FORECASTER_KINDS)}"
        )


def load(file: str | Path) -> Params:
    """Load and validate a params YAML file; its `name` must equal the file's stem."""
    file = path(file)
    if not file.exists():
        raise ParamsError(f"{file}: no such params file")
    data = read_yaml(file)
    p = from_dict(data, where=str(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file))
    if p.name != file.stem:
        raise ParamsError(f"{file}: name {p.name!r} must equal the file's stem {file.stem!r}")
    return p


def read_yaml(file: str | Path) -> dict:
    """The mapping in a params YAML file; a syntax error is one ParamsError line: file:line:column."""
    file = path(file)
    try:
        with open(file, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ParamsError(f"{file}{at}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{file}: YAML syntax error: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{file}: expected a mapping of sections, got {type(data).__name__}")
    return data


def defaults_used(data: dict) -> list[str]:
    """Which documented defaults a params mapping relies on: missing sections, then missing keys."""
    out = [f"{s}: whole section (defaults)" for s in SECTIONS if s not in data]
    hints = typing.get_type_hints(Params)
    for s in SECTIONS:
        if s in data and isinstance(data[s], dict) and dataclasses.is_dataclass(hints[s]):
            missing = [f.name for f in dataclasses.fields(hints[s]) if f.name not in data[s]]
            if missing:
                out.append(f"{s}: defaults for {', '.join(missing)}")
    return out


def from_namespace(ns: dict) -> Params:
    """Build params from a notebook's globals (the papermill parameters), one key per section."""
    missing = [s for s in SECTIONS if s not in ns]
    if missing:
        raise ParamsError(f"notebook parameters cell lacks {missing}")
    return from_dict({s: ns[s] for s in SECTIONS}, where="notebook parameters")
