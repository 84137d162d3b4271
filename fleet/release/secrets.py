"""Resolve the inventory's secret references into values, on the operator's machine only.

The inventory never holds a secret value, only where to find it:

    data:
      secrets:
        DB_PASSWORD: {env: FLEET_DB_PASSWORD}       # an environment variable of the operator
        REDIS_PASSWORD: {file: secrets/redis.txt}   # a file (relative to the inventory directory)

A missing source is an error that names the secret and the source, never the value. (A
`secret-manager://` form can be added here later without touching callers.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from fleet import settings
from fleet.commands.base import env_key
from fleet.errors import FleetError

FORMS = "{env: VARIABLE} or {file: PATH}"

_known: set[str] = set()
_known_lock = threading.Lock()


def remember(values: Iterable[str]) -> None:
    """Add secret values this process has seen (resolved, rendered, read from a host's old .env), so
    that any error text from any host step can be masked with them (`fleet.release.hoststeps.run`)."""
    with _known_lock:
        _known.update(v for v in values if v)


def known() -> tuple[str, ...]:
    """Every secret value remembered so far (never print these: pass them to `base.mask`)."""
    with _known_lock:
        return tuple(_known)


def resolve(
    refs: Mapping[str, object],
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    where: str | None = None,
) -> dict[str, str]:
    """Secret name -> value. `environ` defaults to the environment (fleet.settings); relative files are
    under `base_dir`."""
    env = settings.load().environ if environ is None else environ
    values: dict[str, str] = {}
    for name, ref in refs.items():
        key = env_key(name)
        label = f"secret {key}"
        if not isinstance(ref, Mapping) or len(ref) != 1 or next(iter(ref)) not in ("env", "file"):
            raise FleetError(f"{label}: unknown reference {ref!r}", where=where, hint=f"use {FORMS}")
        kind, source = next(iter(ref.items()))
        if not isinstance(source, str) or not source:
            raise FleetError(f"{label}: {kind} must be a non-empty string", where=where, hint=f"use {FORMS}")
        if kind == "env":
            value = env.get(source)
            if not value:
                raise FleetError(
                    f"{label}: environment variable {source} is not set",
                    where=where,
                    hint=f"export {source}=... before running, or point {key} at a file",
                )
        else:
            path = Path(source).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                value = path.read_text()
            except FileNotFoundError:
                raise FleetError(
                    f"{label}: file {path} does not exist", where=where, hint="create it or fix the path"
                ) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise FleetError(
                    f"{label}: cannot read file {path} ({exc.__class__.__name__})", where=where
                ) from None
            value = value.removesuffix("\n").removesuffix("\r")
            if not value:
                raise FleetError(
                    f"{label}: file {path} is empty", where=where, hint="write the secret into it"
                )
        values[key] = value
    remember(values.values())
    return values
