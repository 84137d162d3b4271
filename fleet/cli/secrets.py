"""`fab secrets.push` and `fab secrets.list`: the app secrets the inventory keeps in Secret Manager
(`data.secrets: {KEY: {secret_manager: NAME}}`). Values are read from files, stdin or the environment,
never from the command line (shell history, `ps`), and are never printed."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabric import task

from fleet.cli.common import fleet_errors, select, task_help
from fleet.errors import FleetError

if TYPE_CHECKING:
    from fleet.gcp.secretmanager import SecretManager
    from fleet.inventory import Inventory
    from fleet.release.secrets import SecretVersionRef


@dataclass(frozen=True)
class Backed:
    """One inventory secret kept in Secret Manager (the same KEY may point at different secrets on
    different hosts; each is its own entry)."""

    key: str
    ref: SecretVersionRef
    hosts: tuple[str, ...]


def backed_secrets(inv: Inventory) -> list[Backed]:
    """Every `{secret_manager: ...}` reference of the inventory's hosts, by KEY and secret."""
    from fleet.release.secrets import secret_manager_refs

    found: dict[tuple[str, str], tuple[SecretVersionRef, list[str]]] = {}
    for host in inv.hosts.values():
        refs = secret_manager_refs(
            host.get("secrets") or {}, project=host.settings.gce.project, where=host.name
        )
        for key, ref in refs.items():
            found.setdefault((key, ref.name), (ref, []))[1].append(host.name)
    return [Backed(key, ref, tuple(hosts)) for (key, _), (ref, hosts) in sorted(found.items())]


def _client(inv: Inventory) -> SecretManager:
    from fleet.gcp import secretmanager as gsm

    configured = next((h.settings.gce.secretmanager_endpoint for h in inv.hosts.values()), None)
    return gsm.SecretManager(gsm.endpoint_for(configured))


def _read_value(key: str, value_file: str | None, from_env: str | None, environ: Any) -> str:
    """The value to push for `key`: a file (`-` = stdin, one trailing newline dropped) or a variable."""
    if value_file is not None:
        try:
            text = sys.stdin.read() if value_file == "-" else Path(value_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FleetError(f"secret {key}: cannot read {value_file} ({exc.__class__.__name__})") from None
        value = text.removesuffix("\n").removesuffix("\r")
        source = "stdin" if value_file == "-" else f"file {value_file}"
    else:
        assert from_env is not None
        value = environ.get(from_env, "")
        source = f"environment variable {from_env}"
    if not value:
        raise FleetError(f"secret {key}: {source} is empty or unset", hint="nothing was pushed")
    return value


@task(
    help=task_help(
        "inventory",
        "json",
        name="the inventory's secret KEY (under data.secrets) to push",
        value_file="read the value of --name from this file ('-' = stdin)",
        from_env="read the value of --name from this environment variable",
        all_from_env="push every Secret-Manager-backed KEY, each from the environment variable named KEY",
        dry_run="check the values and show what would be pushed; change nothing",
    ),
    name="push",
)
@fleet_errors
def push(
    c: Any,
    inventory: str | None = None,
    name: str | None = None,
    value_file: str | None = None,
    from_env: str | None = None,
    all_from_env: bool = False,
    json_: bool = False,
    dry_run: bool = False,
) -> None:
    """Add a new Secret Manager version for inventory secrets (creating the secret when absent);
    prints KEY -> version name, never a value. Deploy afterwards: a release pins the version it read."""
    from fleet import settings
    from fleet.release import secrets as sec
    from fleet.view import console as ui

    single = name is not None
    if single == all_from_env or (single and (value_file is None) == (from_env is None)):
        raise FleetError(
            "say what to push",
            hint="--name KEY with --value-file PATH (or -) or --from-env VAR, or --all-from-env",
        )
    if all_from_env and (value_file is not None or from_env is not None):
        raise FleetError(
            "--all-from-env takes each value from the variable named KEY", hint="drop --value-file"
        )
    inv, _ = select(inventory, None, None, None)
    backed = backed_secrets(inv)
    if single:
        key = name or ""
        backed = [b for b in backed if b.key == key]
        if not backed:
            raise FleetError(
                f"secret {key} is not a Secret Manager reference in inventory {inv.name}",
                hint="add it under data.secrets as {" + key + ": {secret_manager: NAME}}",
            )
    elif not backed:
        raise FleetError(
            f"inventory {inv.name} has no {{secret_manager: ...}} secrets", hint="nothing to push"
        )
    environ = settings.load().environ
    values: dict[str, str] = {}
    missing: list[str] = []
    for b in backed:
        if b.key in values:
            continue
        if all_from_env and not environ.get(b.key):
            missing.append(b.key)
            continue
        values[b.key] = _read_value(b.key, value_file, from_env if single else b.key, environ)
    if missing:
        raise FleetError(
            f"environment variables not set: {', '.join(missing)}",
            hint="export each KEY=value (or push them one by one with --name); nothing was pushed",
        )
    sec.remember(values.values())
    client = _client(inv)
    results: list[dict[str, Any]] = []
    for b in backed:
        entry: dict[str, Any] = {"key": b.key, "secret": b.ref.secret_name, "hosts": list(b.hosts)}
        if b.ref.version != "latest":
            entry["warning"] = (
                f"the inventory pins versions/{b.ref.version}: releases keep using it until you change it"
            )
        if dry_run:
            info = client.describe(b.ref.secret_name)
            entry.update(version=None, created=info is None, current=info.latest if info else None)
        else:
            version, created = client.add_version(b.ref.secret_name, values[b.key])
            entry.update(version=version, created=created)
        results.append(entry)
    if json_:
        ui.print_json({"inventory": inv.name, "dry_run": dry_run, "pushed": results})
        return
    for e in results:
        if dry_run:
            now = e["current"] or "none"
            what = "would create the secret and add" if e["created"] else "would add"
            print(f"{e['key']} -> {e['secret']}: {what} a version (latest now: {now})")
        else:
            print(f"{e['key']} -> {e['version']}" + (" (created the secret)" if e["created"] else ""))
        if "warning" in e:
            ui.error(f"{e['key']}: {e['warning']}")


@task(help=task_help("inventory", "json"), name="list")
@fleet_errors
def list_(c: Any, inventory: str | None = None, json_: bool = False) -> None:
    """The inventory's Secret Manager secrets: KEY, secret, referenced version, latest version and its
    state (never a value). A missing secret is listed as such."""
    from fleet.view import console as ui

    inv, _ = select(inventory, None, None, None)
    client = _client(inv)
    rows: list[dict[str, Any]] = []
    for b in backed_secrets(inv):
        info = client.describe(b.ref.secret_name)
        rows.append(
            {
                "key": b.key,
                "secret": b.ref.secret_name,
                "reference": b.ref.version,
                "exists": info is not None,
                "latest": info.latest if info else None,
                "latest_state": info.latest_state if info else None,
                "versions": info.versions if info else 0,
                "hosts": list(b.hosts),
            }
        )
    if json_:
        ui.print_json({"inventory": inv.name, "secrets": rows})
        return
    if not rows:
        print(f"inventory {inv.name} has no {{secret_manager: ...}} secrets")
    for r in rows:
        if not r["exists"]:
            state = "MISSING (fab secrets.push)"
        elif r["latest"] is None:
            state = "no versions (fab secrets.push)"
        else:
            state = f"latest {r['latest'].rsplit('/', 1)[-1]} {r['latest_state']}, {r['versions']} version(s)"
        print(f"{r['key']:<24} {r['secret']} @{r['reference']}: {state}")
