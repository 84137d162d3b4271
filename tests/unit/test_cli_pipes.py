"""A reader that stops early ends `fab` quietly (exit 141, no traceback); other errors keep theirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import pytest

from fleet.cli import pipes

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))


def _run_with_closed_reader(argv: list[str]) -> tuple[int, str]:
    read, write = os.pipe()
    os.close(read)  # nobody will read what it prints
    try:
        proc = subprocess.run(argv, cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


def test_fab_list_into_a_closed_pipe_ends_quietly() -> None:
    code, err = _run_with_closed_reader([FAB, "--list"])
    assert (code, err) == (pipes.EXIT_SIGPIPE, "")


def test_other_errors_reach_the_previous_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[type[BaseException]] = []

    def previous(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        seen.append(kind)

    monkeypatch.setattr(sys, "excepthook", previous)
    pipes.quiet_broken_pipe()
    pipes.quiet_broken_pipe()  # once: a second call does not wrap the hook again
    hook = sys.excepthook
    assert hook is not previous and getattr(hook, "_fleet_pipes", False)
    hook(ValueError, ValueError("x"), None)
    # a broken pipe elsewhere (an SSH socket) while stdout is still read: not swallowed
    hook(BrokenPipeError, BrokenPipeError(32, "Broken pipe"), None)
    assert seen == [ValueError, BrokenPipeError]
