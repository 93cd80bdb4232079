"""Run parameters: one YAML recipe per run, validated on load.

A params file has top-level sections (llm, corpora, quality, transcription, sft, evaluation,
figures) plus seed/device; the run's name is the file's stem. The same keys are the papermill
parameters of every notebook, whose parameters cell holds the smoke defaults (tests keep the two
in sync). Every key is validated here on load (mi_llm.params_rules holds the ranges and lists):
unknown keys, wrong types, non-finite numbers, duplicate YAML keys and inconsistent settings are
errors naming the file and key, never silently ignored, so stage code trusts the typed params.
One key is changed for one run with `python -m mi_llm run FILE --set KEY=VALUE` (load's
overrides). Relative paths are relative to the project root.

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

from mi_llm.params_rules import (
    FIGURE_FORMATS,
    MAPPINGS,
    ParamsError,
    apply_overrides,
    check_finite,
    check_mapping,
    check_ranges,
    did_you_mean,
    name_problem,
    parse_yaml,
)

ROOT = Path(__file__).resolve().parents[1]  # the project root (holds params/, notebooks/, runs/)
RUNS_ENV = "MI_LLM_RUNS"  # the folder that replaces runs/ when set (see the module docstring)


def runs_root() -> Path:
    """The folder holding every run: $MI_LLM_RUNS when set, else runs/ under the project root."""
    return Path(os.environ.get(RUNS_ENV) or ROOT / "runs")


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
    prompt_version: str = "miti_v4"  # mi_llm/prompts/<version>.md with `## code` and `## globals`
    max_tokens: int = 8  # tokens of a code answer (one code word)
    globals_max_tokens: int = 64  # tokens of the globals JSON answer
    temperature: float = 0.0
    parse_retries: int = 1  # an unparseable answer is asked again this often, then marked missing
    context_turns: int = 4  # turns of preceding conversation shown with each utterance
    max_utterances: int | None = (
        None  # replies coded per dialogue (each cut into utterances); None: all
    )
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
    name: str = "smoke"  # the run's name: the params file's stem; outputs go to runs/<name>/
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
        """runs/<name>/ under the project root, or <$MI_LLM_RUNS>/<name> (runs_root()); a name
        that is not a plain folder name (`..`, `a/b`) is refused before anything is written."""
        if (why := name_problem(self.name)) is not None:
            raise ParamsError(f"name: {why}")
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
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise ParamsError(
            f"{where}: unknown key(s) {unknown}{did_you_mean(unknown[0], known)} "
            f"(known: {', '.join(sorted(known))})"
        )
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


CHOICES = [  # keys whose value is one name of a fixed list
    ("device", ("auto", "cpu", "cuda")),
    ("llm.provider", ("embedded", "serve", "remote")),
    ("corpora.on_error", ("raise", "skip")),
    ("transcription.unit", ("dialogue", "turn")),
    ("evaluation.forecaster.model", FORECASTER_KINDS),
    ("evaluation.engine", ENGINES),
]
LISTS = [  # keys whose value is a list of distinct names of a fixed list
    ("evaluation.variants", VARIANTS),
    ("evaluation.forecaster.mi_quality", ("high", "low")),
    ("figures.formats", FIGURE_FORMATS),
]


def _get(p, key: str):
    for k in key.split("."):
        p = getattr(p, k)
    return p


def from_dict(data: dict, where: str = "params") -> Params:
    """Validate a params mapping: unknown keys, wrong types, non-finite numbers, numbers out of
    range, names outside their lists and inconsistent keys raise ParamsError naming the key."""
    check_finite(data, where)
    p = _build(Params, data, where)
    if (why := name_problem(p.name)) is not None:
        raise ParamsError(f"{where}.name: {why}")
    check_ranges(p, where)
    for key, allowed in CHOICES:
        value = _get(p, key)
        if value not in allowed:
            raise ParamsError(
                f"{where}.{key}: {value!r} is not one of {list(allowed)}{did_you_mean(value, allowed)}"
            )
    for key, allowed in LISTS:
        values = _get(p, key)
        bad = [v for v in values if v not in allowed]
        if bad or len(set(values)) != len(values) or not values:
            what = (
                f"unknown {bad}{did_you_mean(bad[0], allowed)}"
                if bad
                else f"repeated names in {values}"
                if values
                else "empty"
            )
            raise ParamsError(f"{where}.{key}: {what}; known: {list(allowed)}")
    for section in MAPPINGS:
        check_mapping(section, _get(p, section), where)
    _check_evaluation(p, where)
    return p


def _check_evaluation(p: Params, where: str) -> None:
    """condition_on names a behaviour; `conditioned` needs a tagged transcription."""
    from mi_llm.data.schema import TAGS  # the behaviour tags

    e = p.evaluation
    if e.condition_on not in ("forecaster", *TAGS):
        raise ParamsError(
            f"{where}.evaluation.condition_on: {e.condition_on!r} is not 'forecaster' or one of "
            f"{list(TAGS)}{did_you_mean(e.condition_on, ('forecaster', *TAGS))}"
        )
    if e.engine == "server" and not (e.server_url or "").startswith(("http://", "https://")):
        raise ParamsError(
            f"{where}.evaluation.server_url: {e.server_url!r}; engine 'server' needs the http(s) base "
            "URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (docs/decoding.md)"
        )
    if "conditioned" in e.variants and not p.transcription.tag_behaviour:
        raise ParamsError(
            f"{where}.evaluation.variants: 'conditioned' needs a tagged transcription, and "
            "transcription.tag_behaviour is false: the model is never trained on a behaviour tag, "
            "so a reply begun with one means nothing; drop 'conditioned', or set "
            "transcription.tag_behaviour: true with a tagged prompt_version (mi_tagged_v1, "
            "mi_turn_tagged_v1)"
        )


# ----------------------------------------------------------------------------- recipe files
def load(file: str | Path, overrides=()) -> Params:
    """Load and validate a params YAML file, with `--set KEY=VALUE` overrides applied first.

    The run is named after the file: `name` defaults to its stem, and a copied recipe whose `name`
    still names the original runs under its own file name (name_note says so).
    """
    file = path(file)
    if not file.exists():
        raise ParamsError(f"{_rel(file)}: no such params file{_similar_files(file)}")
    data = apply_overrides(read_yaml(file), overrides, Params)
    data["name"] = file.stem
    return from_dict(data, where=_rel(file))


def name_note(file: str | Path) -> str | None:
    """The note for a params file whose `name` is not its stem (a copied recipe), else None."""
    file = path(file)
    try:
        name = read_yaml(file).get("name", file.stem)
    except ParamsError:
        return None
    if name == file.stem:
        return None
    return f"{_rel(file)}: name {name!r} is not the file's stem; the run is {file.stem!r} (runs/{file.stem}/)"


def _rel(file: Path) -> str:
    return str(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file)


def _similar_files(file: Path) -> str:
    """'; did you mean params/x.yaml?' for a near miss among the folder's YAML files."""
    folder = file.parent if file.parent.is_dir() else ROOT / "params"
    names = {p.name: p for p in folder.glob("*.yaml")}
    hint = did_you_mean(file.name, names)
    if not hint:
        return (
            f"; params files: {', '.join(_rel(p) for p in sorted(names.values()))}" if names else ""
        )
    close = hint.split("'")[1]
    return f"; did you mean {_rel(names[close])}?"


