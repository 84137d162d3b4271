"""Output: rich tables and live progress on a terminal, plain lines otherwise, JSON for scripts.

rich is imported only when something is printed, so `fab --list` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet.runner import HostResult

STATUS_STYLE = {"ok": "green", "failed": "red", "unreachable": "yellow"}


def is_tty() -> bool:
    return sys.stdout.isatty()


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    """An operator-facing error on stderr (red on a terminal)."""
    if sys.stderr.isatty():
        console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True)
    else:
        sys.stderr.write(f"error: {message}\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table on a terminal; tab-separated plain text otherwise (easy to grep and cut)."""
    rows = [[("" if v is None else str(v)) for v in row] for row in rows]
    if is_tty():
        from rich.table import Table

        t = Table(title=title, show_lines=False)
        for col in columns:
            t.add_column(col, overflow="fold")
        for row in rows:
            t.add_row(*[_styled(col, v) for col, v in zip(columns, row, strict=False)])
        console().print(t)
    else:
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
def host_progress(description: str, total: int, *, enabled: bool = True) -> Iterator[Any]:
    """Yields a callback(HostResult) that advances a live bar on a TTY, or prints a line per host."""
    if not enabled:
        yield lambda _result: None
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

            def advance(result: HostResult) -> None:
                progress.update(task_id, advance=1, last=f"{result.host}: {result.status}")

            yield advance
    else:

        def line(result: HostResult) -> None:
            sys.stderr.write(f"{description}: {result.host} {result.status} ({result.duration:.2f}s)\n")
            sys.stderr.flush()

        yield line


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
