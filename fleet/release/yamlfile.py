"""The project's own YAML files under compose/ (env schema, image pairings, upstream catalog): one way to
read their top-level mapping, so a broken file always gets the same clear error."""

from __future__ import annotations

from typing import Any

import yaml

from fleet.errors import FleetError


def document(text: str, key: str, shape: str, where: str) -> dict[str, Any]:
    """The file's top-level mapping, which must hold a mapping under `key`; `shape` says what the file
    should look like when it does not."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FleetError(f"not valid YAML: {exc}", where=where) from None
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise FleetError(f"expected {shape}", where=where)
    return data
