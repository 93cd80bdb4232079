"""Stage 04's writer: the reply metric tables and the MITI coding of the generations.

Notebook 04 computes the tables (mi_llm.eval.metrics, mi_llm.eval.therapy) and hands them here; the MITI part
codes generations.jsonl (mi_llm.eval.miti), exports blank worksheets and agreement (mi_llm.eval.worksheets).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd

from mi_llm import stages
from mi_llm.eval import miti, miti_check, miti_summary, worksheets
from mi_llm.llm import api, prompts
from mi_llm.params import path
from mi_llm.runs import atomic_path


def write_metrics(out_dir, table, paired, paired_conditioned, therapy_metrics) -> list[Path]:
    """metrics.csv, paired_tests.csv, paired_tests_conditioned.csv (when any), therapy_metrics.csv."""
    out_dir = Path(out_dir)
    files = [
        (table, stages.METRICS),
        (paired, stages.PAIRED_TESTS),
        (paired_conditioned, stages.PAIRED_TESTS_CONDITIONED),
        (therapy_metrics, stages.THERAPY_METRICS),
    ]
    written = []
    for df, name in files:
        if name == stages.PAIRED_TESTS_CONDITIONED and df.empty:
            continue  # no conditioned variant in this run
        with atomic_path(out_dir / stages.file_name(name)) as tmp:
            df.to_csv(tmp, index=False)
        written.append(out_dir / stages.file_name(name))
    return written


def write_miti(P, generations_path, out_dir, endpoint=None) -> dict:
    """Code stage 04's generations (utterance by utterance) and the coder-check samples; write
    miti_codes.jsonl (the generations), miti_check_codes.jsonl (AnnoMI and gold samples), miti_summary.csv,
    miti_dialogues.csv, coder_agreement.csv, coder_confusion.csv and blank worksheets/.

    Opens api.endpoint(P.llm) unless an endpoint is given.
    """
    cfg, out_dir = P.evaluation.miti, Path(out_dir)
    if not cfg.enabled:
        return {}
    units = miti.units_from_generations(generations_path, cfg.max_utterances)
    annomi = miti_check.read_annomi(path(cfg.annomi_path))
    check = miti_check.annomi_sample(annomi, cfg.annomi_sample, P.seed, cfg.context_turns)
    gold = (
        miti_check.gold_sample(miti_check.read_gold(path(cfg.gold_path)), cfg.gold_sample, P.seed)
        if cfg.gold_sample
        else []
    )
    opened = contextlib.nullcontext(endpoint) if endpoint is not None else api.endpoint(P.llm)
    with opened as ep:
        usage = miti.code_units(ep, units, P, cfg, rate_globals=cfg.rate_globals)
        usage_check = (
            miti.code_units(ep, check + gold, P, cfg, rate_globals=False) if check + gold else {}
        )
    version = prompts.name(cfg.prompt_version)
    miti.write_codes(units, out_dir / stages.file_name(stages.MITI_CODES), version)
    miti.write_codes(check + gold, out_dir / stages.file_name(stages.MITI_CHECK_CODES), version)
    per_dialogue = miti.dialogue_table(units)
    boot = P.evaluation.bootstrap
    summary = pd.concat(
        [
            miti_summary.group_summary(per_dialogue, "generated", boot, P.seed),
            miti_check.annomi_reference(annomi, boot, P.seed),
        ],
        ignore_index=True,
    )
    exported = worksheets.export(units, out_dir / "worksheets")
    rows, confusions = [], []
    for name, sample, to_label in [
        ("auto_vs_annomi", check, miti_check.coder_label),
        ("auto_vs_welivita_pu_gold", gold, miti.code_label),
        ("welivita_pu_classifier_vs_gold", miti_check.gold_baseline(gold), None),
    ]:
        if sample:
            row, cm = miti_check.coder_check(sample, name, to_label, cfg.check_bootstrap, P.seed)
            rows.append(row)
            confusions.append(cm)
    rows += worksheets.human_agreement(cfg.human_worksheets, units)
    agreement = pd.DataFrame(rows, columns=worksheets.AGREEMENT_COLUMNS)
    confusion = (
        pd.concat(confusions, ignore_index=True)
        if confusions
        else pd.DataFrame(columns=["comparison", "reference", "coder", "n"])
    )
    for df, name in (
        (per_dialogue, stages.file_name(stages.MITI_DIALOGUES)),
        (summary, stages.file_name(stages.MITI_SUMMARY)),
        (agreement, stages.file_name(stages.CODER_AGREEMENT)),
        (confusion, stages.file_name(stages.CODER_CONFUSION)),
    ):
        with atomic_path(out_dir / name) as tmp:
            df.to_csv(tmp, index=False)
    return {
        "summary": summary,
        "per_dialogue": per_dialogue,
        "agreement": agreement,
        "confusion": confusion,
        "usage": {"generations": usage, "coder_check": usage_check},
        "worksheets": exported,
    }
