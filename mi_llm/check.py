"""`--check`: validate a params file without running anything."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from . import params as params_mod


def check(params_file: str) -> list[str]:
    """All problems found in a params file (empty when it is sound)."""
    try:
        P = params_mod.load(params_file)
    except params_mod.ParamsError as e:
        return [str(e)]
    from . import models, sft

    errs = sft.check_params(P)
    for name in P.evaluation.models:
        if name not in models.NAMES:
            errs.append(f"evaluation.models: unknown model {name!r}; known models: {models.NAMES}")
    for name, folder in P.model_paths.items():
        if not params_mod.path(folder).exists():
            errs.append(f"model_paths.{name}: folder {folder} does not exist")
    errs += corpus_problems(P)
    if P.llm.provider == "remote" and not os.environ.get(P.llm.api_key_env):
        errs.append(f"llm: provider is remote but ${P.llm.api_key_env} is not set")
    errs += study_inputs(P)
    return errs


def corpus_problems(P) -> list[str]:
    """Corpus paths that are missing (with the `data fetch` command that brings them) or that are
    fixtures while corpora.allow_fixtures is false."""
    from . import corpora

    errs = []
    for name, src in P.corpora.sources.items():
        path = params_mod.path(src)
        if not path.exists():
            errs.append(
                f"corpora.sources.{name}: path {src} does not exist{_how_to_get(name, src)}"
            )
        elif not P.corpora.allow_fixtures and corpora.is_fixture(path):
            errs.append(
                f"corpora.sources.{name}: {src} is a fixture written for this project (its "
                'PROVENANCE.json says "fixture": true), not the real corpus; get the real one with '
                f"`python -m mi_llm data fetch {name}` and point at it, or set "
                "corpora.allow_fixtures: true (smoke runs and tests only)"
            )
    return errs


def _how_to_get(name: str, src: str) -> str:
    """'; get it with `python -m mi_llm data fetch NAME [--dest D]`' for a corpus of the registry."""
    from . import sources

    s = next((s for s in sources.SOURCES.values() if s.loader == name), None)
    if s is None:
        return ""
    tail, parts = PurePosixPath(s.name, s.load_path).parts, PurePosixPath(src).parts
    dest = sources.DEFAULT_DEST
    if len(parts) > len(tail) and parts[-len(tail) :] == tail:
        dest = str(PurePosixPath(*parts[: -len(tail)]))
    opt = "" if dest == sources.DEFAULT_DEST else f" --dest {dest}"
    return (
        f"; get it with `python -m mi_llm data fetch {s.name}{opt}` (it writes "
        f"{sources.load_path(s, dest)}; `python -m mi_llm data list` shows the source)"
    )


# ----------------------------------------------------------------------------- what stages would meet
def study_inputs(P) -> list[str]:
    """Problems a stage would only meet later: unknown corpus names, prompts without their
    placeholders, an embedded llm.model that cannot be served."""
    from . import corpora, embedded, models, prompts

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
        from . import miti

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
        if m != embedded.NAME and m not in models.NAMES and not params_mod.path(m).is_dir():
            errs.append(
                f"llm.model: {m!r} cannot be served embedded: name the embedded model "
                f"{embedded.NAME!r}, a registry model {models.NAMES} or a local model folder, "
                "or set llm.provider: remote"
            )
    return errs


def defaults_used(params_file: str) -> list[str]:
    """The documented defaults a params file relies on (missing sections and keys); [] if unreadable."""
    try:
        return params_mod.defaults_used(params_mod.read_yaml(params_file))
    except params_mod.ParamsError:
        return []
