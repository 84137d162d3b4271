"""The local fleet's Compute side, made by the product's own `infra.apply` at every bring-up.

`LocalFleet.up` writes `inventory/local/infra/` (fleet/local/inventory_writer.py) and applies it to the
fleet's Compute endpoint with fleet/gcp/infra.py and the real google-cloud-compute client, exactly as
`fab infra.apply --inventory local/infra` does: instance template, readiness and liveness checks, the
regional MIG (adopted by the Docker-backed MIG), backend service, URL map, proxy, forwarding rule,
network, subnet, router, firewalls. The fleet then runs from what it created: members are made from
the template, haproxy takes the backend service's settings, the MIG applies its autohealing policy.
A second apply changes nothing.
"""

from __future__ import annotations

from fleet.errors import FleetError
from fleet.gcp import infra
from fleet.gcp.compute import Compute
from fleet.local import compute_endpoint, fromapi, inventory_writer
from fleet.local.config import LocalConfig
from fleet.local.lb import BackendConfig


def infra_config(config: LocalConfig, size: int) -> infra.InfraConfig:
    """The infra configuration of the fleet's local inventory (rewritten first)."""
    from fleet.inventory.loader import load_defaults

    url = compute_endpoint.endpoint_url(config)
    if url is None:
        raise FleetError("the fleet's Compute endpoint is not running", where="local infra")
    directory = inventory_writer.write_infra(config, url, size)
    path, defaults, data = load_defaults(str(directory))
    return infra.config_from_data(
        data, str(path / "defaults.yaml"), username=defaults.get("username"), endpoint=url
    )


def apply(config: LocalConfig, size: int) -> infra.InfraReport:
    """`infra.apply` of the local inventory against the fleet's endpoint; its report. A fleet whose
    autohealing was turned off has its MIG's policy cleared first (see `_clear_autohealing`)."""
    cfg = infra_config(config, size)
    clients = infra.InfraClients(cfg, Compute(cfg.endpoint, op_timeout=60))
    if not cfg.autohealing:
        mig = clients.get(infra.KINDS["instanceGroupManagers"], cfg.mig, cfg.region)
        if mig and mig.get("autoHealingPolicies"):
            _clear_autohealing(cfg, str(mig.get("fingerprint") or ""))
    return infra.apply(cfg, clients)


def _clear_autohealing(cfg: infra.InfraConfig, fingerprint: str) -> None:
    """PATCH `autoHealingPolicies: []` as Compute's JSON API takes it: google-cloud-compute drops empty
    lists from a patch (infra.apply says so and stops), so the local fleet sends this one itself."""
    import requests

    url = f"{cfg.endpoint}/compute/v1/{cfg.mig_path}"
    resp = requests.patch(url, json={"autoHealingPolicies": [], "fingerprint": fingerprint}, timeout=30)
    if resp.status_code != 200:
        raise FleetError(
            f"clearing the MIG's autohealing policy: HTTP {resp.status_code} {resp.text[:200]}", where=url
        )
    compute = Compute(cfg.endpoint, op_timeout=60)
    op = compute.types().Operation.from_json(resp.text, ignore_unknown_fields=True)
    compute.wait(op, project=cfg.project, region=cfg.region)


def infra_plan(config: LocalConfig, size: int) -> infra.InfraReport:
    """`infra.plan` of the local inventory: what an apply would change."""
    cfg = infra_config(config, size)
    return infra.plan(cfg, infra.InfraClients(cfg, Compute(cfg.endpoint)))


def mig_template(config: LocalConfig) -> str:
    """The instance template the MIG creates members from (read back through the API)."""
    cfg = infra_config_only(config)
    clients = infra.InfraClients(cfg, Compute(cfg.endpoint))
    found = clients.get(infra.KINDS["instanceGroupManagers"], cfg.mig, cfg.region)
    if not found or not found.get("instanceTemplate"):
        raise FleetError(f"MIG {cfg.mig} has no instance template", where="local infra")
    return fromapi.full_url(str(found["instanceTemplate"]))


def backend_config(config: LocalConfig) -> BackendConfig:
    """The fleet's backend service and its health check, read back through the API, as haproxy's
    settings (the same translation the endpoint applies when they change)."""
    cfg = infra_config_only(config)
    clients = infra.InfraClients(cfg, Compute(cfg.endpoint))
    service = clients.get(infra.KINDS["backendServices"], cfg.backend_service)
    if service is None:
        raise FleetError(f"backend service {cfg.backend_service} does not exist", where="local infra")

    def lookup(url: str) -> dict[str, object] | None:
        return clients.get(infra.KINDS["healthChecks"], url.rsplit("/", 1)[-1])

    return fromapi.backend_config(service, lookup)


def infra_config_only(config: LocalConfig) -> infra.InfraConfig:
    """The infra configuration of the inventory as written (not rewritten)."""
    from fleet.inventory.loader import load_defaults

    path, defaults, data = load_defaults(str(config.inventory_dir / inventory_writer.INFRA_DIR))
    return infra.config_from_data(data, str(path / "defaults.yaml"), username=defaults.get("username"))
