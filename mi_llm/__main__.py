"""Command line: `python -m mi_llm run params/smoke.yaml [--only 01] [--check]`, `python -m mi_llm dryrun`."""

from __future__ import annotations

import argparse
import os
import sys


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mi_llm", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute the study's notebooks for a params file")
    r.add_argument("params", help="params/<name>.yaml")
    r.add_argument(
        "--only", nargs="+", metavar="STAGE", help="stage numbers or names, e.g. 01 03_sft"
    )
    r.add_argument("--check", action="store_true", help="validate the params file and run nothing")
    r.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("check", help="validate params files without running anything")
    c.add_argument("params", nargs="+")
    d = sub.add_parser(
        "dryrun", help="run a dry-run params file with its local stand-ins (mi_llm.study.dryrun)"
    )
    d.add_argument("params", nargs="?", default="params/paper-dryrun.yaml")
    d.add_argument(
        "--only", nargs="+", metavar="STAGE", help="stage numbers or names, e.g. 01 03_sft"
    )
    d.add_argument("--no-progress", action="store_true")
    s = sub.add_parser(
        "sync-notebooks", help="rewrite notebook parameters cells from a params file"
    )
    s.add_argument("params", nargs="?", default="params/smoke.yaml")
    dp = sub.add_parser("data", help="the full corpora: list their pinned sources, fetch them")
    dsub = dp.add_subparsers(dest="data_cmd", required=True)
    dl = dsub.add_parser("list", help="each corpus's source, revision, files, sha256, license")
    dl.add_argument("--dest", default="data/full", help="download folder (for the paths shown)")
    df = dsub.add_parser("fetch", help="download, verify and pin corpora (all by default)")
    df.add_argument("names", nargs="*", metavar="NAME", help="corpora to fetch (data list)")
    df.add_argument("--dest", default="data/full", help="download folder (default data/full)")
    ch = sub.add_parser(
        "chat", help="serve a run's model (OpenAI endpoint + chat page, crisis-screened)"
    )
    ch.add_argument("run", help="runs/<name>")
    ch.add_argument("--model", help="registry name (default: the run's first evaluated model)")
    ch.add_argument("--variant", default="finetuned", choices=["base", "finetuned", "conditioned"])
    ch.add_argument("--port", type=int, default=8765)
    ch.add_argument(
        "--country", help="crisis line of this country (CN, US, UK or one in --referral)"
    )
    ch.add_argument("--referral", help="YAML/JSON overriding the referral replies and hotlines")
    ch.add_argument("--on-crisis", default="refer", choices=["refer", "refer_then_reply"])
    ch.add_argument(
        "--backend", help="an OpenAI-compatible server already serving the model (e.g. vLLM)"
    )
    ch.add_argument(
        "--backend-model", help="the model name the backend expects (e.g. vLLM's LoRA module)"
    )
    cs = sub.add_parser(
        "code-sessions", help="MITI-code saved chat sessions; client change/sustain talk"
    )
    cs.add_argument("folder", help="runs/<name>/chat")
    cs.add_argument("--out", help="output folder (default: <folder>/coded)")
    add_models(sub)
    add_plan(sub)
    a = ap.parse_args(argv)
    if getattr(a, "func", None):
        return a.func(a)
    if a.cmd == "chat":
        from mi_llm.chat import web

        web.main(
            a.run,
            a.model,
            a.variant,
            a.port,
            on_crisis=a.on_crisis,
            country=a.country,
            referral_file=a.referral,
            backend_url=a.backend,
            backend_model=a.backend_model,
        )
        return 0
    if a.cmd == "code-sessions":
        from mi_llm.chat import sessions

        sessions.main(a.folder, a.out)
        return 0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.cmd == "data":
        from mi_llm.data import fetch

        return fetch.cli(a)
    from mi_llm.study import check, runner

    if a.cmd == "check" or (a.cmd == "run" and a.check):
        files = a.params if a.cmd == "check" else [a.params]
        problems = {f: check.check(f) for f in files}
        for f, errs in problems.items():
            print(f"{f}: " + ("ok" if not errs else "\n  " + "\n  ".join(errs)))
            for line in check.defaults_used(f):
                print(f"  default used: {line}")
        return 1 if any(problems.values()) else 0
    if a.cmd == "sync-notebooks":
        for nb in runner.sync_parameters(a.params):
            print(f"updated {nb}")
        return 0
    from mi_llm.params import ParamsError
    from mi_llm.study import dryrun

    run_study = dryrun.run if a.cmd == "dryrun" else runner.run
    try:
        run_study(a.params, only=a.only, progress=not a.no_progress)
    except (
        ParamsError
    ) as e:  # one line naming the file (and line:column of a YAML error), no traceback
        print(f"[mi_llm] {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
