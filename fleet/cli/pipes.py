"""A reader that stops early (`fab --list | head`, `fab history --json | jq -e …`) is not an error.

Python ignores SIGPIPE so that a socket write to a closed peer raises instead of killing the process
(paramiko depends on that), so a closed stdout surfaces as BrokenPipeError, anywhere output is written
(invoke prints the task list itself). Restoring SIG_DFL would also kill `fab` on a closed SSH socket;
instead the uncaught BrokenPipeError of a closed stdout ends `fab` quietly, as `head`'s other writers
end, with the status a shell reports for SIGPIPE."""

from __future__ import annotations

import os
import select
import sys
from types import TracebackType

EXIT_SIGPIPE = 128 + 13


def _stdout_closed() -> bool:
    """True when nobody reads our stdout any more (a pipe's write end with no reader polls POLLERR)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def quiet_broken_pipe() -> None:
    """Install the hook (once); every other uncaught exception goes to the hook that was there."""
    previous = sys.excepthook
    if getattr(previous, "_fleet_pipes", False):
        return

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, BrokenPipeError) and _stdout_closed():
            # the interpreter flushes stdout again at exit: point it at /dev/null first
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os._exit(EXIT_SIGPIPE)
        previous(kind, exc, tb)

    hook._fleet_pipes = True  # type: ignore[attr-defined]
    sys.excepthook = hook
