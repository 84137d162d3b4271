"""The fleet inventory: Nornir SimpleInventory-format YAML, validated before anything connects.

Inheritance (host -> groups -> defaults) is resolved here, once, so every later step sees one merged
`FleetHost` per host; the Nornir inventory built from it carries the same merged data.
See docs/inventory.md for the format.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fleet import settings
from fleet.errors import InventoryError
from fleet.paths import INVENTORY_ROOT

if TYPE_CHECKING:
    from pydantic import BaseModel

    from fleet.inventory.schema import Data

# pydantic and the schema are imported by the functions that use them: a `fab exec` whose inventory
# comes from the memo (fleet/inventory/memo.py) needs neither (~0.2 s of its start-up)

ENV_VAR = settings.INVENTORY_ENV
DEFERRED: Any = object()  # FleetHost(settings=DEFERRED): the typed view is built when first read
HOST_NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FleetHost:
    """One host with everything inherited resolved.

    `settings` is the typed view of `data` (defaults from fleet/inventory/schema.py); `data`/`get()` also
    hold what is not a setting: the runtime facts MIG discovery merges under `gce` (status, mig...).
    A host rebuilt from the inventory memo (`settings=DEFERRED`, data validated when the memo was made)
    builds its view on first use, so a task that never reads it never imports pydantic.
    """

    name: str
    hostname: str
    port: int
    username: str
    groups: tuple[str, ...]  # direct and inherited group names, nearest first
    data: dict[str, Any] = field(default_factory=dict)
    settings: Data = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.settings is None:  # built outside load() (tests): the view of `data`, facts left out
            object.__setattr__(self, "settings", settings_of(self.data, where=f"host {self.name!r}"))
        elif self.settings is DEFERRED:  # from the memo: built by __getattr__ on first use
            object.__delattr__(self, "settings")

    def __getattr__(self, name: str) -> Any:
        # reached only for an attribute the instance lacks: `settings` of a host from the memo
        if name != "settings":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        typed = settings_of(self.data, where=f"host {self.name!r}")
        object.__setattr__(self, "settings", typed)
        return typed

    def get(self, dotted: str, default: Any = None) -> Any:
        """A value by dotted path into the merged data, e.g. `ssh.proxy`."""
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


# the dataclass left its default (None) as a class attribute, which would hide a deferred view from
# __getattr__; the generated __init__ keeps the default on its own
del FleetHost.settings


@dataclass(frozen=True)
class Inventory:
    name: str
    path: Path
    hosts: dict[str, FleetHost]
    groups: dict[str, dict[str, Any]]
    defaults: dict[str, Any]
    # per-host connection parameters as the SSH layer derived them, when the inventory came from the memo
    # (fleet/inventory/memo.py; fleet.ssh.connection.ssh_params reads them); empty after a plain load()
    connections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def known_hosts(self) -> Path:
        return self.path / "known_hosts"

    def resolve_path(self, value: str) -> Path:
        """Relative paths in the inventory are relative to the inventory directory."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.path / p


def skip_reason(host: FleetHost) -> str | None:
    """Why a task must not work on this host now; None for a host it may connect to."""
    status = host.get("gce.status")
    action = host.get("gce.current_action")
    if status is not None and status != "RUNNING":
        return f"instance is {status}, not RUNNING"
    if action not in (None, "NONE"):
        return f"MIG action {action} in progress"
    return None


def partition(hosts: Iterable[FleetHost]) -> tuple[list[FleetHost], list[tuple[FleetHost, str]]]:
    """(hosts to work on, [(host, why skipped)])."""
    ready: list[FleetHost] = []
    skipped: list[tuple[FleetHost, str]] = []
    for host in hosts:
        reason = skip_reason(host)
        if reason is None:
            ready.append(host)
        else:
            skipped.append((host, reason))
    return ready, skipped


def inventory_path(name: str | None) -> Path:
    """Where inventory NAME lives: a directory path, or a name under inventory/. No implicit default."""
    chosen = settings.load().inventory_for(name)
    if not chosen:
        raise InventoryError(
            "no inventory selected",
            hint=f"pass --inventory NAME (a directory under {INVENTORY_ROOT}) or set {ENV_VAR}",
        )
    candidate = Path(chosen)
    if candidate.is_dir():
        return candidate.resolve()
    under_root = INVENTORY_ROOT / chosen
    # a name under inventory/, nested names included (local/mig: the local fleet seen through its MIG)
    parts = chosen.split("/")
    if (
        all(re.fullmatch(r"[A-Za-z0-9_.-]+", p) and p not in (".", "..") for p in parts)
        and under_root.is_dir()
    ):
        return under_root
    known = sorted(p.name for p in INVENTORY_ROOT.iterdir() if p.is_dir()) if INVENTORY_ROOT.is_dir() else []
    raise InventoryError(
        f"inventory {chosen!r} not found",
        hint=f"known inventories: {', '.join(known) or 'none'}; or pass a directory path"
        + (
            "; the local fleet writes inventory/local when you run `fab local.up`"
            if chosen == "local"
            else ""
        ),
    )


