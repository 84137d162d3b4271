"""On-VM agent tasks: publish it to the release store, and the instance template's metadata that
installs and runs it (docs/agent.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fabric import task

from fleet.cli.common import fleet_errors, task_help
from fleet.cli.store import open_store


@task(help=task_help("inventory", "json"))
@fleet_errors
def publish(c: Any, inventory: str | None = None, json_: bool = False) -> None:
    """Build the agent (a zipapp of this checkout's fleet/agent and the host-side commands, standard
    library only) and upload it to the inventory's release store; `agent/current` names it, and every
    VM's startup script installs that one at boot. Content-addressed: publishing the same build twice
    writes nothing new."""
    from fleet.agent.build import build_bytes
    from fleet.store.agent import upload_agent
    from fleet.view import console as ui

    _, store = open_store(inventory)
    pyz = build_bytes()
    name = upload_agent(store, pyz)
    if json_:
        ui.print_json({"store": store.url, "object": name, "bytes": len(pyz)})
    else:
        print(f"gs://{store.bucket}/{name} ({len(pyz)} bytes); agent/current points at it")


@task(
    help=task_help(
        "inventory",
        "json",
        roles="the VMs' roles, comma-separated (default: app)",
        beat="first (the first member by name runs worker_beat) or none (default: the inventory's gce.beat)",
        mig="the MIG as projects/P/zones/Z/instanceGroupManagers/N (default: the inventory's first gce.migs)",
        deploy_user="the user the agent runs the release steps as (default: the inventory's SSH user)",
        script_file="write the startup script here, for gcloud --metadata-from-file startup-script=FILE",
    )
)
@fleet_errors
def template(
    c: Any,
    inventory: str | None = None,
    roles: str = "app",
    beat: str = "",
    mig: str = "",
    deploy_user: str = "",
    script_file: str = "",
    json_: bool = False,
) -> None:
    """The instance template's metadata for this fleet: where the release store is, the VMs' roles,
    the beat rule, the layout, and the startup script that installs the agent from the store and runs
    `fleet-agent boot` at every boot. Put them in the template (`gcloud compute instance-templates
    create ... --metadata=... --metadata-from-file=startup-script=FILE`): every VM the MIG creates,
    recreates or adds then serves the fleet's desired release with no operator."""
    from fleet.commands import base
    from fleet.commands import roles as role_rules
    from fleet.commands.agent import startup_script
    from fleet.errors import FleetError
    from fleet.view import console as ui

    inv, store = open_store(inventory)
    defaults = inv.defaults.get("data") or {}
    gce = defaults.get("gce") or {}
    app = defaults.get("app") or {}
    beat = beat or gce.get("beat") or "none"
    if beat not in role_rules.BEAT_MODES:
        raise FleetError(f"--beat {beat!r}", hint=" or ".join(role_rules.BEAT_MODES))
    role_list = [base.name(r.strip(), "role") for r in roles.split(",") if r.strip()] or ["app"]
    if not mig and gce.get("migs"):
        first = gce["migs"][0]
        location = first.get("zone") or first.get("region")
        scope = "zones" if first.get("zone") else "regions"
        project = first.get("project") or gce.get("project")
        mig = f"projects/{project}/{scope}/{location}/instanceGroupManagers/{first['name']}"
    user = deploy_user or (inv.defaults.get("username") or "")
    items = {
        "enable-guest-attributes": "TRUE",
        "fleet-name": store.fleet,
        "fleet-store": store.url,
        "fleet-roles": ",".join(role_list),
        "fleet-beat": beat,
        **({"fleet-mig": mig} if mig else {}),
        "fleet-app-dir": str(app.get("dir") or "/opt/fleet/dify"),
        "fleet-app-project": str(app.get("project") or "dify"),
        "fleet-http-port": str(app.get("http_port") or 80),
        "fleet-keep-releases": str(app.get("keep_releases") or 5),
        **({"fleet-deploy-user": base.name(user, "deploy user")} if user else {}),
    }
    script = startup_script(store.url)
    if script_file:
        Path(script_file).write_text(script)
    if json_:
        ui.print_json({"metadata": items, "startup-script": script})
        return
    for key, value in items.items():
        print(f"{key}={value}")
    if script_file:
        print(f"# startup-script: {script_file}")
        print(
            "# gcloud compute instance-templates create TEMPLATE ... "
            f"--metadata={','.join(f'{k}={v}' for k, v in items.items())} "
            f"--metadata-from-file=startup-script={script_file}"
        )
    else:
        print("# startup-script: pass --script-file FILE to write it")