def read_yaml(file: str | Path) -> dict:
    """The mapping in a params YAML file; a syntax error or a duplicate key is one ParamsError
    line: file:line:column."""
    file = path(file)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ParamsError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except FileNotFoundError:
        raise ParamsError(f"{_rel(file)}: no such params file{_similar_files(file)}") from None
    except OSError as e:
        raise ParamsError(f"{_rel(file)}: cannot be read ({e.strerror})") from None
    data = parse_yaml(text, str(file))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{file}: expected a mapping of sections, got {type(data).__name__}")
    return data


def defaults_used(data: dict) -> list[str]:
    """Which documented defaults a params mapping relies on: missing sections, then missing keys."""
    out = [f"{s}: whole section (defaults)" for s in SECTIONS if s not in data and s != "name"]
    hints = typing.get_type_hints(Params)
    for s in SECTIONS:
        if s in data and isinstance(data[s], dict) and dataclasses.is_dataclass(hints[s]):
            missing = [f.name for f in dataclasses.fields(hints[s]) if f.name not in data[s]]
            if missing:
                out.append(f"{s}: defaults for {', '.join(missing)}")
    return out


# ----------------------------------------------------------------------------- notebooks
def _missing(cls, data: dict, where: str) -> list[str]:
    """The fields of a section (and of its sub-sections) a mapping leaves out, as dotted keys."""
    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if f.name not in data:
            out.append(f"{where}.{f.name}")
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(data[f.name], dict):
            out += _missing(hints[f.name], data[f.name], f"{where}.{f.name}")
    return out


def _merge(base, over):
    """`over` merged onto `base`, mappings key by key (a value of `over` wins)."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


def from_namespace(ns: dict) -> Params:
    """Build params from a notebook's globals (the papermill parameters), one key per section.

    A section given in part (papermill -y 'quality: {judge_sample: 3}') is merged onto the same
    section of the recipe params/<name>.yaml, so the recipe's other values hold; without that
    recipe the notebook is refused, naming the keys that would fall back to package defaults.
    """
    missing = [s for s in SECTIONS if s not in ns]
    if missing:
        raise ParamsError(f"notebook parameters cell lacks {missing}")
    data = {s: ns[s] for s in SECTIONS}
    hints = typing.get_type_hints(Params)
    partial = [
        s
        for s in SECTIONS
        if dataclasses.is_dataclass(hints[s])
        and isinstance(data[s], dict)
        and _missing(hints[s], data[s], s)
    ]
    if partial:
        recipe = ROOT / "params" / f"{data['name']}.yaml"
        if not recipe.exists():
            lost = [k for s in partial for k in _missing(hints[s], data[s], s)]
            raise ParamsError(
                f"notebook parameters: section(s) {partial} given in part and no recipe "
                f"params/{data['name']}.yaml to complete them, so {', '.join(lost)} would fall back "
                f"to package defaults; pass whole sections, or run `python -m mi_llm run "
                f"<params file> --set KEY=VALUE`"
            )
        base = read_yaml(recipe)
        data.update({s: _merge(base.get(s) or {}, data[s]) for s in partial})
    return from_dict(data, where="notebook parameters")
