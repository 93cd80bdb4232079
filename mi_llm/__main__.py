"""The mi-llm command line.

  python -m mi_llm run params/smoke.yaml [--only 01] [--set quality.top_k=3] [--check]
  python -m mi_llm check params/*.yaml          python -m mi_llm dryrun [params/paper-dryrun.yaml]
  python -m mi_llm data list|fetch              python -m mi_llm chat runs/<name>

Every command checks what it is given before it starts anything; a mistake is one paragraph on
stderr (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

EXAMPLES = """examples:
  python -m mi_llm run params/smoke.yaml
  python -m mi_llm run params/smoke.yaml --set quality.top_k=3 --set evaluation.max_rounds=null
  python -m mi_llm check params/*.yaml
  python -m mi_llm dryrun
  python -m mi_llm chat smoke --variant base"""


def add_models(sub) -> None:
    """`models list|fetch`: the hub models' weights, pinned to a commit on their first fetch."""

    def run(a) -> int:
        from mi_llm.models import hub

        return hub.cli(a)

    m = sub.add_parser("models", help="the paper models' weights: list them, fetch and pin them")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="each model: hub id, pinned commit, size, fetched or not")
    mf = msub.add_parser(
        "fetch", help="download, verify and pin models (all hub models by default)"
    )
    mf.add_argument("names", nargs="*", metavar="NAME", help="registry names (see models list)")
    mf.add_argument("--params", help="fetch the hub models that this params file trains/evaluates")
    mf.add_argument("--no-progress", action="store_true", help="no download progress bars")
    m.set_defaults(func=run)


def add_plan(sub) -> None:
    """`plan params/X.yaml`: requests, tokens, API cost and GPU hours, estimated before a run."""

    def run(a) -> int:
        from mi_llm.study import plan

        return plan.cli(a.params, gpu_results=a.gpu_results)

    p = sub.add_parser("plan", help="estimate a run's requests, tokens, API cost and GPU hours")
    p.add_argument("params", help="params/<name>.yaml")
    p.add_argument(
        "--gpu-results",
        help="a GPU check's benchmarks/results/gpu-*.json (default: the newest one there)",
    )
    p.set_defaults(func=run)


class Help(argparse.HelpFormatter):
    """Help text with each option's default (unless it is none, off or already said)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


class UserError(Exception):
    """A mistake in what the user asked for: printed as one paragraph, no traceback."""


def _fail(message: str) -> int:
    print(f"[mi_llm] {message}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- run, dryrun, check
def _add_study_options(p) -> None:
    p.add_argument(
        "--only",
        nargs="+",
        metavar="STAGE",
        help="run only these stages, by number or name (e.g. 01 03_sft); default: all five",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one key for this run (dotted key, YAML value: quality.top_k=3, "
        "evaluation.max_rounds=null); repeatable; validated like the file and recorded in "
        "runs/<name>/provenance.json",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (one line per finished stage still)",
    )


def cmd_run(a) -> int:
    """`run` (or `dryrun`): every check, then the stages; --check stops after the checks."""
    from mi_llm.study import runner

    if getattr(a, "check", False):
        return _report([a.params], a.overrides, environment=True)
    _notes(a.params)
    runner.run(
        a.params,
        only=a.only,
        progress=not a.no_progress,
        overrides=a.overrides,
        dry_run=a.cmd == "dryrun",
    )
    if a.cmd == "dryrun":
        from mi_llm.study import dryrun

        print(dryrun.NEXT_ON_GPU, flush=True)
    return 0


def cmd_check(a) -> int:
    return _report(a.params, a.overrides, environment=not a.recipe_only)


def _report(files, overrides, environment: bool) -> int:
    """Print each file's problems (or ok), its notes and the defaults it relies on."""
    from mi_llm.study import check

    bad = 0
    for f in files:
        errs = check.check(f, overrides, environment)
        bad += bool(errs)
        print(f"{f}: " + ("ok" if not errs else "\n  - " + "\n  - ".join(errs)))
        _notes(f, listing=True)
        for line in check.defaults_used(f):
            print(f"  default used: {line}")
    return 1 if bad else 0


def _notes(params_file: str, listing: bool = False) -> None:
    """A copied recipe's name note: in a check's listing, or on stderr before a run."""
    from mi_llm import params

    note = params.name_note(params_file)
    if note and listing:
        print(f"  note: {note}")
    elif note:
        print(f"[mi_llm] note: {note}", file=sys.stderr)


def cmd_sync(a) -> int:
    from mi_llm.study import runner

    for nb in runner.sync_parameters(a.params):
        print(f"updated {nb}")
    return 0


# ----------------------------------------------------------------------------- data
def cmd_data(a) -> int:
    from mi_llm.data import fetch, sources
    from mi_llm.params_rules import did_you_mean

    for name in getattr(a, "names", None) or []:
        if name not in sources.SOURCES:
            raise UserError(
                f"data fetch: no corpus {name!r}{did_you_mean(name, sources.SOURCES)}; "
                f"corpora: {', '.join(sources.SOURCES)} (`python -m mi_llm data list`)"
            )
    return fetch.cli(a)


# ----------------------------------------------------------------------------- chat
def run_folder(arg: str):
    """The run folder a chat or code-sessions argument names: a path, or a run's name."""
    from pathlib import Path

    from mi_llm.params import runs_root
    from mi_llm.params_rules import did_you_mean

    folder = Path(arg)
    if not folder.is_dir() and (runs_root() / arg).is_dir():
        folder = runs_root() / arg
    if not (folder / "provenance.json").exists():
        runs = sorted(f.parent.name for f in runs_root().glob("*/provenance.json"))
        what = "no such folder" if not folder.is_dir() else "not a run folder (no provenance.json)"
        raise UserError(
            f"{arg}: {what}{did_you_mean(folder.name, runs)}; runs here: "
            f"{', '.join(runs) or 'none yet (python -m mi_llm run params/smoke.yaml)'}"
        )
    return folder


