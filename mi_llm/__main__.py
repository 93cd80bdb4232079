"""Command line: `python -m mi_llm run params/smoke.yaml [--only 01] [--check]`, `python -m mi_llm dryrun`."""

from __future__ import annotations

import argparse
import os
import sys


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
    ch.add_argument(
        "--token", help="ask every request for this bearer token (or set $MI_LLM_CHAT_TOKEN)"
    )
    cs = sub.add_parser(
        "code-sessions", help="MITI-code saved chat sessions; client change/sustain talk"
    )
    cs.add_argument("folder", help="runs/<name>/chat")
    cs.add_argument("--out", help="output folder (default: <folder>/coded)")
    a = ap.parse_args(argv)
    if a.cmd == "chat":
        from mi_llm.chat import guard, web

        try:
            token = guard.token_from_env(a.token)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
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
            token=token,
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
