"""Read the fenced code blocks of a markdown page, with the directives written before them.

A directive is an HTML comment (invisible when rendered) on the line before a fence, or
before it with blank lines between::

    <!-- skip: needs a Hub repo -->     the block is not run (the reason shows in the report)
    <!-- file: nets.py -->              the block is written to this file, not run
    <!-- output -->                     the block is the previous command's expected output
    <!-- output: lines -->              ... whose every line occurs in the output, in order
    <!-- output: ignore=wrote -->       ... lines starting with ``wrote`` left out on both sides

One page-wide directive anywhere on the page maps the paths its examples use and places the
session's digits run and store (comma-separated paths for several copies)::

    <!-- docs-test: /tmp/qs=. /tmp/flq-demo=flq-demo run=runs/mlp store=mlp.zarr,flq-demo/store.zarr -->
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^```\s*([\w-]*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*(skip|file|output)\s*(?::\s*(.*?))?\s*-->\s*$")
PAGE = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language tag, its text and its directive."""

    path: Path
    line: int
    lang: str
    text: str
    directive: str = ""
    argument: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)


def read_page(path: Path) -> Page:
    """Every fenced block of ``path`` in order, and the page's path mapping."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = Page(path)
    for match in PAGE.finditer("\n".join(lines)):
        for pair in match.group(1).split():
            doc_path, _, local = pair.partition("=")
            page.paths[doc_path] = local
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path.name}:{i + 1}: the code block is never closed")
        directive, argument = _directive_before(lines, i)
        page.blocks.append(Block(path, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                                 directive, argument))
        i = end + 1
    return page


def _directive_before(lines: list[str], fence: int) -> tuple[str, str]:
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    match = DIRECTIVE.match(lines[j].strip()) if j >= 0 else None
    return (match.group(1), match.group(2) or "") if match else ("", "")


def commands(text: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip()]
