"""Download progress of Hub files, counted for flq-audit's own display.

``hf_hub_download`` draws a tqdm bar per file unless given another ``tqdm_class``. Every
download of a :class:`~flq_audit.sources.hub.HubSource` goes through the class made by
:func:`byte_counter`: it draws nothing and passes each chunk's size on, so the bytes of the
current step can be shown inside the audit's step progress (and no huggingface_hub bar
interleaves with it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm.std import tqdm as std_tqdm

#: ``listener(step, bytes downloaded so far, bytes expected)`` for the step being fetched.
DownloadListener = Callable[[int, int, int], None]


class _Discard(io.StringIO):
    """A text stream that keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)


def byte_counter(report: Callable[[int], None]) -> type[std_tqdm]:
    """A ``tqdm_class`` for ``hf_hub_download`` that draws nothing and calls ``report(n)`` with
    each chunk's size (negative when a retry rolls a resumed download back)."""
    from tqdm.std import tqdm as std_tqdm  # only a Hub download needs tqdm


    class DownloadCounter(std_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs.update(file=_Discard(), disable=False, leave=False)
            super().__init__(*args, **kwargs)
            if self.n:  # the part of a resumed download already on disk
                report(int(self.n))

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if n:
                report(int(n))
            return shown

        def update_transfer(self, n: int) -> None:
            """Bytes on the wire (Xet transfers are compressed): the file's bytes are counted."""

        def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            """Nothing is drawn."""

        def display(self, *args: Any, **kwargs: Any) -> None:
            """Nothing is drawn."""

    return DownloadCounter


@dataclass
class StepDownloads:
    """The bytes downloaded for one step, passed to a listener as they arrive."""

    listener: DownloadListener | None = None
    step: int = 0
    done: int = 0
    total: int = 0

    def begin(self, step: int, total: int) -> None:
        self.step, self.done, self.total = step, 0, total
        self._tell()

    def add(self, n: int) -> None:
        self.done = max(0, self.done + n)
        self._tell()

    def _tell(self) -> None:
        if self.listener is not None:
            self.listener(self.step, self.done, max(self.total, self.done))


__all__ = ["DownloadListener", "StepDownloads", "byte_counter"]
