"""Versioned prompt files: mi_llm/prompts/<version>.md, split into `## <part>` sections.

A prompt version names a file shipped in the package (e.g. "mi_v1") or a path to your own .md file
(e.g. "my_prompts/mi_mine.md"): point `transcription.prompt_version` in a params file at it.
Placeholders are `{name}`, filled by render() in one pass (a value's own braces are never filled);
other braces are left alone. check() says which required placeholders a prompt file lacks.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from mi_llm.params import path as project_path

SECTION = re.compile(r"^## (\w+)\s*$", re.MULTILINE)
PLACEHOLDER = re.compile(r"\{(\w+)\}")
# the placeholders each use of a prompt must find in its section: (section, placeholders)
REQUIRED = {
    "transcription.dialogue": ("user", ("dialogue",)),
    "transcription.turn": ("user", ("context", "source", "next_client")),
    "quality": ("user", ("dialogue",)),
    "miti": ("code", ("context", "utterance")),
}


def load(version: str) -> str:
    """The text of a prompt version (package file <version>.md, or a path to a .md file)."""
    if version.endswith(".md"):
        p = project_path(version)
        if not p.exists():
            raise FileNotFoundError(f"prompt file {p} does not exist")
        return p.read_text(encoding="utf-8")
    res = files("mi_llm").joinpath("prompts", f"{version}.md")
    if not res.is_file():
        known = sorted(
            f.name[:-3]
            for f in files("mi_llm").joinpath("prompts").iterdir()
            if f.name.endswith(".md")
        )
        raise FileNotFoundError(f"prompt version {version!r} not found; known: {known}")
    return res.read_text(encoding="utf-8")


def parts(version: str) -> dict[str, str]:
    """The `## name` sections of a prompt version, name -> stripped text (text before the first is dropped)."""
    text = load(version)
    pieces = SECTION.split(text)
    out = {name: body.strip() for name, body in zip(pieces[1::2], pieces[2::2])}
    if not out:
        raise ValueError(f"prompt {version!r} has no '## <part>' sections")
    return out


def shots(parts_: dict[str, str], prefix: str = "") -> list[dict]:
    """Few-shot chat turns from the `<prefix>shotN_user` / `<prefix>shotN_assistant` sections, in order."""
    out, n = [], 1
    while f"{prefix}shot{n}_user" in parts_:
        out += [
            {"role": "user", "content": parts_[f"{prefix}shot{n}_user"]},
            {"role": "assistant", "content": parts_[f"{prefix}shot{n}_assistant"]},
        ]
        n += 1
    return out


def name(version: str) -> str:
    """The version's short name (file stem), recorded with every output it produced."""
    return Path(version).stem


def render(template: str, **values) -> str:
    """Fill `{name}` placeholders from values in one pass; other braces stay as they are.

    One pass: a value that itself contains `{source}` (a client quoting a template) is inserted as
    it is, never filled in turn.
    """
    return PLACEHOLDER.sub(
        lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template
    )


def check(version: str, use: str) -> list[str]:
    """Problems of a prompt version for one use (a key of REQUIRED): missing section or placeholders."""
    section, needed = REQUIRED[use]
    try:
        ps = parts(version)
    except (OSError, ValueError) as e:
        return [str(e)]
    if section not in ps:
        return [f"prompt {version!r} has no '## {section}' section (needed for {use})"]
    missing = [f"{{{n}}}" for n in needed if f"{{{n}}}" not in ps[section]]
    if missing:
        return [
            f"prompt {version!r}: section '## {section}' lacks placeholder(s) {missing} (needed for {use})"
        ]
    return []
