"""Progress for long local-fleet steps: a rich spinner on a terminal, plain timestamped lines otherwise.

Builds take a minute from nothing; an operator (or a CI log) should see what is happening.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


class Progress:
    """Steps with a title and a duration; `note` reports a line of a step's own output."""

    def __init__(
        self, *, stream: TextIO | None = None, rich: bool | None = None, verbose: bool = False
    ) -> None:
        self.stream = stream or sys.stderr
        self.use_rich = self.stream.isatty() if rich is None else rich
        self.verbose = verbose
        self._status: Any = None
        self._console: Any = None
        self._title = ""
        self._last_plain = 0.0
        if self.use_rich:
            from rich.console import Console

            self._console = Console(file=self.stream)

    def info(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[Progress]:
        self._title = title
        start = time.monotonic()
        if self._console is not None:
            self._status = self._console.status(title)
            self._status.start()
        else:
            self.info(f"... {title}")
        ok = False
        try:
            yield self
            ok = True
        finally:
            if self._status is not None:
                self._status.stop()
                self._status = None
            mark = "done" if ok else "FAILED"
            self.info(
                f"{'✓' if ok and self._console else '-'} {title}: {mark} in {time.monotonic() - start:.1f} s"
            )

    def note(self, line: str) -> None:
        """A line of output from the running step (build step, package being fetched)."""
        line = line.strip()
        if not line:
            return
        if self._status is not None:
            self._status.update(f"{self._title}: {line[:100]}")
            return
        markers = ("Step ", "I: Retrieving", "I: Base system", "I: Configuring")
        interesting = any(m in line[:40] for m in markers)
        now = time.monotonic()
        if self.verbose or (interesting and now - self._last_plain > 2.0):
            self._last_plain = now
            print(f"    {line[:160]}", file=self.stream, flush=True)


class Quiet(Progress):
    """For tests and library callers that want no output."""

    def __init__(self) -> None:
        super().__init__(rich=False)

    def info(self, text: str) -> None:
        return None

    def note(self, line: str) -> None:
        return None
