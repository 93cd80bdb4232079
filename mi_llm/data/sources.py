"""Where the full corpora live: one pinned public source per corpus (`python -m mi_llm data list`).

Each Source names its host (`github`: a repository at a commit; `modelscope`: a ModelScope dataset;
`hub`: a Hugging Face Hub dataset), the revision, and its files with sha256 and size. A `File` with
`n_files` is a folder of a GitHub repository, taken from the repository's archive at the commit;
its sha256 is that of the folder's manifest (`tree_digest`: the `sha256sum` lines of its files,
sorted by path), so the same check reads:

    cd <folder> && find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum

Pins were read from the repositories themselves (their files at the commit). Where a revision or a
hash cannot be known before downloading (ModelScope serves a branch, its file list and bytes were
not reachable when this registry was written), the value is None and `data fetch` pins what it
downloaded in `<dest>/LOCK.json`; later fetches verify the same bytes. `loader` is the registry
name in mi_llm.data.corpora and `load_path` what `corpora.sources.<loader>` points at, relative to
`<dest>/<name>/`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_DEST = "data/full"


@dataclass(frozen=True)
class File:
    path: str  # in the source: repository path, ModelScope FilePath or Hub file name
    sha256: str | None  # the file's, or a folder's tree_digest; None: pinned in LOCK.json
    size: int | None  # bytes (a folder: of all its files); None: unknown before download
    n_files: int | None = None  # set for a folder taken from the repository archive


@dataclass(frozen=True)
class Source:
    name: str  # the corpus's name here (the loader's registry name where it has one)
    title: str
    kind: str  # github | modelscope | hub
    repo: str  # owner/name on that host
    revision: str | None  # commit; None: the host's default branch, bytes pinned in LOCK.json
    files: tuple[File, ...]  # empty: every file of the dataset matching `patterns` (listed)
    license: str
    page: str  # where a person reads about it
    loader: str | None = None
    load_path: str = "."
    patterns: tuple[str, ...] = ()  # with no files: which listed files to take
    note: str = ""

    @property
    def pinned(self) -> bool:
        """True when revision and every hash are known here (nothing goes to LOCK.json)."""
        return bool(self.revision and self.files and all(f.sha256 for f in self.files))


CPSYCOUN = "CAS-SIAT-XinHai/CPsyCoun"
CPSYCOUN_COMMIT = "1954f2e2d01d3b0f568e1673a525a6d3d9a34c03"
CPSYCOUN_LICENSE = File(
    "LICENSE", "7e7170e3cebf88a9f60c7b8421418323c09304da1af4d5e90f4da1dc1c8a2661", 18650
)

SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "cpsycound",
            "CPsyCounD (Zhang et al., Findings of ACL 2024)",
            "github",
            CPSYCOUN,
            CPSYCOUN_COMMIT,
            (
                File(
                    "CPsyCounD/Data",
                    "50f6ad7f73d421a1ce3439c933e4fc05dba17ea1355be9117b25049491c71a96",
                    7426482,
                    3084,
                ),
                CPSYCOUN_LICENSE,
            ),
            "CC BY 4.0",
            f"https://github.com/{CPSYCOUN}",
            "cpsycound",
            "CPsyCounD/Data",
            note="3,084 case files at this commit (the README counts 3,134 dialogues)",
        ),
        Source(
            "cpsycoune",
            "CPsyCounE (Zhang et al., Findings of ACL 2024)",
            "github",
            CPSYCOUN,
            CPSYCOUN_COMMIT,
            (
                File(
                    "CPsyCounE",
                    "211a7223a7f4e40f269625c9c209e5cf54ecf131216e8d5912c38dcd7b4e23a6",
                    116794,
                    46,
                ),
                CPSYCOUN_LICENSE,
            ),
            "CC BY 4.0",
            f"https://github.com/{CPSYCOUN}",
            "cpsycoune",
            "CPsyCounE",
            note="45 dialogues in 9 topic folders, and the folder's README.md",
        ),
        Source(
            "smilechat",
            "SmileChat (Qiu et al., Findings of EMNLP 2024)",
            "github",
            "qiuhuachuan/smile",
            "9f8afc0b126049e0e8797d3719991e316dccd705",
            (
                File(
                    "data",
                    "5b8713a3d9188b13ef1f82008cb0211ba91b040d0bb6eff07aa382a1d6926303",
                    465957243,
                    55165,
                ),
                File(
                    "LICENSE",
                    "a2010f343487d3f7618affe54f789f5487602331c0a8d03f49e9a7c547cf0499",
                    7048,
                ),
            ),
            "CC0 1.0 (seed Q&A turns may carry upstream terms: data/SmileChat/PROVENANCE.md)",
            "https://github.com/qiuhuachuan/smile",
            "smilechat",
            "data",
        ),
        Source(
            "psydtcorpus",
            "PsyDTCorpus (SoulChat2.0)",
            "modelscope",
            "YIRONGCHEN/PsyDTCorpus",
            None,
            (
                File("PsyDTCorpus_train_mulit_turn_packing.json", None, None),
                File("PsyDTCorpus_test_single_turn_split.json", None, None),
            ),
            "Apache-2.0 (github.com/scutcyr/SoulChat2.0; no separate dataset license seen)",
            "https://modelscope.cn/datasets/YIRONGCHEN/PsyDTCorpus",
            "psydtcorpus",
            "PsyDTCorpus_train_mulit_turn_packing.json",
            note="train: 4,760 dialogues, 86,054 turns ('mulit' sic); test: 240 dialogues",
        ),
        Source(
            "soulchatcorpus",
            "SoulChatCorpus (SoulChat 1.0)",
            "modelscope",
            "YIRONGCHEN/SoulChatCorpus",
            None,
            (),
            "Apache-2.0 repository, non-commercial research only (github.com/scutcyr/SoulChat)",
            "https://www.modelscope.cn/datasets/YIRONGCHEN/SoulChatCorpus",
            "soulchatcorpus",
            ".",
            patterns=("*.json", "*.jsonl"),
            note="258,354 multi-turn dialogues; file names read from the dataset's file list",
        ),
        Source(
            "annomi",
            "AnnoMI (Wu et al., ICASSP 2022; Future Internet 2023)",
            "github",
            "uccollab/AnnoMI",
            "42936645ec3857a9c84ab296a36a3c34b779ef49",
            (
                File(
                    "AnnoMI-simple.csv",
                    "b178db3b0b9858a0fa4ed670dabeccd63e975ba67e141d7ae16f2e8214f78e61",
                    2386609,
                ),
                File(
                    "AnnoMI-full.csv",
                    "3b60fec5e9d83cbb18ade0e412fb9afaef3b81724748a5d715f844bdd7432c9f",
                    3795371,
                ),
            ),
            "Public Domain per the authors' README of 2023-03-08, not restated since",
            "https://github.com/uccollab/AnnoMI",
            "annomi",
            ".",
        ),
        Source(
            "mi_gold",
            "MI Gold (Welivita & Pu, COLING 2022; test split via Findings of ACL 2023)",
            "github",
            "anuradha1992/Boosting-with-MI-Strategy",
            "5850f0756a232bcb14ecde5a62e5c81bf44be5ec",
            (
                File(
                    "Software/MI Classifier/output/mi_gold/test_output.csv",
                    "6a56d2ed369eae00b8f827e2a7bbe78d27f197598e422ae8a65e94a0565cf10e",
                    208356,
                ),
                File(
                    "Software/MI Classifier/ebp_labels.txt",
                    "bc68b2b5bd5d6cd7789160b747776381dfb912b43bcb0bcdb80ae5c8c923ee1f",
                    256,
                ),
                File("Data/MI Gold Dataset/MI_Dataset.csv", None, None),
            ),
            "CC BY-NC-SA 3.0 (non-commercial, share-alike)",
            "https://github.com/anuradha1992/Boosting-with-MI-Strategy",
            None,
            "Software/MI Classifier/output/mi_gold/test_output.csv",
            note="MI_Dataset.csv was not readable from here: its hash is pinned in LOCK.json",
        ),
    ]
}
NAMES = tuple(SOURCES)


def load_path(s: Source, dest: str = DEFAULT_DEST) -> str:
    """What corpora.sources points at for a fetched source, e.g. data/full/annomi."""
    return str(PurePosixPath(dest, s.name, s.load_path))


def tree_digest(folder: Path) -> tuple[str, int, int]:
    """(sha256 of the folder's sorted `sha256sum` manifest, number of files, total bytes)."""
    folder = Path(folder)
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix().encode(),
    )
    lines, total = [], 0
    for p in files:
        lines.append(f"{file_sha256(p)}  {p.relative_to(folder).as_posix()}\n")
        total += p.stat().st_size
    return hashlib.sha256("".join(lines).encode()).hexdigest(), len(files), total


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def describe(s: Source, dest: str = DEFAULT_DEST) -> str:
    """The `data list` text of one source."""
    where = {"github": "GitHub", "modelscope": "ModelScope dataset", "hub": "Hugging Face dataset"}
    rev = s.revision or "default branch, pinned by `data fetch` in LOCK.json"
    lines = [
        f"{s.name}: {s.title}",
        f"  source    {where[s.kind]} {s.repo} ({s.page})",
        f"  revision  {rev}",
        f"  license   {s.license}",
    ]
    if s.loader:
        lines.append(f"  read as   corpora.sources.{s.loader}: {load_path(s, dest)}")
    for f in s.files:
        what = f"folder, {f.n_files:,} files" if f.n_files else "file"
        sha = f.sha256 or "pinned in LOCK.json"
        lines.append(f"  - {f.path} ({what}, {_size(f.size)})\n      sha256 {sha}")
    if not s.files:
        lines.append(
            f"  - every {' / '.join(s.patterns)} file of the dataset (listed at fetch),"
            " sha256 pinned in LOCK.json"
        )
    if s.note:
        lines.append(f"  note      {s.note}")
    return "\n".join(lines)
