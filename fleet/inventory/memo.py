"""The inventory memo: what a full load and validation produced, reused while nothing it depends on changed.

`fab exec` spends most of its start-up before the first connection on pydantic (importing it, building
the schema's models: ~0.2 s of a 50-host run, issue 17). The memo is not a second validation path: it is
written only after `loader.load()` validated the inventory, and is used only when every input of that
load is unchanged; any change is a miss, and a miss runs the full load (its errors are the loader's own).

The memo of an inventory directory is keyed by (all of them must match, else it is a miss):

- the bytes of defaults.yaml, hosts.yaml and groups.yaml (or their absence), and the resolved directory;
- the environment the loader and the SSH layer read (fleet.settings.VARIABLES but FLEET_INVENTORY, which
  only picks the directory, and HOME, which `~` in ssh.key_file expands to);
- the source of every module that shaped it (the fleet.inventory, fleet.commands, fleet.gcp modules and
  fleet.settings/paths loaded when it was written, and the module of the SSH layer's `derive`),
  pydantic's and PyYAML's version files and the Python version: a code change is a miss;
- the key files the loader checks for existence still existing.

What it holds: per host the merged, validated data, address, port, user and groups; the validated
groups and defaults layers; and the connection parameters the SSH layer derived (`derive`). These are the
inventory files' own contents, which hold no secret values (data.secrets holds references: variable
names, file paths, Secret Manager names; the values are read when a release is rendered, never here).

Inventories with MIGs (gce.migs) are not memoized: their hosts come from Compute at every load; nor are
hosts whose host keys come from guest attributes (`derive` returns None).

Where: FLEET_INVENTORY_CACHE, else $XDG_CACHE_HOME/compose-fleet/inventory, else
~/.cache/compose-fleet/inventory (fleet.settings.Settings.inventory_cache_dir); `off` disables it. One
file per inventory directory, mode 0600 in a 0700 directory, replaced atomically (a write to a temporary
file, then rename), so concurrent runs each read a whole memo or none. A memo that cannot be read, is not
valid JSON or the wanted shape, is not owned by the user or is readable or writable by others, is ignored
and rewritten; a memo that cannot be written is skipped (the run goes on, it is only slower next time).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fleet import settings
from fleet.errors import FleetError
from fleet.inventory.loader import DEFERRED, FleetHost, Inventory, inventory_path
from fleet.inventory.loader import load as full_load

FORMAT = 1
INPUT_FILES = ("defaults.yaml", "hosts.yaml", "groups.yaml")
# fleet modules (by package) whose source shapes a memo: the loader, schema, MIG discovery, the command
# constants the schema uses, settings and paths; plus the module of `derive`
SOURCE_PACKAGES = ("fleet.inventory", "fleet.commands", "fleet.gcp", "fleet.settings", "fleet.paths")
THIRD_PARTY = ("pydantic.version", "yaml")  # their version lives in these files
ENV_EXCLUDED = (settings.INVENTORY_ENV, settings.INVENTORY_CACHE_ENV)

# per host: connection parameters as JSON-able mappings, or None when they cannot be memoized
Derive = Callable[[Inventory], "Mapping[str, Mapping[str, Any]] | None"]


def memo_file(directory: Path, inventory: Path) -> Path:
    """The memo of the inventory directory `inventory` (its resolved path) in the cache `directory`."""
    return directory / f"{hashlib.sha256(str(inventory).encode()).hexdigest()[:32]}.json"


def inputs(inventory: Path, environ: Mapping[str, str]) -> str:
    """The digest of the inventory's own inputs: its files' bytes, its directory, the environment."""
    h = hashlib.sha256()
    _part(h, "format", str(FORMAT).encode())
    _part(h, "python", sys.version.encode())
    _part(h, "inventory", str(inventory).encode())
    for name in INPUT_FILES:
        try:
            _part(h, name, (inventory / name).read_bytes())
        except FileNotFoundError:
            _part(h, name, b"\0absent")
    for var in sorted({*settings.VARIABLES, "HOME"} - set(ENV_EXCLUDED)):
        _part(h, f"env {var}", environ.get(var, "\0unset").encode())
    return h.hexdigest()


def fingerprint(inputs_digest: str, sources: list[str]) -> str | None:
    """The digest of everything a memo depends on (None: a source file is gone, so it cannot match)."""
    h = hashlib.sha256()
    _part(h, "inputs", inputs_digest.encode())
    for source in sources:
        try:
            _part(h, f"source {source}", Path(source).read_bytes())
        except OSError:
            return None
    return h.hexdigest()


def _part(h: Any, label: str, value: bytes) -> None:
    h.update(f"{label}\0{len(value)}\0".encode())
    h.update(value)


def load(name: str | None, derive: Derive) -> Inventory:
    """`loader.load(name)`, from the memo when nothing it depends on changed; otherwise the full load,
    then the memo written for the next run. The inventory is the same either way, and so are its
    errors: they come from the full load. `derive` (the SSH layer's) gives each host's connection
    parameters, kept in the memo and handed back as `Inventory.connections`."""
    current = settings.load()
    directory = current.inventory_cache_dir()
    if directory is None:
        return full_load(name)
    path = inventory_path(name)
    file = memo_file(directory, path)
    before = inputs(path, current.environ)
    memo = read(file, path, before)
    if memo is not None:
        return memo
    inv = full_load(name)
    # the files read before the load: one changed while it ran is not memoized with what it read
    if inputs(path, current.environ) == before:
        write(file, inv, derive, before, derive_module=derive.__module__)
    return inv


def read(file: Path, path: Path, inputs_digest: str) -> Inventory | None:
    """The inventory in the memo `file` if it was made from the same inputs (`inputs(path, environ)`)
    and sources, else None (missing, unreadable, not ours, stale, malformed)."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                return None  # someone else's, or open to others: not trusted (it names proxy commands)
            doc = json.loads(fh.read())
        if doc["format"] != FORMAT or doc["path"] != str(path):
            return None
        if fingerprint(inputs_digest, list(doc["sources"])) != doc["fingerprint"]:
            return None
        if not all(os.path.exists(p) for p in doc["files"]):
            return None  # a key file the loader requires is gone: its error comes from the full load
        hosts = {
            h["name"]: FleetHost(
                name=h["name"],
                hostname=h["hostname"],
                port=h["port"],
                username=h["username"],
                groups=tuple(h["groups"]),
                data=h["data"],
                settings=DEFERRED,
            )
            for h in doc["hosts"]
        }
        connections = doc["connections"]
        if set(connections) != set(hosts) or not all(isinstance(c, dict) for c in connections.values()):
            return None
        return Inventory(
            name=doc["name"],
            path=path,
            hosts=hosts,
            groups=doc["groups"],
            defaults=doc["defaults"],
            connections=connections,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def memoizable(inv: Inventory) -> bool:
    """Hosts that come from MIGs are read from Compute at every load: never memoized."""
    gce = (inv.defaults.get("data") or {}).get("gce") or {}
    return not gce.get("migs") and not any(h.get("gce.mig") for h in inv.hosts.values())


def write(file: Path, inv: Inventory, derive: Derive, inputs_digest: str, *, derive_module: str) -> bool:
    """Write the memo of `inv`, freshly loaded from the inputs `inputs_digest`; False (nothing written)
    when it cannot be memoized or the cache cannot be written. Never raises for the cache's sake."""
    if not memoizable(inv):
        return False
    try:
        connections = derive(inv)
    except FleetError:
        return False  # the task itself meets this error, from the same code, when it connects
    if connections is None:
        return False
    sources = _sources(derive_module)
    digest = fingerprint(inputs_digest, sources)
    if digest is None:
        return False
    doc = {
        "format": FORMAT,
        "path": str(inv.path),
        "fingerprint": digest,
        "sources": sources,
        "files": sorted({str(c["key_file"]) for c in connections.values() if c.get("key_file")}),
        "name": inv.name,
        "groups": inv.groups,
        "defaults": inv.defaults,
        "hosts": [
            {
                "name": h.name,
                "hostname": h.hostname,
                "port": h.port,
                "username": h.username,
                "groups": list(h.groups),
                "data": h.data,
            }
            for h in inv.hosts.values()
        ],
        "connections": {name: dict(c) for name, c in connections.items()},
    }
    try:
        text = json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError):
        return False  # a value JSON cannot hold exactly
    if not _same(json.loads(text), doc):
        return False  # a value JSON would change (a tuple, a non-string key): the memo would differ
    return _atomic_write(file, text.encode())


def _sources(derive_module: str) -> list[str]:
    names = [
        name
        for name in sys.modules
        if name in SOURCE_PACKAGES
        or name.startswith(tuple(f"{p}." for p in SOURCE_PACKAGES))
        or name in THIRD_PARTY
        or name == derive_module
    ]
    files = {getattr(sys.modules[n], "__file__", None) for n in names}
    return sorted(f for f in files if f)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (JSON turns a tuple into a list, 1.0 stays 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _atomic_write(file: Path, data: bytes) -> bool:
    import tempfile

    directory = file.parent
    try:
        _private_dir(directory)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".memo-", suffix=".tmp")  # mode 0600
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, file)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True


def _private_dir(directory: Path) -> None:
    """Create `directory` and the missing parents it names under the first existing one with mode 0700."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
