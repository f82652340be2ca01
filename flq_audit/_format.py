"""How sizes and messages read wherever flq-audit shows them: one formatter each."""

from __future__ import annotations

from rich.filesize import decimal


def human_size(n_bytes: float) -> str:
    """A byte count in the unit that reads best (``64.4 MB``, ``1.2 kB``, ``0 bytes``; SI units,
    as ``ls --si`` and the Hub show them)."""
    return decimal(int(n_bytes))


def one_line(message: str) -> str:
    """A multi-line message on one line: a line ending in ``:`` runs on into the next one,
    other lines are joined by ``; ``."""
    text = ""
    for line in (part.strip() for part in message.splitlines()):
        if line:
            text += line if not text else (" " if text.endswith(":") else "; ") + line
    return text


__all__ = ["human_size", "one_line"]
