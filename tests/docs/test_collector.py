"""The docs collector itself: directives are read, and a page whose output drifted fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs._markdown import commands, read_page
from tests.docs.test_docs import run_page

PAGE = """# A page

<!-- docs-test: /tmp/example=. -->
<!-- skip: needs the Hub -->
```bash
flq-audit EleutherAI/pythia-70m
```

<!-- file: hello.py -->
```python
print("hello from", __file__.rsplit("/", 1)[-1])
```

```bash
python hello.py \\
  # a comment
```

<!-- output -->
```
hello from hello.py
```

<!-- output: lines -->
```
hello
```

```python
print(open("/tmp/example/hello.py").read().count("print"))
```

<!-- output -->
```
1
```
"""


def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


def test_directives_and_commands_are_read(tmp_path):
    page = read_page(_page(tmp_path, PAGE))
    assert page.paths == {"/tmp/example": "."}
    assert [(b.lang, b.directive, b.argument) for b in page.blocks] == [
        ("bash", "skip", "needs the Hub"), ("python", "file", "hello.py"), ("bash", "", ""),
        ("", "output", ""), ("", "output", "lines"), ("python", "", ""), ("", "output", ""),
    ]
    assert page.blocks[2].line == PAGE.splitlines().index("python hello.py \\")
    assert commands(page.blocks[2].text) == ["python hello.py  # a comment"]


def test_a_page_whose_commands_match_their_outputs_passes(tmp_path, page_dir, request):
    run_page(read_page(_page(tmp_path, PAGE)), page_dir, request)
    assert (page_dir / "hello.py").is_file()


@pytest.mark.parametrize(("old", "new", "message"), [
    ("hello from hello.py\n```", "hello from nowhere.py\n```", r"page.md:\d+: the output differs"),
    ("print(open(", "print(opn(", r"page.md:\d+: the Python block raised NameError"),
    ("python hello.py \\", "python missing.py \\", r"page.md:\d+: `python missing.py"),
])
def test_a_page_that_drifted_fails_at_its_block(tmp_path, page_dir, request, old, new, message):
    assert old in PAGE
    page = read_page(_page(tmp_path, PAGE.replace(old, new)))
    with pytest.raises(AssertionError, match=message):
        run_page(page, page_dir, request)


def test_ignored_lines_may_differ_and_the_rest_may_not(tmp_path, page_dir, request):
    page = """```bash
python -c "print('kept'); print('wrote 3.1 KiB')"
```

<!-- output: ignore=wrote -->
```
kept
wrote 2.9 KiB
```
"""
    run_page(read_page(_page(tmp_path, page)), page_dir, request)
    with pytest.raises(AssertionError, match="the output differs"):
        run_page(read_page(_page(tmp_path, page.replace("kept\nwrote", "lost\nwrote"))), page_dir, request)
