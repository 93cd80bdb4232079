"""A smoke run says so: the note that the report and every figure of such a run carry.

A smoke run is one whose fine-tuned or evaluated models, or whose LLM judge, transcriber and MITI
coder, are the embedded default (mi_llm.models.registry entries marked embedded), read from the
params recorded in the run's provenance.json.
"""

from __future__ import annotations

import re
from pathlib import Path

from mi_llm import stages


def note(run_dir) -> str | None:
    """ "smoke run: 270M model, n = …; the numbers test the pipeline, not the method" for a run whose
    fine-tuned models or LLM judge are the embedded default (from provenance.json's params), with
    the numbers of stage 02's train and test dialogues; None for any other run."""
    import json

    from mi_llm.models import registry

    prov = Path(run_dir) / "provenance.json"
    p = json.loads(prov.read_text(encoding="utf-8")).get("params", {}) if prov.exists() else {}
    if not p:
        return None
    small = {n for n, s in registry.REGISTRY.items() if s.embedded}
    llm = p.get("llm", {})
    models = {*p.get("sft", {}).get("models", []), *p.get("evaluation", {}).get("models", [])}
    judge = llm.get("model") if llm.get("provider") in ("embedded", "serve") else None
    used = sorted((models | {judge}) & small)
    if not used:
        return None
    sizes = sorted({m.group(1).upper() for u in used if (m := re.search(r"-(\d+[mb])$", u))})
    model = f"{', '.join(sizes)} model" if sizes else f"{', '.join(used)} model"
    counts = [
        f"{sum(1 for line in f.open(encoding='utf-8') if line.strip())} {kind}"
        for kind, rel in (("train", stages.TRAIN), ("test", stages.TEST))
        if (f := Path(run_dir) / rel).exists()
    ]
    n = f"n = {' / '.join(counts)} dialogues" if counts else "n = no dialogues transcribed yet"
    return f"smoke run: {model}, {n}; the numbers test the pipeline, not the method"
