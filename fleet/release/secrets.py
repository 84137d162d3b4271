"""Resolve the inventory's secret references into values, on the operator's machine only.

The inventory never holds a secret value, only where to find it:

    data:
      secrets:
        DB_PASSWORD: {env: FLEET_DB_PASSWORD}       # an environment variable of the operator
        REDIS_PASSWORD: {file: secrets/redis.txt}   # a file (relative to the inventory directory)
        SECRET_KEY: {secret_manager: dify-secret-key}  # Secret Manager, in gce.project, latest version
        SMTP_PASSWORD: {secret_manager: projects/shared/secrets/smtp/versions/3}

A missing source is an error that names the secret and the source, never the value. Secret Manager
references are read with the operator's credentials (fleet/gcp/secretmanager.py); `resolve_pinned` also
says which concrete version each one was, so a release can name it and a VM reads the same value.

Standard library only at module level: the on-VM agent imports this module (through hoststeps).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet import settings
from fleet.commands.base import env_key
from fleet.errors import FleetError

FORMS = "{env: VARIABLE}, {file: PATH} or {secret_manager: NAME | projects/P/secrets/S[/versions/N|latest]}"
KINDS = ("env", "file", "secret_manager")
SECRET_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_SM_FULL = re.compile(
    r"projects/(?P<project>[a-z0-9][a-z0-9.:-]{0,62})/secrets/(?P<secret>[^/]+)"
    r"(?:/versions/(?P<version>[^/]+))?"
)
_SM_SHORT = re.compile(r"(?P<secret>[^/]+)(?:/versions/(?P<version>[^/]+))?")
_VERSION = re.compile(r"[1-9][0-9]{0,18}|latest")


@dataclass(frozen=True)
class SecretVersionRef:
    """A Secret Manager version an inventory secret points at; `version` is a number or "latest"."""

    project: str
    secret: str
    version: str = "latest"

    @property
    def secret_name(self) -> str:
        return f"projects/{self.project}/secrets/{self.secret}"

    @property
    def name(self) -> str:
        return f"{self.secret_name}/versions/{self.version}"


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


def parse_secret_manager(
    source: str, *, project: str | None = None, key: str = "?", where: str | None = None
) -> SecretVersionRef:
    """The version a `{secret_manager: ...}` reference names: NAME or NAME/versions/V in `project` (the
    inventory's gce.project), or projects/P/secrets/NAME[/versions/V]; no version = latest."""
    label = f"secret {key}"
    hint = (
        "NAME (in gce.project) or projects/PROJECT/secrets/NAME, optionally /versions/N or /versions/latest"
    )
    m = _SM_FULL.fullmatch(source) if source.startswith("projects/") else _SM_SHORT.fullmatch(source)
    if not m:
        raise FleetError(f"{label}: not a Secret Manager reference: {source!r}", where=where, hint=hint)
    secret, version = m["secret"], m["version"] or "latest"
    if not SECRET_ID.fullmatch(secret):
        raise FleetError(
            f"{label}: invalid secret name {secret!r}",
            where=where,
            hint="1-255 letters, digits, underscores or hyphens (Secret Manager's rule)",
        )
    if not _VERSION.fullmatch(version):
        raise FleetError(
            f"{label}: invalid version {version!r}",
            where=where,
            hint="a version number (1, 2, ...) or latest",
        )
    if "project" in m.groupdict():
        project = m["project"]
    elif not project:
        raise FleetError(
            f"{label}: {{secret_manager: {source}}} needs a project",
            where=where,
            hint="set gce.project in the inventory, or write projects/PROJECT/secrets/NAME",
        )
    return SecretVersionRef(project, secret, version)


def _parse(ref: object, key: str, where: str | None) -> tuple[str, str]:
    """(kind, source) of one reference, or a FleetError naming the secret."""
    label = f"secret {key}"
    if not isinstance(ref, Mapping) or len(ref) != 1 or next(iter(ref)) not in KINDS:
        raise FleetError(f"{label}: unknown reference {ref!r}", where=where, hint=f"use {FORMS}")
    kind, source = next(iter(ref.items()))
    if not isinstance(source, str) or not source:
        raise FleetError(f"{label}: {kind} must be a non-empty string", where=where, hint=f"use {FORMS}")
    return kind, source


def secret_manager_refs(
    refs: Mapping[str, object], *, project: str | None = None, where: str | None = None
) -> dict[str, SecretVersionRef]:
    """KEY -> the version, for the `{secret_manager: ...}` references among `refs` (checked, not read)."""
    out: dict[str, SecretVersionRef] = {}
    for name, ref in refs.items():
        key = env_key(name)
        kind, source = _parse(ref, key, where)
        if kind == "secret_manager":
            out[key] = parse_secret_manager(source, project=project, key=key, where=where)
    return out


def resolve(
    refs: Mapping[str, object],
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    where: str | None = None,
    project: str | None = None,
    endpoint: str | None = None,
    client: Any = None,
) -> dict[str, str]:
    """Secret name -> value. `environ` defaults to the environment (fleet.settings); relative files are
    under `base_dir`; short Secret Manager names are in `project`."""
    values, _ = resolve_pinned(
        refs,
        base_dir=base_dir,
        environ=environ,
        where=where,
        project=project,
        endpoint=endpoint,
        client=client,
    )
    return values


def resolve_pinned(
    refs: Mapping[str, object],
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    where: str | None = None,
    project: str | None = None,
    endpoint: str | None = None,
    client: Any = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """(KEY -> value, KEY -> "projects/P/secrets/S/versions/N" for the Secret Manager ones), `latest`
    pinned to the number it was when read, so a release names exactly what the operator hashed.
    `client` (fleet.gcp.secretmanager.SecretManager or alike) defaults to one for `endpoint`
    (FLEET_SECRETMANAGER_ENDPOINT wins over it; None = the real API)."""
    env = settings.load().environ if environ is None else environ
    values: dict[str, str] = {}
    pinned: dict[str, str] = {}
    for name, ref in refs.items():
        key = env_key(name)
        label = f"secret {key}"
        kind, source = _parse(ref, key, where)
        if kind == "secret_manager":
            version = parse_secret_manager(source, project=project, key=key, where=where)
            if client is None:
                from fleet.gcp import secretmanager as gsm

                client = gsm.SecretManager(gsm.endpoint_for(endpoint))
            try:
                value, pinned[key] = client.access(version.name)
            except FleetError as exc:
                raise FleetError(f"{label}: {version.name}: {exc.what}", where=where, hint=exc.hint) from None
            if not value:
                raise FleetError(
                    f"{label}: {pinned[key]} is empty",
                    where=where,
                    hint="push a value with `fab secrets.push`",
                )
        elif kind == "env":
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
        remember((value,))  # at once: a later reference's error must not leave this one unmasked
    return values, pinned
