"""`--check`: validate a params file without running anything."""

from __future__ import annotations

import os

from . import params as params_mod


def check(params_file: str) -> list[str]:
    """All problems found in a params file (empty when it is sound)."""
    try:
        p = params_mod.load(params_file)
    except params_mod.ParamsError as e:
        return [str(e)]
    from . import models, sft

    errs = sft.check_params(p)
    for name in p.evaluation.models:
        if name not in models.NAMES:
            errs.append(f"evaluation.models: unknown model {name!r}; known models: {models.NAMES}")
    for name, folder in p.model_paths.items():
        if not params_mod.path(folder).exists():
            errs.append(f"model_paths.{name}: folder {folder} does not exist")
    for name, src in p.corpora.sources.items():
        if not params_mod.path(src).exists():
            errs.append(f"corpora.sources.{name}: path {src} does not exist")
    if p.llm.provider == "remote" and not os.environ.get(p.llm.api_key_env):
        errs.append(f"llm: provider is remote but ${p.llm.api_key_env} is not set")
    return errs
