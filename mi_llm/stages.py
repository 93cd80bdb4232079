"""Declared stages: what each stage reads and writes, once, relative to the run folder.

As ploomber declares a task's upstream and product, STAGES names every artifact of a run
(runs/<name>/...) with the stage that writes it and the stages that read it. Producers and readers
take their file names from here; runs.start_stage hashes a stage's declared reads into provenance;
the study runner checks after each notebook that its declared writes exist and stops, naming the
missing file and the stage, when one does not. An optional artifact is one a stage writes only
with some params (MITI coding enabled, a conditioned variant, the HTML report) or reads only when
it is there. "{model}" in a path stands for each model of the params list `models` names (or for
every model folder there is, where `models` is None).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# ----------------------------------------------------------------------------- artifact names
QUALITY = "01_corpus_quality/quality.csv"
JUDGEMENTS = "01_corpus_quality/judgements.jsonl"
TRAIN = "02_mi_transcription/train.jsonl"
TEST = "02_mi_transcription/test.jsonl"
FAILURES = "02_mi_transcription/failures.jsonl"
MI_CORPUS = "02_mi_transcription/mi_corpus"  # datasets.save_to_disk folder
TRANSCRIPTION_REPORT = "02_mi_transcription/report.json"
ADAPTER = "03_sft/{model}/adapter"
TRAIN_LOG = "03_sft/{model}/train_log.csv"
SFT_REPORT = "03_sft/{model}/report.json"
GENERATIONS = "04_evaluation/generations.jsonl"
METRICS = "04_evaluation/metrics.csv"
PAIRED_TESTS = "04_evaluation/paired_tests.csv"
PAIRED_TESTS_CONDITIONED = "04_evaluation/paired_tests_conditioned.csv"
THERAPY_METRICS = "04_evaluation/therapy_metrics.csv"
MITI_CODES = "04_evaluation/miti_codes.jsonl"
MITI_CHECK_CODES = "04_evaluation/miti_check_codes.jsonl"
MITI_DIALOGUES = "04_evaluation/miti_dialogues.csv"
MITI_SUMMARY = "04_evaluation/miti_summary.csv"
CODER_AGREEMENT = "04_evaluation/coder_agreement.csv"
CODER_CONFUSION = "04_evaluation/coder_confusion.csv"
FORECASTER = "04_evaluation/forecaster.csv"
FORECASTER_MODEL = "04_evaluation/forecaster.joblib"
FORECASTER_SPLIT = "04_evaluation/forecaster_split.json"
CRISIS_REPLIES = "04_evaluation/crisis_replies.csv"
CRISIS_FLAGGED = "04_evaluation/crisis_flagged.csv"
FIGURES = "05_figures"  # every figure and its table (figures.make)
REPORT = "report/index.html"


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the run folder
    optional: bool = False
    models: str | None = None  # params list filling "{model}": "sft.models", "evaluation.models"


def _opt(path: str, models: str | None = None) -> Artifact:
    return Artifact(path, optional=True, models=models)


def _req(path: str, models: str | None = None) -> Artifact:
    return Artifact(path, optional=False, models=models)


@dataclass(frozen=True)
class Stage:
    name: str  # = the notebook's stem, notebooks/<name>.ipynb
    reads: tuple[Artifact, ...]
    writes: tuple[Artifact, ...]


_EXECUTED = "notebooks/{stage}.ipynb"  # the executed notebook is a product of every stage

STAGES = {
    s.name: s
    for s in [
        # 01 reads the corpora (params corpora.sources), outside the run folder
        Stage("01_corpus_quality", (), (_req(QUALITY), _req(JUDGEMENTS))),
        Stage(
            "02_mi_transcription",
            (_req(QUALITY),),
            (_req(TRAIN), _req(TEST), _req(FAILURES), _req(MI_CORPUS), _req(TRANSCRIPTION_REPORT)),
        ),
        Stage(
            "03_sft",
            (_req(TRAIN),),
            (
                _req(ADAPTER, "sft.models"),
                _req(TRAIN_LOG, "sft.models"),
                _req(SFT_REPORT, "sft.models"),
            ),
        ),
        Stage(
            "04_evaluation",
            (_req(TEST), _opt(ADAPTER, "evaluation.models")),  # adapters: finetuned variants only
            (
                _req(GENERATIONS),
                _req(METRICS),
                _req(PAIRED_TESTS),
                _opt(PAIRED_TESTS_CONDITIONED),  # with the conditioned variant
                _req(THERAPY_METRICS),
                *(  # evaluation.miti.enabled
                    _opt(f)
                    for f in (
                        MITI_CODES,
                        MITI_CHECK_CODES,
                        MITI_DIALOGUES,
                        MITI_SUMMARY,
                        CODER_AGREEMENT,
                        CODER_CONFUSION,
                    )
                ),
                _opt(FORECASTER),  # evaluation.forecaster.enabled
                _opt(FORECASTER_MODEL),
                _opt(FORECASTER_SPLIT),
                _req(CRISIS_REPLIES),
                _req(CRISIS_FLAGGED),
            ),
        ),
        Stage(  # a figure whose artifact is missing is skipped (stages may run selectively)
            "05_figures",
            tuple(
                _opt(f)
                for f in (
                    QUALITY,
                    JUDGEMENTS,
                    TRANSCRIPTION_REPORT,
                    TRAIN_LOG,
                    METRICS,
                    THERAPY_METRICS,
                    MITI_SUMMARY,
                    MITI_CODES,
                    FORECASTER,
                )
            ),
            (_opt(FIGURES), _opt(REPORT)),  # no figure when no artifact; report: figures.report
        ),
    ]
}


class MissingProduct(RuntimeError):
    """A stage finished without writing an artifact it declares; names the file and the stage."""


def get(stage: str) -> Stage:
    """The declared stage of this name; unknown names are errors."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; declared stages: {list(STAGES)}")
    return STAGES[stage]


def file_name(rel: str) -> str:
    """The file name of an artifact within its stage folder (quality.csv)."""
    return Path(rel).name


def _models(p, spec: str | None) -> list[str] | None:
    if spec is None or p is None:
        return None
    section, key = spec.split(".")
    return list(getattr(getattr(p, section), key))


def expand(run_dir, a: Artifact, p=None) -> list[Path]:
    """The paths an artifact stands for in a run folder: one, or one per model."""
    run_dir = Path(run_dir)
    if "{model}" not in a.path:
        return [run_dir / a.path]
    models = _models(p, a.models)
    if models is None:  # every model folder there is
        return sorted(run_dir.glob(a.path.format(model="*")))
    return [run_dir / a.path.format(model=m) for m in models]


def reads(stage: str, run_dir, p=None) -> list[Path]:
    """The declared reads of a stage that exist in the run folder (for provenance)."""
    return [f for a in get(stage).reads for f in expand(run_dir, a, p) if f.exists()]


def missing_writes(stage: str, run_dir, p=None) -> list[Path]:
    """The declared, non-optional writes of a stage that are not in the run folder."""
    s = get(stage)
    todo = [*s.writes, _req(_EXECUTED.format(stage=stage))]
    return [f for a in todo if not a.optional for f in expand(run_dir, a, p) if not f.exists()]


def check_writes(stage: str, run_dir, p=None) -> None:
    """Raise MissingProduct naming each declared write of the stage that is missing."""
    missing = missing_writes(stage, run_dir, p)
    if missing:
        names = ", ".join(str(f) for f in missing)
        raise MissingProduct(f"stage {stage} finished without writing its declared {names}")
