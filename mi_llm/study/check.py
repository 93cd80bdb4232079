"""`--check`: validate a params file without running anything."""

from __future__ import annotations

import os

from mi_llm import params as params_mod


def check(params_file: str) -> list[str]:
    """All problems found in a params file (empty when it is sound)."""
    try:
        P = params_mod.load(params_file)
    except params_mod.ParamsError as e:
        return [str(e)]
    from mi_llm.data import corpora
    from mi_llm.models import registry
    from mi_llm.train import sft

    errs = sft.check_params(P)
    for name in P.evaluation.models:
        if name not in registry.NAMES:
            errs.append(
                f"evaluation.models: unknown model {name!r}; known models: {registry.NAMES}"
            )
    for name, folder in P.model_paths.items():
        if not params_mod.path(folder).exists():
            errs.append(f"model_paths.{name}: folder {folder} does not exist")
    errs += corpora.corpus_problems(P)
    if P.llm.provider == "remote" and not os.environ.get(P.llm.api_key_env):
        errs.append(f"llm: provider is remote but ${P.llm.api_key_env} is not set")
    errs += study_inputs(P)
    return errs


# ----------------------------------------------------------------------------- what stages would meet
def study_inputs(P) -> list[str]:
    """Problems a stage would only meet later: unknown corpus names, prompts without their
    placeholders, an embedded llm.model that cannot be served."""
    from mi_llm.data import corpora
    from mi_llm.llm import prompts
    from mi_llm.models import embedded, registry

    errs = [
        f"corpora.sources.{name}: no loader knows this corpus; known: {', '.join(corpora.NAMES)}"
        for name in P.corpora.sources
        if name not in corpora.LOADERS
    ]
    tp = P.transcription
    errs += [
        f"transcription.prompt_version: {e}"
        for e in prompts.check(tp.prompt_version, f"transcription.{tp.unit}")
    ]
    errs += [
        f"quality.prompt_version: {e}" for e in prompts.check(P.quality.prompt_version, "quality")
    ]
    try:
        from mi_llm.eval import miti

        cfg = miti.settings(P)
    except params_mod.ParamsError as e:
        errs.append(str(e))
    else:
        if cfg["enabled"]:
            errs += [
                f"evaluation.miti.prompt_version: {e}"
                for e in prompts.check(cfg["prompt_version"], "miti")
            ]
    if P.llm.provider == "embedded":
        m = P.llm.model
        if m != embedded.NAME and m not in registry.NAMES and not params_mod.path(m).is_dir():
            errs.append(
                f"llm.model: {m!r} cannot be served embedded: name the embedded model "
                f"{embedded.NAME!r}, a registry model {registry.NAMES} or a local model folder, "
                "or set llm.provider: remote"
            )
    return errs


def defaults_used(params_file: str) -> list[str]:
    """The documented defaults a params file relies on (missing sections and keys); [] if unreadable."""
    try:
        return params_mod.defaults_used(params_mod.read_yaml(params_file))
    except params_mod.ParamsError:
        return []
