"""docs/cli.md against ``--help``: every option a command's help lists is documented in that
command's section, and every option the page names exists."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from tests._helpers.cli import describe, invoke

pytestmark = pytest.mark.docs

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
COMMANDS = ("audit", "metrics", "show", "export", "report", "compare", "demo")
#: ``flq-audit --version`` and ``--debug`` are read before Typer sees the arguments.
BEFORE_TYPER = {"--version", "-V", "--debug"}
#: An option line of ``--help``: two spaces, then the option's names.
HELP_LINE = re.compile(r"^  (-\S.*?)(?:\s{2,}|$)")
#: An option named in the page: ``--name`` or ``-q`` not inside a word; ``--fl-*`` names
#: the options that start with ``--fl-``.
NAMED = re.compile(r"(?<![\w\-.])(--?[A-Za-z][\w-]*\*?)")
LINK_TARGET = re.compile(r"\]\([^)]*\)")


@functools.cache
def help_options(*command: str) -> set[str]:
    """The option names (``-q``, ``--quiet``, ``--no-prefetch``) that ``--help`` lists."""
    result = invoke(*command, "--help")
    assert result.exit_code == 0, describe(result)
    names = set()
    for line in result.stdout.splitlines():
        match = HELP_LINE.match(line)
        if match:
            for part in re.split(r",\s*|\s*/\s*", match.group(1)):
                names.add(part.split()[0])
    return names - {"--help"}


def sections() -> dict[str, str]:
    """Each ``## command`` section of the page with its subsections, link targets dropped."""
    text = LINK_TARGET.sub("]", PAGE.read_text(encoding="utf-8"))
    parts = re.split(r"^## ", text, flags=re.M)
    return {part.split("\n", 1)[0].strip(): part for part in parts[1:]}


def named(text: str) -> set[str]:
    return set(NAMED.findall(text))


def table_options(section: str) -> set[str]:
    """The options of a section's option tables (the first cell of each row)."""
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `-")]
    return {name for cell in cells for name in named(cell)}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_in_help_is_documented_in_its_section(command):
    section = sections()[command]
    missing = sorted(help_options(command) - named(section))
    assert not missing, f"docs/cli.md, section '## {command}', lacks {missing}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if table_options(sections()[c])])
def test_every_option_of_a_command_table_exists(command):
    unknown = sorted(table_options(sections()[command]) - help_options(command))
    assert not unknown, f"docs/cli.md, '## {command}' table: {unknown} not in --help"


def test_every_option_the_page_names_exists():
    known = {*BEFORE_TYPER, "--help", *help_options()}
    for command in COMMANDS:
        known |= help_options(command)
    page = LINK_TARGET.sub("]", PAGE.read_text(encoding="utf-8"))
    unknown = sorted(name for name in named(page) if name.startswith("--") and not (
        name in known or (name.endswith("*") and any(k.startswith(name[:-1]) for k in known))))
    assert not unknown, f"docs/cli.md names options no command has: {unknown}"


def test_the_top_level_options_are_documented():
    missing = sorted(help_options() - named(PAGE.read_text(encoding="utf-8")))
    assert not missing, f"docs/cli.md lacks {missing}"