# libyaml's parser when PyYAML was built with it: the same safe constructors, a fifth of the parse time
# (every `fab` start reads the inventory before it can connect anywhere)
_SafeBase: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeBase):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses duplicate mapping keys (a duplicated host would silently win otherwise)."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise InventoryError(
                f"duplicate key {key!r} (first at line {seen[key]})",
                where=f"{key_node.start_mark.name}:{key_node.start_mark.line + 1}",
                hint="each host or group name may appear once",
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise InventoryError("file is missing", where=str(path), hint="an inventory needs hosts.yaml")
        return {}
    try:
        with path.open() as fh:
            doc = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InventoryError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where) from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise InventoryError(f"expected a mapping at the top, found {type(doc).__name__}", where=str(path))
    return doc


def settings_of(data: Mapping[str, Any], where: str) -> Data:
    """The typed view of a host's merged data; keys under `gce` that are not settings (the runtime facts
    of MIG discovery) are left out of it."""
    from fleet.inventory.schema import Data, GCESettings

    gce = data.get("gce")
    if isinstance(gce, Mapping):
        data = {**data, "gce": {k: v for k, v in gce.items() if k in GCESettings.model_fields}}
    model = _model(Data, dict(data), where)
    assert isinstance(model, Data)
    return model


def _validate(model: type[BaseModel], raw: Any, where: str) -> dict[str, Any]:
    """One layer as written (unset fields left out, so defaults never hide an inherited value)."""
    return _model(model, raw, where).model_dump(exclude_unset=True, exclude_none=True)


def _model(model: type[BaseModel], raw: Any, where: str) -> BaseModel:
    from pydantic import ValidationError

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InventoryError(f"expected a mapping, found {type(raw).__name__}", where=where)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal[")))
            # pydantic reports every member of a union; keep the message short and precise
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"field {loc or '(top)'}: {msg}")
        unique = list(dict.fromkeys(lines))
        raise InventoryError("; ".join(unique[:6]), where=where, hint="see docs/inventory.md") from None


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _group_chain(
    name: str, groups: Mapping[str, dict[str, Any]], where: str, seen: tuple[str, ...] = ()
) -> list[str]:
    if name in seen:
        raise InventoryError(f"group cycle: {' -> '.join((*seen, name))}", where=where)
    if name not in groups:
        raise InventoryError(
            f"unknown group {name!r}",
            where=where,
            hint=f"define it in groups.yaml (known: {', '.join(groups) or 'none'})",
        )
    chain = [name]
    for parent in groups[name].get("groups", []):
        for g in _group_chain(parent, groups, f"groups.yaml: group {name!r}", (*seen, name)):
            if g not in chain:
                chain.append(g)
    return chain


def load_defaults(name: str | None) -> tuple[Path, dict[str, Any], Data]:
    """An inventory's defaults.yaml alone, validated and typed: (directory, the layer as written, its
    settings). No hosts and no MIG discovery: for fleet-wide tasks that must work before the MIG
    exists (`fab infra.plan`)."""
    from fleet.inventory.schema import Defaults

    path = inventory_path(name)
    where = f"{path / 'defaults.yaml'}"
    defaults = _validate(Defaults, _read_yaml(path / "defaults.yaml", required=False), where)
    return path, defaults, settings_of(defaults.get("data", {}), where)


