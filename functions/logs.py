"""Structured logs: one JSON object per line on stdout, the format Cloud Logging parses into fields.

`severity` and `message` are Cloud Logging's special keys; everything else lands in jsonPayload.
Callers pass only non-secret values (settings.Secret renders as "Secret(***)" if one slips in).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

SEVERITIES = ("DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL")


def record(severity: str, message: str, **fields: Any) -> dict[str, Any]:
    """The log record as a dict (fields cannot override severity or message)."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    out: dict[str, Any] = {k: _clip(v) for k, v in fields.items() if v is not None}
    out["severity"] = severity
    out["message"] = _clip(message)
    return out


# Incident fields are attacker-sized (a 1 MB summary or policy name): no log field may carry all of it.
FIELD_MAX = 8000


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > FIELD_MAX:
        return value[: FIELD_MAX - 1] + "…"
    return value


def log(severity: str, message: str, stream: TextIO | None = None, **fields: Any) -> None:
    """Write one record as a single line; non-JSON values are written with str()."""
    line = json.dumps(record(severity, message, **fields), default=str, separators=(",", ":"))
    out = stream if stream is not None else sys.stdout
    out.write(line + "\n")
    out.flush()
