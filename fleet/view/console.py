"""Output: rich tables and live progress on a terminal, plain lines otherwise, JSON for scripts.

rich is imported only when something is printed, so `fab --list` stays fast.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet.ssh.runner import HostProcessor, HostResult

STATUS_STYLE = {"ok": "green", "failed": "red", "unreachable": "yellow"}

# C0 controls (ESC starts every escape sequence), DEL, C1 controls (CSI, OSC as one character) and the
# bidirectional overrides that make text display differently from what it is
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def safe(text: str, keep: str = "\n\t") -> str:
    """Text from a host made harmless for a terminal: control characters (other than `keep`) are
    shown as `\\xNN` / `\\uNNNN` instead of being interpreted (a host's output could otherwise set
    the title, clear the screen, forge lines or hyperlinks). --json stays raw (JSON escapes them)."""

    def visible(match: re.Match[str]) -> str:
        ch = match.group()
        if ch in keep:
            return ch
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    return _CONTROL.sub(visible, text)


def is_tty() -> bool:
    return sys.stdout.isatty()


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    """An operator-facing error on stderr (red on a terminal); host output in it is neutralised."""
    message = safe(message)
    if sys.stderr.isatty():
        from rich.markup import escape

        console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", markup=True)
    else:
        sys.stderr.write(f"error: {message}\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table on a terminal; tab-separated plain text otherwise (easy to grep and cut). Cells often
    hold host output: control characters are neutralised (and tabs too in plain text: one per column)."""
    title = safe(title) if title else title
    if is_tty():
        from rich.markup import escape
        from rich.table import Table

        rows = [[safe("" if v is None else str(v)) for v in row] for row in rows]
        t = Table(title=escape(title) if title else title, show_lines=False)
        for col in columns:
            t.add_column(col, overflow="fold")
        for row in rows:
            t.add_row(*[_styled(col, v) for col, v in zip(columns, row, strict=False)])
        console().print(t)
    else:
        rows = [[safe("" if v is None else str(v), keep="\n") for v in row] for row in rows]
        if title:
            print(f"# {title}")
        print("\t".join(columns))
        for row in rows:
            print("\t".join(v.replace("\n", " | ") for v in row))
    sys.stdout.flush()


def _styled(column: str, value: str) -> str:
    from rich.markup import escape

    style = STATUS_STYLE.get(value) if column.lower() in ("status", "result") else None
    return f"[{style}]{escape(value)}[/]" if style else escape(value)


@contextmanager
def host_progress(description: str, total: int, *, enabled: bool = True) -> Iterator[HostProcessor]:
    """Yields a Nornir processor (pass it to run_on/run_step `processors`) that advances a live bar as
    each host finishes on a TTY, or prints a line per host; does nothing when not `enabled`."""
    from fleet.ssh.runner import HostProcessor

    if not enabled:
        yield HostProcessor()
        return
    if is_tty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[last]}"),
            console=console(stderr=True),
            transient=True,
        ) as progress:
            task_id = progress.add_task(description, total=total, last="")

            class Bar(HostProcessor):
                def host_done(self, result: HostResult) -> None:
                    progress.update(task_id, advance=1, last=safe(f"{result.host}: {result.status}"))

            yield Bar()
    else:

        class Lines(HostProcessor):
            def host_done(self, result: HostResult) -> None:
                sys.stderr.write(
                    safe(f"{description}: {result.host} {result.status} ({result.duration:.2f}s)\n")
                )
                sys.stderr.flush()

        yield Lines()


def results_table(title: str, results: Sequence[HostResult], show_output: bool = True) -> None:
    rows = []
    for r in results:
        detail = r.error or ""
        if show_output and not detail:
            output = (r.stdout.strip() or r.stderr.strip()).splitlines()
            detail = output[-1] if output else ""
        rows.append(
            [r.host, r.status, "" if r.exit_code is None else r.exit_code, f"{r.duration:.2f}s", detail]
        )
    table(title, ["host", "status", "exit", "time", "output (last line) / error"], rows)


def summary_line(results: Sequence[HostResult]) -> str:
    counts: dict[str, int] = {"ok": 0, "failed": 0, "unreachable": 0}
    for r in results:
        counts[r.status] += 1
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"{len(results)} host(s): {parts}"
