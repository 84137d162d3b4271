"""The release's `.env`: written so Compose reads back exactly the value we meant, and read back for diffs.

Compose interpolates `$` in unquoted and double-quoted `.env` values, and a single-quoted value cannot
contain `'`. So a value is single-quoted (taken literally by Compose) unless it contains `'`; then it
is double-quoted with `\\`, `"` and `$` escaped. Newlines and other control characters are refused:
one variable, one line. The round trip is checked against the real `docker compose` in
tests/integration/test_compose_config.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from fleet.commands.base import env_key
from fleet.errors import FleetError

_LINE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_DQ_ESCAPE_RE = re.compile(r"\\(.)")


def check_value(key: str, value: str, where: str | None = None) -> str:
    """A value `.env` can carry on one line."""
    bad = next((ch for ch in value if (ord(ch) < 32 and ch != "\t") or ord(ch) == 127), None)
    if bad is not None:
        raise FleetError(
            f"value of {key} contains a control character ({bad!r})",
            where=where,
            hint="a .env value must be one line; base64-encode multi-line values (such as JSON keys)",
        )
    return value


def quote(key: str, value: str, where: str | None = None) -> str:
    """One value in the form Compose reads back literally."""
    check_value(key, value, where)
    if "'" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def render(values: Mapping[str, str], header: str = "", where: str | None = None) -> bytes:
    """`KEY='value'` lines in the given order, after an optional comment header."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for key, value in values.items():
        lines.append(f"{env_key(key)}={quote(key, value, where)}")
    return ("\n".join(lines) + "\n").encode()


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return _DQ_ESCAPE_RE.sub(lambda m: m.group(1), raw[1:-1])
    return raw.split(" #", 1)[0].strip()


def parse(data: bytes | str, where: str | None = None) -> dict[str, str]:
    """Read a `.env` this module wrote (or a plain KEY=value file); comments and blank lines skipped."""
    text = data.decode() if isinstance(data, bytes) else data
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE_RE.match(stripped.removeprefix("export "))
        if not match:
            raise FleetError(
                f"line {number} is not KEY=value",
                where=where,
                hint="the release .env is written by the bundle; do not edit it on the host",
            )
        values[match.group(1)] = _unquote(match.group(2).strip())
    return values
