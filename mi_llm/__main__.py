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
    r.add_argument("--only", nargs="+", metavar="STAGE", help="stage numbers or names, e.g. 01 03_sft")
    r.add_argument("--check", action="store_true", help="validate the params file and run nothing")
    r.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("check", help="validate params files without running anything")
    c.add_argument("params", nargs="+")
    d = sub.add_parser("dryrun", help="run a dry-run params file with its local stand-ins (mi_llm.dryrun)")
    d.add_argument("params", nargs="?", default="params/paper-dryrun.yaml")
    d.add_argument("--only", nargs="+", metavar="STAGE", help="stage numbers or names, e.g. 01 03_sft")
    d.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("sync-notebooks", help="rewrite notebook parameters cells from a params file")
    s.add_argument("params", nargs="?", default="params/smoke.yaml")
    a = ap.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from . import check, study

    if a.cmd == "check" or (a.cmd == "run" and a.check):
        files = a.params if a.cmd == "check" else [a.params]
        problems = {f: check.check(f) for f in files}
        for f, errs in problems.items():
            print(f"{f}: " + ("ok" if not errs else "\n  " + "\n  ".join(errs)))
        return 1 if any(problems.values()) else 0
    if a.cmd == "sync-notebooks":
        for nb in study.sync_parameters(a.params):
            print(f"updated {nb}")
        return 0
    if a.cmd == "dryrun":
        from . import dryrun

        dryrun.run(a.params, only=a.only, progress=not a.no_progress)
        return 0
    study.run(a.params, only=a.only, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
