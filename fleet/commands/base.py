"""Quoting and validation shared by every command builder.

Values are validated on the way in (names, versions, ids, paths) and quoted on the way out; a builder
never formats an unvalidated, unquoted value into a shell string.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

from fleet.errors import FleetError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Docker tag grammar: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}; we also allow '+' for semver build metadata
VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
RELEASE_ID_RE = re.compile(r"^[0-9a-f]{12,64}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check(kind: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):  # `$` would allow a trailing newline
        raise FleetError(f"invalid {kind} {value!r}", hint=f"a {kind} must be {rule}")
    return value


def name(value: object, kind: str = "name") -> str:
    """A host, service, project or group name: letters, digits, '.', '_', '-'."""
    return _check(kind, value, NAME_RE, "1-63 letters, digits, '.', '_' or '-', starting alphanumeric")


def version(value: object) -> str:
    """A release version / image tag."""
    return _check("version", value, VERSION_RE, "a Docker tag: letters, digits, '.', '_', '-', '+'")


def release_id(value: object) -> str:
    """A release id: the lowercase hex content hash made by the bundle."""
    return _check("release id", value, RELEASE_ID_RE, "12-64 lowercase hex digits")


def env_key(value: object) -> str:
    return _check("variable name", value, ENV_KEY_RE, "letters, digits and '_', not starting with a digit")


def abs_path(value: object, kind: str = "path") -> str:
    """An absolute, normalised POSIX path without '..' or control characters."""
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or posixpath.normpath(value) != value
        or ".." in value.split("/")
        or any(ord(ch) < 32 for ch in value)
    ):
        raise FleetError(f"invalid {kind} {value!r}", hint="use an absolute, normalised path without '..'")
    return value


def q(value: object) -> str:
    """Quote one value for a POSIX shell."""
    return shlex.quote(str(value))


def sh(*argv: object) -> str:
    """One simple command from an argv, every word quoted."""
    return " ".join(q(a) for a in argv)


@dataclass(frozen=True)
class Command:
    """A remote command as data: the shell text, why it runs, and what must never be printed."""

    script: str
    purpose: str
    secrets: tuple[str, ...] = field(default=(), repr=False)
    sudo: bool = False

    def shell(self) -> str:
        """The exact text sent to the remote shell."""
        if self.sudo:
            return sh("sudo", "-n", "sh", "-c", self.script)
        return self.script

    def display(self) -> str:
        """The text for logs and plans, secrets masked."""
        return mask(self.shell(), self.secrets)


def secret_forms(secret: str) -> set[str]:
    """The ways a secret value shows up in text: as is, escaped inside a double-quoted `.env` value
    (fleet/release/envfile.py: `\\`, `"`, `$`), URL-encoded (derived URLs such as the Celery broker URL, path
    and form style) and JSON-escaped (`--json` output, logs)."""
    dq = secret.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    forms = {
        secret,
        dq,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    forms |= {json.dumps(form)[1:-1] for form in (dq, shlex.quote(secret))}
    return {f for f in forms if f}


def mask(text: str, secrets: Sequence[str]) -> str:
    """Replace every secret value, in every form `secret_forms` knows (and shell-quoted), with ******."""
    quoted: set[str] = set()
    plain: set[str] = set()
    for secret in (s for s in secrets if s):
        quoted.add(shlex.quote(secret))
        plain |= secret_forms(secret)
    for form in sorted(quoted - {s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(form, "'******'")
    for form in sorted(plain, key=len, reverse=True):
        text = text.replace(form, "******")
    return text
