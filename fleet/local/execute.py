"""The one place where the local fleet runs commands on this machine.

Every command arrives as an argv list built by a pure function (see `dockercmd`); this module only
runs it, applies a timeout, and turns a failure into a FleetError that carries the command's own
words (the tail of its stderr) so the operator sees why.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence

from fleet.errors import FleetError

# Docker's newer CLI would route `docker build` through buildx, which the Debian engine lacks.
BASE_ENV = {"DOCKER_BUILDKIT": "0", "LC_ALL": "C.UTF-8"}


class CommandError(FleetError):
    """A local command exited non-zero (or timed out)."""

    def __init__(self, argv: Sequence[str], returncode: int | None, output: str, hint: str | None = None):
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-15:])
        status = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"`{shlex.join(argv)[:300]}` {status}\n{tail}".rstrip(), where="local", hint=hint)


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(BASE_ENV)
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float | None = 120,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    hint: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run to completion and capture output; raise CommandError on failure when `check`."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(env),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandError(argv, None, out, hint) from exc
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, str(exc), hint or f"install {argv[0]!r}") from exc
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr + proc.stdout, hint)
    return proc


def stream(
    argv: Sequence[str],
    on_line: Callable[[str], None],
    *,
    timeout: float | None = 900,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin_from: Sequence[str] | None = None,
    hint: str | None = None,
) -> None:
    """Run a long command, handing each output line to `on_line` (progress); keeps the tail for errors.

    `stdin_from` is another argv whose stdout is piped into this one (e.g. `tar c | docker import`).
    """
    tail: list[str] = []
    feeder: subprocess.Popen[bytes] | None = None
    stdin = subprocess.DEVNULL
    if stdin_from is not None:
        feeder = subprocess.Popen(
            list(stdin_from), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(env)
        )
        stdin = feeder.stdout  # type: ignore[assignment]
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(env),
            cwd=cwd,
            bufsize=1,
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, str(exc), hint or f"install {argv[0]!r}") from exc
    if feeder is not None and feeder.stdout is not None:
        feeder.stdout.close()  # the consumer owns the pipe now
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip("\n")
        tail.append(line)
        del tail[:-40]
        on_line(line)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        raise CommandError(argv, None, "\n".join(tail), hint) from exc
    if feeder is not None:
        feeder_err = feeder.stderr.read().decode(errors="replace") if feeder.stderr else ""
        if feeder.wait() != 0:
            raise CommandError(stdin_from or [], feeder.returncode, feeder_err, hint)
    if code != 0:
        raise CommandError(argv, code, "\n".join(tail), hint)


def spawn_detached(argv: Sequence[str], log_path: str, env: Mapping[str, str] | None = None) -> int:
    """Start a daemon that must outlive us (dockerd, haproxy); returns its pid."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(env),
            start_new_session=True,
        )
    return proc.pid
