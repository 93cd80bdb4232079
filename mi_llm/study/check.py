"""`check`: every problem of a params file, found before anything starts or costs money.

Two kinds of problem, both reported by `python -m mi_llm check` and refused by `run`:
- the recipe's own (params.load: keys, types, ranges, names; here: models, corpora, prompts, the
  fields passed on to PEFT, TRL and transformers), the same on every machine;
- this machine's (environment=True): corpus folders missing or empty, model_paths folders missing,
  the API key not set. `check --recipe-only` (and `make check`) leaves these out.

A dry-run recipe (llm.api_key_env names $MI_LLM_DRYRUN_KEY, set only by `python -m mi_llm dryrun`)
is checked as the dry run meets it: its key and its tiny checkpoints are made by that command.
"""

from __future__ import annotations

import os

from mi_llm import params as params_mod
from mi_llm.params_rules import did_you_mean

DRYRUN_KEY_ENV = "MI_LLM_DRYRUN_KEY"  # the key variable only the dry run sets (to a dummy)


def is_dryrun(P) -> bool:
    """Whether a recipe is meant for `python -m mi_llm dryrun` (its key variable is the dry run's)."""
    return P.llm.api_key_env == DRYRUN_KEY_ENV


def problems(params_file: str, overrides=(), environment: bool = True, dry_run: bool | None = None):
    """(params or None, every problem found). dry_run None: as the recipe says (is_dryrun)."""
    try:
        P = params_mod.load(params_file, overrides)
    except params_mod.ParamsError as e:
        return None, [str(e)]
    dry = is_dryrun(P) if dry_run is None else dry_run
    errs = recipe_problems(P)
    if dry:
        from mi_llm.study import dryrun

        try:
            dryrun.check(P)
        except params_mod.ParamsError as e:
            errs.append(str(e))
    if environment:
        errs += environment_problems(P, dry)
    return P, errs


def check(params_file: str, overrides=(), environment: bool = True) -> list[str]:
    """All problems found in a params file (empty when it is sound)."""
    return problems(params_file, overrides, environment)[1]


# ----------------------------------------------------------------------------- the recipe
def recipe_problems(P) -> list[str]:
    """Problems of the recipe itself, the same on every machine."""
    from mi_llm.train import sft

    errs = model_problems(P)
    errs += [e for e in sft.check_params(P) if not e.startswith("sft.models: unknown model")]
    errs += generation_problems(P.evaluation.generation)
    errs += declared_type_problems(P)
    errs += study_inputs(P)
    return errs


def declared_type_problems(P) -> list[str]:
    """Values of sft.lora and sft.config whose type is not the one PEFT or TRL declares for the
    field (bf16: "yes", r: 8.5); fields whose declared type is not a plain one are left to them."""
    import typing

    from peft import LoraConfig
    from trl import SFTConfig

    errs = []
    for section, cls in [("sft.lora", LoraConfig), ("sft.config", SFTConfig)]:
        hints = typing.get_type_hints(cls)
        for key, value in getattr(P.sft, section.split(".")[1]).items():
            if key in hints and not _fits(value, hints[key]):
                errs.append(
                    f"{section}.{key}: {value!r} is not of the type {cls.__module__.split('.')[0]}"
                    f" declares ({_type_name(hints[key])})"
                )
    return errs


_PLAIN = {
    bool: (bool,),
    int: (int,),
    float: (int, float),
    str: (str,),
    list: (list,),
    dict: (dict,),
}


def _fits(value, tp) -> bool:
    """Whether a YAML value fits a declared type; True where the type is not a plain one."""
    import enum
    import types
    import typing

    args = (
        typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    )
    checkable = False
    for a in args:
        base = typing.get_origin(a) or a
        if a is type(None):
            checkable = True
            if value is None:
                return True
        elif isinstance(base, type) and issubclass(base, enum.Enum):
            checkable = True
            if isinstance(value, str):
                return True
        elif base in _PLAIN:
            checkable = True
            if isinstance(value, _PLAIN[base]) and (base is bool or not isinstance(value, bool)):
                return True
        else:
            return True  # a type this check does not know: PEFT or TRL decide
    return not checkable


