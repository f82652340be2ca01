"""The pages cite only what the repository holds: relative links and their anchors resolve,
and no page, recipe or constant cites the project's private notes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted({REPO / "README.md", *REPO.glob("*.md"), *(REPO / "docs").glob("*.md")})
#: Files that must not cite documents outside the repository (the package's other modules
#: follow once their restructuring lands).
CITING = [*PAGES, REPO / "flq_audit" / "constants.py", *sorted((REPO / "flq_audit" / "recipes").glob("*.py")),
          *sorted((REPO / "recipes").glob("*.py"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of ``page`` (lower case, punctuation dropped, spaces → -)."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        if not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_and_anchors_resolve(page: Path):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.parametrize("path", CITING, ids=[str(p.relative_to(REPO)) for p in CITING])
def test_no_citation_of_a_document_outside_the_repository(path: Path):
    text = path.read_text(encoding="utf-8")
    assert "paper-notes" not in text, f"{path.relative_to(REPO)} cites paper-notes; cite docs/concepts.md"


def test_ci_runs_the_readme_test_command():
    """`.ci/run` runs the command the README gives for the tests, after the same installs."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = next(b for b in FENCE.findall(readme) if "pytest" in b)
    steps = [s.strip() for s in block.strip("`\n").removeprefix("bash").split("&&")]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for step in steps:
        if step.startswith(("pip install", "python -m pytest")):
            assert step in ci, f".ci/run does not run the README's `{step}`"


def test_readme_audits_the_run_its_own_set_up_makes():
    """The README's audit commands name the folder its set-up (`flq-audit demo`) trains, and
    its docs test places the run there: they run on what a new user has, not on a fixture
    folder the README never makes."""
    import inspect
    import shlex

    from flq_audit.cli import COMMANDS
    from flq_audit.cli._app import demo_command
    from tests.docs._markdown import commands, read_page

    page = read_page(REPO / "README.md")
    setup = [c for b in page.blocks if b.directive == "skip" for c in commands(b.text)]
    assert any("flq-audit demo" in c and "--workdir" not in c for c in setup)
    workdir = inspect.signature(demo_command).parameters["workdir"].default
    trained = str(Path(workdir) / "checkpoints")  # where the demo trains (quickstart.md lists it)
    sources = [words[1] for b in page.blocks if b.lang == "bash" and b.directive != "skip"
               for c in commands(b.text) if (words := shlex.split(c, comments=True))[:1] == ["flq-audit"]
               and len(words) > 1 and words[1] not in COMMANDS and not words[1].startswith("-")]
    assert sources, "the README shows how to audit a folder"
    assert all(s == trained for s in sources), sources
    assert page.paths["run"] == trained


def test_the_docs_index_links_every_page():
    """docs/README.md (the index) and the README's documentation line name every page."""
    index = set(LINK.findall((REPO / "docs" / "README.md").read_text(encoding="utf-8")))
    readme = set(LINK.findall((REPO / "README.md").read_text(encoding="utf-8")))
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md") if p.name != "README.md")
    assert [p for p in pages if p not in {t.partition("#")[0] for t in index}] == []
    assert [p for p in pages if f"docs/{p}" not in {t.partition("#")[0] for t in readme}] == []


def test_only_cli_md_names_the_weights_only_alias():
    """`--weights-only` is the option's name; `--no-probe` is an alias that only the CLI
    reference mentions."""
    stale = [str(p.relative_to(REPO)) for p in PAGES
             if p.name not in ("cli.md", "CHANGELOG.md")  # the log keeps what was released
             and "--no-probe" in p.read_text(encoding="utf-8")]
    assert stale == []