def cmd_chat(a) -> int:
    from mi_llm.chat import guard, safety, serving, web
    from mi_llm.data.schema import DataError
    from mi_llm.params import ParamsError
    from mi_llm.params_rules import did_you_mean

    folder = run_folder(a.run)
    try:
        P = serving.run_params(folder)
        served = P.evaluation.models or P.sft.models
        if a.model and a.model not in served:
            raise UserError(
                f"--model {a.model!r}: the run {folder} evaluated {served}"
                f"{did_you_mean(a.model, served)}"
            )
        if a.variant == "conditioned" and a.backend:
            raise UserError(
                "--variant conditioned is generated in this process (its reply starts with the "
                "behaviour tag, which an OpenAI endpoint cannot prefill); drop --backend"
            )
        cfg = safety.referral_config(a.referral)
        for lang in ("en", "zh"):
            safety.referral(lang, a.country, cfg)
    except (DataError, ParamsError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    except ValueError as e:  # the referral: an unknown country or placeholder
        raise UserError(f"--country/--referral: {e}") from None
    try:
        token = guard.token_from_env(a.token)
    except ValueError as e:  # too short to guard anything
        raise UserError(str(e)) from None
    try:
        web.main(
            str(folder),
            a.model,
            a.variant,
            a.port,
            on_crisis=a.on_crisis,
            country=a.country,
            referral_file=a.referral,
            backend_url=a.backend,
            backend_model=a.backend_model,
            token=token,
            no_repeat_ngram=a.no_repeat_ngram,
        )
    except (DataError, FileNotFoundError) as e:  # e.g. no adapter yet: stage 03 has not run
        raise UserError(str(e)) from None
    return 0


def cmd_code_sessions(a) -> int:
    from pathlib import Path

    from mi_llm.chat import sessions
    from mi_llm.data.schema import DataError

    folder = Path(a.folder)
    if not folder.is_dir() and folder.name != "chat":  # a run's name or folder: its chat folder
        folder = run_folder(a.folder) / "chat"
    if not folder.is_dir():
        raise UserError(f"{a.folder}: no such folder (a run's chat folder, runs/<name>/chat)")
    run_folder(str(folder.parent))  # the run the sessions belong to (its params and models)
    try:
        sessions.main(str(folder), a.out)
    except (DataError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    return 0


# ----------------------------------------------------------------------------- the parser
def parser() -> argparse.ArgumentParser:
    fmt = Help
    ap = argparse.ArgumentParser(
        prog="python -m mi_llm",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser(
        "run", help="run the study's notebooks for a params file", formatter_class=fmt
    )
    r.add_argument("params", help="the recipe, params/<name>.yaml; the run is runs/<name>/")
    _add_study_options(r)
    r.add_argument(
        "--check", action="store_true", help="only check the params file (as `check`); run nothing"
    )
    r.set_defaults(func=cmd_run)

    c = sub.add_parser(
        "check", help="check params files without running anything", formatter_class=fmt
    )
    c.add_argument("params", nargs="+", help="params files (e.g. params/*.yaml)")
    c.add_argument(
        "--recipe-only",
        action="store_true",
        help="check the recipes alone, not this machine's data, model folders and API key",
    )
    c.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="check with this key changed, as `run --set` would run (repeatable)",
    )
    c.set_defaults(func=cmd_check)

    d = sub.add_parser(
        "dryrun",
        help="rehearse a paper recipe on CPU with local stand-ins (mi_llm.study.dryrun)",
        formatter_class=fmt,
    )
    d.add_argument("params", nargs="?", default="params/paper-dryrun.yaml", help="a dry-run recipe")
    _add_study_options(d)
    d.set_defaults(func=cmd_run)

    s = sub.add_parser(
        "sync-notebooks",
        help="rewrite the notebooks' parameters cells from a params file",
        formatter_class=fmt,
    )
    s.add_argument("params", nargs="?", default="params/smoke.yaml", help="the params file")
    s.set_defaults(func=cmd_sync)

    dp = sub.add_parser("data", help="the full corpora: list their pinned sources, fetch them")
    dsub = dp.add_subparsers(dest="data_cmd", required=True, metavar="ACTION")
    dl = dsub.add_parser(
        "list", help="each corpus's source, revision, files, sha256, license", formatter_class=fmt
    )
    dl.add_argument("--dest", default="data/full", help="download folder (for the paths shown)")
    df = dsub.add_parser(
        "fetch", help="download, verify and pin corpora (all by default)", formatter_class=fmt
    )
    df.add_argument("names", nargs="*", metavar="NAME", help="corpora to fetch (data list)")
    df.add_argument("--dest", default="data/full", help="download folder")
    dp.set_defaults(func=cmd_data)

    _add_chat(sub, fmt)
    cs = sub.add_parser(
        "code-sessions",
        help="MITI-code saved chat sessions; client change/sustain talk",
        formatter_class=fmt,
    )
    cs.add_argument("folder", help="a run's chat folder (runs/<name>/chat) or the run's name")
    cs.add_argument("--out", help="output folder (default: <folder>/coded)")
    cs.set_defaults(func=cmd_code_sessions)
    return ap


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _add_chat(sub, fmt) -> None:
    from mi_llm.chat.serving import NO_REPEAT_NGRAM

    ch = sub.add_parser(
        "chat",
        help="serve a run's model (OpenAI endpoint + chat page, crisis-screened)",
        formatter_class=fmt,
    )
    ch.add_argument("run", help="the run: its folder (runs/<name>) or its name")
    ch.add_argument("--model", help="registry name (default: the run's first evaluated model)")
    ch.add_argument(
        "--variant",
        default="finetuned",
        choices=["base", "finetuned", "conditioned"],
        help="base: the model as published; finetuned: + the run's LoRA adapter; conditioned: "
        "+ the adapter, each reply begun with an MI behaviour tag",
    )
    ch.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1")
    ch.add_argument(
        "--country",
        help="crisis line of this country (CN, US, UK or one in --referral); default: CN for "
        "Chinese messages, US for English ones",
    )
    ch.add_argument("--referral", help="YAML/JSON overriding the referral replies and hotlines")
    ch.add_argument(
        "--on-crisis",
        default="refer",
        choices=["refer", "refer_then_reply"],
        help="refer: a flagged message gets the fixed referral only; refer_then_reply: the "
        "referral, then the model's reply",
    )
    ch.add_argument(
        "--backend", help="an OpenAI-compatible server already serving the model (e.g. vLLM)"
    )
    ch.add_argument(
        "--backend-model", help="the model name the backend expects (e.g. vLLM's LoRA module)"
    )
    ch.add_argument(
        "--token", help="ask every request for this bearer token (or set $MI_LLM_CHAT_TOKEN)"
    )
    ch.add_argument(
        "--no-repeat-ngram",
        type=_non_negative,
        default=NO_REPEAT_NGRAM,
        metavar="N",
        help="stop repetition loops: no span of N tokens appears twice in the conversation "
        "(transformers' no_repeat_ngram_size, applied as the reply is generated; 0: off)",
    )
    ch.set_defaults(func=cmd_chat)
    add_models(sub)
    add_plan(sub)


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mi_llm.params import ParamsError

    try:
        return a.func(a)
    except (UserError, ParamsError) as e:  # one paragraph naming the file and key, no traceback
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
