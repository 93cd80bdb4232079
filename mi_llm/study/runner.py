"""The study runner: execute the numbered notebooks of a run, in order, with papermill."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat

from mi_llm import params as params_mod
from mi_llm import stages as stages_mod
from mi_llm.params import ROOT
from mi_llm.study import progress as progress_mod

NOTEBOOKS = ROOT / "notebooks"


def stages() -> list[Path]:
    """The numbered notebooks (NN_name.ipynb) in order."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def select(only: list[str] | None) -> list[Path]:
    """Stages whose number or name matches one of `only` (all when None)."""
    all_ = stages()
    if not only:
        return all_

    def hit(nb, o):
        return nb.stem == o or nb.stem.startswith(f"{o}_") or nb.stem[:2] == o.zfill(2)

    unknown = [o for o in only if not any(hit(nb, o) for nb in all_)]
    if unknown:  # every name must match: a typo never silently drops a stage
        raise SystemExit(
            f"[mi_llm] --only {' '.join(unknown)}: no such stage; stages are "
            f"{', '.join(nb.stem for nb in all_)}"
        )
    chosen = [nb for nb in all_ if any(hit(nb, o) for o in only)]
    return chosen


class Refused(params_mod.ParamsError):
    """A run refused before anything started; the message lists every problem."""


def preflight(params_file: str, overrides=(), dry_run: bool = False):
    """The validated params of a run, after every check of `python -m mi_llm check`; raises
    Refused listing every problem (nothing started, no run folder made)."""
    from mi_llm import runs
    from mi_llm.study import check

    try:  # a run of the same name in progress stops this one at once, before the checks
        runs.ensure_free(params_mod.load(params_file, overrides).run_dir)
    except params_mod.ParamsError:
        pass  # reported with every other problem below
    except runs.AlreadyRunning as e:
        raise SystemExit(f"[mi_llm] {e}") from None
    P, errs = check.problems(params_file, overrides, dry_run=dry_run)
    if P is None:  # the file itself: one line naming it (and line:column of a YAML error)
        raise Refused(errs[0])
    if check.is_dryrun(P) and not dry_run:
        raise Refused(
            f"{params_file} is a dry-run recipe: its endpoint is the local stand-in and its key "
            f"${check.DRYRUN_KEY_ENV} is set only by the dry run, which also writes its tiny "
            f"checkpoints. Run it with `python -m mi_llm dryrun {params_file}`."
        )
    if errs:
        n = f"{len(errs)} problem{'s' if len(errs) > 1 else ''}"
        raise Refused(f"{params_file}: {n}; nothing was started:\n  - " + "\n  - ".join(errs))
    return P


def run(
    params_file: str,
    only: list[str] | None = None,
    progress: bool = True,
    overrides=(),
    dry_run: bool = False,
) -> Path:
    """Execute the stages for a params file into runs/<name>/notebooks/; stop at the first failure.

    Every check runs first (preflight), so a mistake stops the run before a kernel starts or the
    run folder is made. overrides: `KEY=VALUE` strings (`--set`), recorded in provenance.json.
    dry_run: the stages run against the local stand-in and tiny checkpoints (mi_llm.study.dryrun).
    """
    only_ = select(only)  # an unknown stage is refused before anything starts, too
    P = preflight(params_file, overrides, dry_run)
    if not dry_run:
        return _locked(P, params_file, only_, progress, overrides)
    from mi_llm.study import dryrun

    with dryrun.standins(P) as url:
        print(f"[mi_llm] stand-in model at {url}; tiny checkpoints written", flush=True)
        return _locked(P, params_file, only_, progress, overrides)


def _locked(P, params_file: str, todo: list[Path], progress: bool, overrides) -> Path:
    from mi_llm import runs

    try:  # one run of a name at a time: a second one stops here, before any stage or API call
        with runs.lock(P.run_dir):
            runs.record_recipe(P, params_file, overrides)
            return _run(P, todo, progress)
    except runs.AlreadyRunning as e:
        raise SystemExit(f"[mi_llm] {e}") from None


def _run(P, todo: list[Path], progress: bool) -> Path:
    import papermill as pm
    from tqdm.auto import tqdm

    # the validated params with every default filled in, never the raw YAML: a key the file leaves
    # out gets its documented default (mi_llm/params.py), not the parameters cell's smoke value
    values = P.to_dict()
    out_dir = P.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = progress_mod.kernel_options(P.run_dir, progress)  # IPC; bars to this terminal
    bar = tqdm(todo, desc=f"study {P.name}", unit="stage", disable=not progress, file=sys.stdout)
    for nb in bar:
        bar.set_postfix_str(nb.stem)
        out = out_dir / nb.name
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb),
                str(out),
                parameters=values,
                cwd=str(ROOT),
                kernel_name="python3",
                progress_bar=False,
                log_output=False,
                request_save_on_cell_execute=True,
                **kernel,
            )
        except pm.PapermillExecutionError as e:
            bar.close()
            msg = (
                f"\n[mi_llm] stage {nb.stem} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                f"[mi_llm] the partly executed notebook is {_rel(out)}\n"
            )
            sys.stderr.write(msg)
            raise SystemExit(1) from None
        if nb.stem in stages_mod.STAGES:  # its declared products, or a loud stop naming them
            try:
                stages_mod.check_writes(nb.stem, P.run_dir, P)
            except stages_mod.MissingProduct as e:
                bar.close()
                sys.stderr.write(f"\n[mi_llm] {e}\n[mi_llm] the executed notebook is {_rel(out)}\n")
                raise SystemExit(1) from None
        tqdm.write(f"[mi_llm] {nb.stem} done in {time.perf_counter() - t0:.0f} s -> {_rel(out)}")
    if logged := progress_mod.warnings_summary(P.run_dir):
        tqdm.write(f"[mi_llm] {logged}")
    index = P.run_dir / "report" / "index.html"  # built once, by the last notebook (05)
    if P.figures.report and todo[-1] == stages()[-1] and index.exists():
        tqdm.write(f"[mi_llm] report -> {_rel(index)}")
    return P.run_dir


def _rel(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


# ----------------------------------------------------------------------------- parameters cells
def parameters_source(params_file: str = "params/smoke.yaml") -> str:
    """The source of a notebook parameters cell holding a params file's values as literals."""
    P = params_mod.load(params_file)
    d = P.to_dict()
    lines = [
        "# Parameters (papermill): the smoke defaults; a run's params file replaces them.",
        "# Every key is documented in mi_llm/params.py.",
    ]
    for key in params_mod.SECTIONS:
        lines.append(f"{key} = {d[key]!r}")
    return "\n".join(lines)


def parameters_cell(nb) -> nbformat.NotebookNode:
    """The cell tagged `parameters` of a notebook."""
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    raise ValueError("notebook has no cell tagged 'parameters'")


def sync_parameters(params_file: str = "params/smoke.yaml") -> list[Path]:
    """Rewrite every notebook's parameters cell from the smoke params (keeps them in sync)."""
    src = parameters_source(params_file)
    changed = []
    for nb_path in stages():
        nb = nbformat.read(nb_path, as_version=4)
        cell = parameters_cell(nb)
        if cell.source != src:
            cell.source = src
            nbformat.write(nb, nb_path)
            changed.append(nb_path)
    return changed
