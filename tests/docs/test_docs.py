"""Run the shell commands and Python blocks of README.md and docs/*.md, and compare outputs.

Each page runs in a fresh folder, its blocks in order, sharing one Python namespace. The
page's ``docs-test`` directive places copies of the session's digits run (``run=PATH``) and
of its audited store (``store=PATH``) in that folder, and maps the absolute paths its examples
use onto it (``/tmp/qs=.``). ``flq-audit`` commands run in this process (one start-up for all
of them); other commands run in ``bash`` with ``python`` and ``flq-audit`` on ``PATH``.
Directives before a block (see ``_markdown.py``) skip it with a visible reason, write it to a
file, or mark it as the expected output of the block before it. Blocks without a language tag
(formulas, listings) and ``json`` blocks are text, not run. ``FLQ_DOCS_TIMES=1`` prints the
slowest commands at the end.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._helpers.cli import squash
from tests.docs._markdown import Block, Page, commands, read_page

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = {"bash", "sh", "console", "python", "py"}
#: Pages not run yet, with the reason (shown as the skip reason).
NOT_YET_RUN: dict[str, str] = {}

pytestmark = pytest.mark.docs
_TIMES: list[tuple[float, str]] = []


def teardown_module() -> None:
    if os.environ.get("FLQ_DOCS_TIMES"):
        for seconds, command in sorted(_TIMES, reverse=True)[:15]:
            print(f"{seconds:6.2f} s  {command}", file=sys.stderr)


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_page_runs(path: Path, page_dir: Path, request, monkeypatch) -> None:
    reason = NOT_YET_RUN.get(str(path.relative_to(REPO)))
    if reason:
        pytest.skip(reason)
    from flq_audit.metrics import _spec

    # a page may register a metric in this process (register_metric): keep it to the page
    monkeypatch.setattr(_spec, "_REGISTRY", dict(_spec._REGISTRY))
    from flq_audit import sources
    from flq_audit.audit import extensions

    # ... and a source family or an extension (register_source, register_extension)
    monkeypatch.setattr(sources, "SOURCE_FAMILIES", dict(sources.SOURCE_FAMILIES))
    monkeypatch.setattr(extensions, "_REGISTRY", dict(extensions._REGISTRY))
    run_page(read_page(path), page_dir, request)


def run_page(page: Page, page_dir: Path, request) -> None:
    """Run ``page``'s blocks in order in ``page_dir``; fail at the first block that fails."""
    _place_fixtures(page, page_dir, request)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    last_output = ""
    for block in page.blocks:
        if block.directive == "skip" or (block.lang not in RUNNABLE and block.directive != "output"):
            continue
        if block.directive == "file":
            (page_dir / block.argument).write_text(_local(block.text, page, page_dir))
        elif block.directive == "output":
            _compare(block, last_output, page, page_dir)
        elif block.lang in ("python", "py"):
            last_output = _run_python(block, _local(block.text, page, page_dir), namespace)
        else:
            local = _local(block.text, page, page_dir)
            last_output = "".join(_run_command(block, command) for command in commands(local))


def _place_fixtures(page: Page, work: Path, request) -> None:
    for name, local in page.paths.items():
        if name not in ("run", "store"):
            continue
        source = request.getfixturevalue("digits_run" if name == "run" else "digits_store")
        for target in local.split(","):
            (work / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, work / target)


def _local(text: str, page: Page, work: Path) -> str:
    """The text with the page's absolute example paths pointing into ``work``."""
    for doc_path, local in page.paths.items():
        if doc_path.startswith("/"):
            text = text.replace(doc_path, str((work / local).resolve()))
    return text


def _documented(text: str, page: Page, work: Path) -> str:
    """The inverse of ``_local``: real paths written as the page writes them."""
    for doc_path, local in sorted(page.paths.items(), key=lambda kv: -len(kv[1])):
        if doc_path.startswith("/"):
            text = text.replace(str((work / local).resolve()), doc_path)
    return text


def _run_command(block: Block, command: str) -> str:
    words = shlex.split(command, comments=True)
    if not words:
        return ""
    if words[0] == "flq-audit" and not any(w in ("|", "&&", ";", ">") for w in words):
        from flq_audit.cli import app
        from tests._helpers.cli import invoke

        args = words[1:]
        if args and not args[0].startswith("-") and args[0] not in {c.name for c in app.registered_commands}:
            args.insert(0, "audit")  # `flq-audit SOURCE` is short for `flq-audit audit SOURCE`
        started = time.perf_counter()
        result = invoke(*args)
        _TIMES.append((time.perf_counter() - started, command))
        output = result.output
        assert result.exit_code == 0, f"{block.where}: `{command}` exited {result.exit_code}:\n{output}"
        return output
    started = time.perf_counter()
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120,
                          check=False)
    _TIMES.append((time.perf_counter() - started, command))
    assert done.returncode == 0, (f"{block.where}: `{command}` exited {done.returncode}:\n"
                                  f"{done.stdout}\n{done.stderr}")
    return done.stdout


def _run_python(block: Block, code: str, namespace: dict[str, object]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(code, block.where, "exec"), namespace)  # the page's own example code
        except Exception as err:
            raise AssertionError(f"{block.where}: the Python block raised {err!r}") from err
    return out.getvalue()


def _compare(block: Block, output: str, page: Page, work: Path) -> None:
    expected, output = block.text, _documented(output, page, work)
    if block.argument.startswith("ignore="):  # lines that differ from run to run (file sizes)
        prefix = block.argument.removeprefix("ignore=")
        expected, output = (
            "\n".join(line for line in text.splitlines() if not line.startswith(prefix))
            for text in (expected, output)
        )
    got = squash(output)
    if block.argument == "lines":
        at = 0
        for line in expected.splitlines():
            needle = squash(line)
            found = got.find(needle, at)
            assert found >= 0, f"{block.where}: {line!r} is not in the output (in order):\n{output}"
            at = found + len(needle)
    else:
        assert squash(expected) == got, f"{block.where}: the output differs:\n{output}"
