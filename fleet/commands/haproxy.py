"""haproxy's `show stat` (the local fleet's LB, asked on its admin socket) and its one parser: the LB
view of a rollout, the local LB's own commands and the local monitor all read the same CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from fleet.errors import FleetError

SHOW_STAT = "show stat"


@dataclass(frozen=True)
class ServerState:
    """The LB's view of one server. `status` is UP/DOWN/MAINT/DRAIN/NOLB; `raw` keeps "UP 1/2" etc."""

    name: str
    status: str
    raw: str
    check: str
    address: str
    weight: int
    sessions: int | None = None  # requests in flight to it now (haproxy's scur); None when not reported

    @property
    def serving(self) -> bool:
        """Whether new requests can be sent to it (a server going down still serves: "UP 1/2")."""
        return self.status == "UP"

    @property
    def steady(self) -> bool:
        """No health transition in progress ("UP 1/2" is failing its checks, "DOWN 1/2" recovering)."""
        return "/" not in self.raw


@dataclass(frozen=True)
class BackendStat:
    """One backend: its total HTTP requests so far (the BACKEND row's req_tot) and its servers."""

    requests: int = 0
    servers: dict[str, ServerState] = field(default_factory=dict)


def _int(cell: str | None) -> int | None:
    cell = (cell or "").strip()
    return int(cell) if cell.isdigit() else None


def parse_show_stat(text: str, backend: str) -> BackendStat:
    """`show stat` CSV ("# pxname,svname,..." then one row per frontend, server and backend) -> the
    rows of `backend`. Raises FleetError when the answer is not that CSV (an error, another command)."""
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise FleetError("unexpected answer to `show stat`", where="haproxy stats socket", hint=text[:200])
    requests = 0
    servers: dict[str, ServerState] = {}
    for row in csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]]))):
        if row.get("pxname") != backend or row.get("svname") == "FRONTEND":
            continue
        if row.get("svname") == "BACKEND":
            requests = _int(row.get("req_tot")) or 0
            continue
        raw = (row.get("status") or "").strip()
        servers[row["svname"]] = ServerState(
            name=row["svname"],
            status=raw.split(" ")[0] if raw else "UNKNOWN",
            raw=raw,
            check=(row.get("check_status") or "").strip(),
            address=(row.get("addr") or "").strip(),
            weight=_int(row.get("weight")) or 0,
            sessions=_int(row.get("scur")),
        )
    return BackendStat(requests=requests, servers=servers)
