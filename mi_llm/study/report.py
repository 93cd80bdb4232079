"""Stage 05's report: a run's executed notebooks as HTML and one index page, in runs/<name>/report/.

The folder is self-contained (zip it, serve it, open it from disk): notebooks are rendered with
their images embedded, the figures, tables and provenance.json are copied in, and every link of
the index is relative. broken_links() checks that each local href/src of a page resolves.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pandas as pd

from mi_llm import stages
from mi_llm.study import figures, smoke

EXTERNAL = ("http:", "https:", "data:", "mailto:", "javascript:")
CSS = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:.2rem .5rem}th{background:#f3f3f3}
figure{margin:1.5rem 0;border-top:1px solid #ddd;padding-top:1rem}
figure img{max-width:100%;height:auto}figcaption{font-size:.9rem;margin:.4rem 0}
.muted{color:#666}#image-check{font-size:.85rem}
.smoke{background:#fff4d6;border:2px solid #d9a400;padding:.6rem 1rem;font-size:1.05rem}"""
IMAGE_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);
  const p = document.getElementById('image-check');
  p.dataset.broken = bad.length;
  p.textContent = bad.length
    ? `${bad.length} of ${imgs.length} images failed to load: ${bad.join(', ')}`
    : `all ${imgs.length} images loaded`;
});
</script>"""


def render_notebooks(run_dir, out_dir) -> list[Path]:
    """Render runs/<name>/notebooks/*.ipynb to out_dir/notebooks/<stem>.html, images embedded."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    dest = Path(out_dir) / "notebooks"
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for nb_file in sorted((Path(run_dir) / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(nb_file, as_version=4)
        _describe_images(nb, nb_file.stem)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": nb_file.stem}})
        out = dest / f"{nb_file.stem}.html"
        out.write_text(body, encoding="utf-8")
        written.append(out)
    return written


def _describe_images(nb, stem: str) -> None:
    """Give every PNG output of a notebook alternative text naming its stage, cell and the code that
    drew it (nbconvert's template writes <img> without alt): the PNG becomes an HTML <img>."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = [ln.strip() for ln in cell.source.splitlines() if ln.strip()]
        code = next((ln for ln in reversed(lines) if not ln.startswith("#")), "")
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if png is None:
                continue
            alt = f"{stem}, cell {cell.get('execution_count') or '?'}: a figure drawn by {code}"
            src = "".join(png.split()) if isinstance(png, str) else png
            out["data"] = {
                "text/html": f'<img src="data:image/png;base64,{src}" alt="{html.escape(alt)}">'
            }


def copy_figures(run_dir, out_dir) -> dict[str, list[Path]]:
    """Copy the run's figures and tables (runs/<name>/05_figures/) to out_dir/figures/."""
    src, dest = figures.stage_dir(run_dir), Path(out_dir) / "figures"
    (dest / "tables").mkdir(parents=True, exist_ok=True)
    copied = {}
    for name in figures.FIGURES:
        files = sorted(src.glob(f"{name}.*")) + sorted((src / "tables").glob(f"{name}.*"))
        for f in files:
            shutil.copy2(f, dest / f.relative_to(src))
        if files:
            copied[name] = [dest / f.relative_to(src) for f in files]
    return copied


def _table(rows, head) -> str:
    cells = "".join(
        f"<tr>{''.join(f'<td>{html.escape(str(c))}</td>' for c in r)}</tr>" for r in rows
    )
    return f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{cells}</table>"


def _stages_html(prov: dict, notebooks: list[Path], building: str | None = None) -> str:
    """Every stage of the study and every executed notebook: started, finished, wall time; a stage
    not run says so, and `building` (the stage that builds this report) says it is finishing."""
    recs = prov.get("stages", {})
    names = dict.fromkeys([*stages.STAGES, *recs, *(nb.stem for nb in notebooks)])
    pages = {nb.stem: f"notebooks/{nb.name}" for nb in notebooks}
    rows = []
    for s in sorted(names):
        rec = recs.get(s)
        link = f'<a href="{pages[s]}">{html.escape(s)}</a>' if s in pages else html.escape(s)
        if rec is None:
            done = "not run"
        elif rec.get("finished"):
            done = rec["finished"]
        elif s == building:
            done = "finishing: this report is its last step"
        else:
            done = "not finished (stopped or still running)"
        rows.append(
            f"<tr><td>{link}</td><td>{(rec or {}).get('started') or ''}</td>"
            f"<td>{done}</td><td>{(rec or {}).get('wall_s', '')}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ["stage (executed notebook)", "started (UTC)", "finished", "wall s"]
    )
    head = f"<tr>{head}</tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _caption(doc: str, table: pd.DataFrame | None) -> str:
    """The figure's caption, claiming confidence intervals only where its table has them."""
    if table is None or "ci_low" not in table or not re.search(r"\bCIs?\b", doc):
        return doc
    have = table["ci_low"].notna()
    if have.all():
        return doc
    if have.any():
        return re.sub(r"95% CIs?", "95% CIs where computed (see the table)", doc)
    doc = re.sub(r",?\s*(with\s+)?95% CIs?,?", ",", doc).strip(" ,")
    return f"{doc}; no confidence interval was computed (too few judged units; see the table)."


def _figure_html(name: str, files: list[Path], report_dir: Path) -> str:
    rel = {
        f.suffix.lstrip(".") + ("_table" if f.parent.name == "tables" else ""): f.relative_to(
            report_dir
        ).as_posix()
        for f in files
    }
    doc = " ".join((figures.FIGURES[name][1].__doc__ or name).split("\n\n")[0].split())
    df = pd.read_csv(report_dir / rel["csv_table"]) if "csv_table" in rel else None
    doc = _caption(doc, df)
    links = " · ".join(
        f'<a href="{rel[k]}">{t}</a>'
        for k, t in [
            ("pdf", "PDF"),
            ("png", "PNG"),
            ("csv_table", "table (CSV)"),
            ("md_table", "table (Markdown)"),
        ]
        if k in rel
    )
    img = f'<img src="{rel["png"]}" alt="{html.escape(doc)}">' if "png" in rel else ""
    table = ""
    if df is not None:
        more = f'<p class="muted">first 20 of {len(df)} rows</p>' if len(df) > 20 else ""
        rows = df.head(20).to_html(index=False, float_format="{:.3g}".format, border=0)
        table = f"<details><summary>table ({len(df)} rows)</summary>{rows}{more}</details>"
    return (
        f'<figure id="{name}">{img}<figcaption><b>{html.escape(name)}</b>: '
        f"{html.escape(doc)} ({links})</figcaption>{table}</figure>"
    )


def _fixtures_html(run_dir: Path) -> str:
    """A line naming the corpora of 01's quality.csv that are fixtures, or nothing."""
    q = run_dir / stages.QUALITY
    if not q.exists():
        return ""
    df = pd.read_csv(q)
    if "fixture" not in df:
        return ""
    names = df.loc[df["fixture"].astype(str).str.lower() == "true", "corpus"].tolist()
    if not names:
        return ""
    return (
        f'<p class="fixture"><b>Fixtures:</b> {html.escape(", ".join(names))} were written '
        "for this project in the published formats, not taken from the real corpora; their "
        "quality scores and ranks say nothing about the real corpora (hatched in the figures)."
        "</p>"
    )


def _model_facts(p: dict, run_dir: Path) -> list[tuple[str, str]]:
    """Provenance rows: the models fine-tuned and evaluated, the LLM endpoint, the sample sizes."""
    if not p:
        return []
    llm = p.get("llm", {})
    where = llm.get("base_url") or "" if llm.get("provider") == "remote" else "in process"
    sizes = []
    for label, rel in (("train dialogues", stages.TRAIN), ("test dialogues", stages.TEST)):
        f = run_dir / rel
        if f.exists():
            sizes.append((label, sum(1 for line in f.open(encoding="utf-8") if line.strip())))
    return [
        ("models fine-tuned", ", ".join(p.get("sft", {}).get("models", []))),
        ("models evaluated", ", ".join(p.get("evaluation", {}).get("models", []))),
        (
            "judge, transcriber, MITI coder",
            f"{llm.get('model', '')} ({llm.get('provider', '')}"
            + (f", {where})" if where else ")"),
        ),
        *sizes,
    ]


def index_html(run_dir, report_dir, notebooks: list[Path], made: dict[str, list[Path]]) -> str:
    """The index page: key facts, stages with wall times, every figure with its table, packages."""
    run_dir, report_dir = Path(run_dir), Path(report_dir)
    prov_file = run_dir / "provenance.json"
    prov = json.loads(prov_file.read_text(encoding="utf-8")) if prov_file.exists() else {}
    git = prov.get("git", {})
    facts = [
        ("run", prov.get("run", run_dir.name)),
        (
            "commit",
            f"{git.get('commit') or 'none (not a git checkout)'}"
            + (" (uncommitted changes)" if git.get("dirty") else ""),
        ),
        ("python", prov.get("python", "")),
        ("platform", prov.get("platform", "")),
        ("seed", prov.get("seeds", {}).get("seed", "")),
        *_model_facts(prov.get("params", {}), run_dir),
        ("input files hashed", len(prov.get("data_sha256", {}))),
    ]
    skipped = [n for n in figures.FIGURES if n not in made]
    note = smoke.note(run_dir)
    banner = (
        f'<p class="smoke" id="smoke"><b>{html.escape(note.split(":")[0].capitalize())}:</b>'
        f"{html.escape(note.split(':', 1)[1])}. Scores, rates and tests below check that every "
        "stage runs end to end; they are not findings about MI fine-tuning.</p>"
        if note
        else ""
    )
    packages = sorted(prov.get("packages", {}).items())
    prov_link = '<a href="provenance.json">provenance.json</a>' if prov else "no provenance.json"
    built = datetime.now(UTC).isoformat(timespec="seconds")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>MI-LLM study: run {html.escape(run_dir.name)}{" (smoke run)" if note else ""}</title><style>{CSS}</style></head><body>
<h1>MI-LLM study: run <code>{html.escape(run_dir.name)}</code></h1>
{banner}
<p class="muted">Report built {built} from runs/{html.escape(run_dir.name)}/ · {prov_link}</p>
<p id="image-check" class="muted">images not checked (JavaScript off)</p>
<h2>Provenance</h2>{_table(facts, ["fact", "value"])}
{_fixtures_html(run_dir)}
<h2>Stages</h2>{_stages_html(prov, notebooks, building=figures.STAGE)}
<h2>Figures</h2>
{"".join(_figure_html(n, made[n], report_dir) for n in figures.FIGURES if n in made)}
{f"<p>Not made in this run (artifact missing): {', '.join(skipped)}</p>" if skipped else ""}
<h2>Packages</h2>{_table(packages, ["package", "version"])}
{IMAGE_CHECK}</body></html>"""


def build(run_dir, out_dir=None) -> Path:
    """Render the notebooks, copy figures and provenance, write report/index.html; its path."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    for sub in ("notebooks", "figures"):  # generated wholesale: drop what an earlier build left
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    notebooks = render_notebooks(run_dir, out)
    made = copy_figures(run_dir, out)
    if (run_dir / "provenance.json").exists():
        shutil.copy2(run_dir / "provenance.json", out / "provenance.json")
    index = out / "index.html"
    index.write_text(index_html(run_dir, out, notebooks, made), encoding="utf-8")
    return index


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v and tag not in ("base",):
                self.targets.append(v)
            if k == "id" and v:
                self.ids.add(v)


def broken_links(html_file) -> list[str]:
    """Local href/src targets of an HTML page that resolve to no file (or no #id); [] when sound."""
    html_file = Path(html_file)
    parser = _Links()
    parser.feed(html_file.read_text(encoding="utf-8"))
    broken = []
    for t in parser.targets:
        if t.lower().startswith(EXTERNAL):
            continue  # external (CDN scripts of nbconvert's template); not part of the folder
        parts = urlsplit(t)
        if not parts.path:
            if parts.fragment and parts.fragment not in parser.ids:
                broken.append(t)
            continue
        if not (html_file.parent / unquote(parts.path)).exists():
            broken.append(t)
    return broken