def load(name: str | None) -> Inventory:
    """Read, validate and resolve an inventory directory."""
    from fleet.inventory import mig as gce_inventory
    from fleet.inventory.schema import Defaults, GroupSpec, HostSpec

    path = inventory_path(name)
    defaults_raw = _read_yaml(path / "defaults.yaml", required=False)
    defaults = _validate(Defaults, defaults_raw, f"{path / 'defaults.yaml'}")
    has_migs = bool(defaults.get("data", {}).get("gce", {}).get("migs"))
    hosts_raw = _read_yaml(path / "hosts.yaml", required=not has_migs)
    groups_raw = _read_yaml(path / "groups.yaml", required=False)
    groups: dict[str, dict[str, Any]] = {}
    for gname, graw in groups_raw.items():
        where = f"{path / 'groups.yaml'}: group {gname!r}"
        if not isinstance(gname, str) or not re.fullmatch(HOST_NAME_RE, gname):
            raise InventoryError(f"invalid group name {gname!r}", where=str(path / "groups.yaml"))
        groups[gname] = _validate(GroupSpec, graw, where)

    discovered: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    if gce_inventory.wanted(defaults, hosts_raw):
        discovered = gce_inventory.discover(defaults, groups, str(path / "defaults.yaml"))
    if not hosts_raw and not discovered:
        raise InventoryError(
            "no hosts defined" + (" (and the MIGs in gce.migs have no members)" if has_migs else ""),
            where=str(path / "hosts.yaml"),
        )
    beat = gce_inventory.beat_host(discovered, defaults.get("data", {}).get("gce", {}).get("beat"))
    hosts: dict[str, FleetHost] = {}
    for hname in [*discovered, *(h for h in hosts_raw if h not in discovered)]:
        where = f"{path / 'hosts.yaml'}: host {hname!r}"
        if not isinstance(hname, str) or not re.fullmatch(HOST_NAME_RE, hname):
            raise InventoryError(
                f"invalid host name {hname!r}",
                where=str(path / "hosts.yaml"),
                hint="1-63 letters, digits, '.', '_' or '-', starting alphanumeric",
            )
        spec = _validate(HostSpec, hosts_raw.get(hname), where)
        if hname in discovered:  # the MIG member, with hosts.yaml's entry of that name over it
            where = f"{path / 'defaults.yaml'}: gce.migs member {hname!r}"
            spec = deep_merge(_validate(HostSpec, discovered[hname][0], where), spec)
        chain: list[str] = []
        for g in spec.get("groups", []):
            for member in _group_chain(g, groups, where):
                if member not in chain:
                    chain.append(member)
        merged: dict[str, Any] = {k: v for k, v in defaults.items() if k != "data"}
        data: dict[str, Any] = dict(defaults.get("data", {}))
        for g in reversed(chain):  # farthest group first, nearest last
            merged.update({k: v for k, v in groups[g].items() if k not in ("data", "groups")})
            data = deep_merge(data, groups[g].get("data", {}))
        merged.update({k: v for k, v in spec.items() if k not in ("data", "groups")})
        data = deep_merge(data, spec.get("data", {}))
        if hname == beat and "beat" not in data.get("roles", []):
            data["roles"] = [*data.get("roles", ["app"]), "beat"]
        typed = settings_of(data, where)
        if hname in discovered:
            data = deep_merge(data, {"gce": discovered[hname][1]})
        hostname = merged.get("hostname") or hname
        hosts[hname] = FleetHost(
            name=hname,
            hostname=hostname,
            port=int(merged.get("port", 22)),
            username=merged.get("username") or "root",
            groups=tuple(chain),
            data=data,
            settings=typed,
        )
        _check_host(hosts[hname], path, where)
    return Inventory(name=path.name, path=path, hosts=hosts, groups=groups, defaults=defaults)


def _check_host(host: FleetHost, path: Path, where: str) -> None:
    """Cross-field checks that the schema alone cannot express."""
    proxy = host.get("ssh.proxy", "none")
    guest_keys = host.get("ssh.host_keys") == "guest_attributes"
    # a MIG member being created may have no id yet: it is skipped, never connected to
    if (proxy == "iap" or guest_keys) and skip_reason(host) is None:
        missing = [f for f in ("project", "zone", "instance", "instance_id") if not host.get(f"gce.{f}")]
        if missing:
            what = "ssh.proxy is iap" if proxy == "iap" else "ssh.host_keys is guest_attributes"
            raise InventoryError(
                f"{what} but gce.{', gce.'.join(missing)} missing",
                where=where,
                hint="IAP tunnels and guest attributes need the instance name, zone and project; the host "
                "key is pinned under compute.<instance_id>",
            )
    key_file = host.get("ssh.key_file")
    if key_file:
        p = Path(os.path.expanduser(key_file))
        p = p if p.is_absolute() else path / p
        if not p.exists():
            raise InventoryError(f"field ssh.key_file: {p} does not exist", where=where)


def split_csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]