def _type_name(tp) -> str:
    return (
        str(tp)
        .replace("typing.", "")
        .replace("NoneType", "None")
        .replace("<class '", "")
        .replace("'>", "")
    )


def model_problems(P) -> list[str]:
    """Model names that the registry does not know, each with the closest known name."""
    from mi_llm.models import registry

    errs = []
    for key, names in [
        ("sft.models", P.sft.models),
        ("evaluation.models", P.evaluation.models),
        ("model_paths", list(P.model_paths)),
    ]:
        errs += [
            f"{key}: unknown model {name!r}{did_you_mean(name, registry.NAMES)} "
            f"(known models: {', '.join(registry.NAMES)}; `python -m mi_llm models list`)"
            for name in names
            if name not in registry.NAMES
        ]
    return errs


def generation_problems(generation: dict) -> list[str]:
    """evaluation.generation keys that are not fields of transformers' GenerationConfig."""
    if not generation:
        return []
    from transformers import GenerationConfig

    fields = GenerationConfig().to_dict()
    return [
        f"evaluation.generation.{key}: not a transformers GenerationConfig field"
        f"{did_you_mean(key, fields)}"
        for key in generation
        if key not in fields
    ]


def study_inputs(P) -> list[str]:
    """Problems a stage would only meet later: unknown corpus names, prompts without their
    placeholders or tags, an embedded llm.model that cannot be served."""
    from mi_llm.data import corpora, transcribe
    from mi_llm.llm import prompts
    from mi_llm.models import embedded, registry

    errs = [
        f"corpora.sources.{name}: no loader knows this corpus{did_you_mean(name, corpora.NAMES)}; "
        f"known: {', '.join(corpora.NAMES)}"
        for name in P.corpora.sources
        if name not in corpora.LOADERS
    ]
    tp = P.transcription
    found = prompts.check(tp.prompt_version, f"transcription.{tp.unit}")
    errs += [f"transcription.prompt_version: {e}" for e in found]
    if not found:
        try:
            transcribe.check_prompt(prompts.parts(tp.prompt_version), tp.prompt_version, tp)
        except ValueError as e:
            errs.append(str(e))
    errs += [
        f"quality.prompt_version: {e}" for e in prompts.check(P.quality.prompt_version, "quality")
    ]
    cfg = P.evaluation.miti
    if cfg.enabled:
        errs += [
            f"evaluation.miti.prompt_version: {e}"
            for e in prompts.check(cfg.prompt_version, "miti")
        ]
    if P.llm.provider == "embedded":
        m = P.llm.model
        if m != embedded.NAME and m not in registry.NAMES and not params_mod.path(m).is_dir():
            errs.append(
                f"llm.model: {m!r} cannot be served embedded"
                f"{did_you_mean(m, [embedded.NAME, *registry.NAMES])}: name the embedded model "
                f"{embedded.NAME!r}, a registry model {registry.NAMES} or a local model folder, "
                "or set llm.provider: remote"
            )
    return errs


# ----------------------------------------------------------------------------- this machine
def environment_problems(P, dry_run: bool = False) -> list[str]:
    """What this machine lacks for the recipe: data, model folders, the API key."""
    from mi_llm.data import corpora

    errs = corpora.corpus_problems(P)
    for name, src in P.corpora.sources.items():
        folder = params_mod.path(src)
        if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
            errs.append(
                f"corpora.sources.{name}: folder {src} is empty; fetch the corpus with "
                f"`python -m mi_llm data fetch {name}` or point at the folder that holds it"
            )
    if dry_run:  # the dry run writes the tiny checkpoints and sets the dummy key itself
        return errs
    for name, folder in P.model_paths.items():
        if not params_mod.path(folder).exists():
            errs.append(f"model_paths.{name}: folder {folder} does not exist")
    if P.llm.provider == "remote" and not os.environ.get(P.llm.api_key_env):
        errs.append(
            f"llm: provider is remote but ${P.llm.api_key_env} is not set; export the API key in "
            f"that variable (llm.api_key_env names it) before the run"
        )
    return errs


def defaults_used(params_file: str) -> list[str]:
    """The documented defaults a params file relies on (missing sections and keys); [] if unreadable."""
    try:
        return params_mod.defaults_used(params_mod.read_yaml(params_file))
    except params_mod.ParamsError:
        return []
