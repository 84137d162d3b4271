"""The local fleet's `inventory/local/infra/` (fleet/local/inventory_writer.py): a valid `infra:`
inventory whose desired state is what the local fleet is made of (pure: no API)."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleet.commands.agent import startup_script
from fleet.gcp import infra
from fleet.inventory.loader import load_defaults
from fleet.local import inventory_writer
from fleet.local.config import LocalConfig


def desired(
    tmp_path: Path, **overrides: object
) -> tuple[LocalConfig, infra.InfraConfig, list[infra.Desired]]:
    config = LocalConfig(root=tmp_path, **overrides)  # type: ignore[arg-type]
    directory = inventory_writer.write_infra(config, "http://127.0.0.1:8089", 3)
    path, defaults, data = load_defaults(str(directory))
    cfg = infra.config_from_data(data, str(path / "defaults.yaml"), username=defaults.get("username"))
    return config, cfg, infra.desired_state(cfg)


def test_the_local_infra_inventory_is_the_local_fleet(tmp_path: Path) -> None:
    config, cfg, wanted = desired(tmp_path)
    assert (cfg.project, cfg.region, cfg.mig, cfg.base_instance_name) == (
        "local-project",
        "europe-west1",
        "local-mig",
        "local",
    )
    assert cfg.zones[0] == config.zone and len(cfg.zones) == 2
    assert cfg.endpoint == "http://127.0.0.1:8089" and cfg.backend_service == config.backend
    by_kind = {(d.kind, d.name): d for d in wanted}
    (template,) = [d for d in wanted if d.kind == "instanceTemplates"]
    assert template.name.startswith("local-template-")
    props = template.body["properties"]
    items = {i["key"]: i["value"] for i in props["metadata"]["items"]}
    assert items["startup-script"] == startup_script(config.store_url)
    assert items["fleet-mig"] == "projects/local-project/regions/europe-west1/instanceGroupManagers/local-mig"
    assert (items["fleet-deploy-user"], items["fleet-beat"], items["fleet-health-metric"]) == (
        "deploy",
        "first",
        "true",
    )
    assert not any(k.endswith("-endpoint") for k in items)  # the stand-ins' endpoints are laid over locally
    live = config.lb_settings.liveness
    check = by_kind[("healthChecks", "local-liveness")].body
    assert (check["httpHealthCheck"]["requestPath"], check["checkIntervalSec"]) == (
        live.path,
        live.check_interval,
    )
    mig = by_kind[("instanceGroupManagers", "local-mig")].body
    assert mig["autoHealingPolicies"] == []  # the local fleet's autohealing is off unless asked for
    service = by_kind[("backendServices", config.backend)].body
    assert service["sessionAffinity"] == "NONE" and service["connectionDraining"]["drainingTimeoutSec"] == 10
    doc = yaml.safe_load((config.inventory_dir / "infra" / "defaults.yaml").read_text())
    assert doc["data"]["lb"]["kind"] == "gcp"


def test_autohealing_and_affinity_follow_the_fleets_settings(tmp_path: Path) -> None:
    _config, _cfg, wanted = desired(
        tmp_path, autohealing=True, lb={"session_affinity": "CLIENT_IP", "liveness": {"initial_delay": 60}}
    )
    mig = next(d for d in wanted if d.kind == "instanceGroupManagers").body
    assert mig["autoHealingPolicies"] == [
        {"healthCheck": "projects/local-project/global/healthChecks/local-liveness", "initialDelaySec": 60}
    ]
    assert next(d for d in wanted if d.kind == "backendServices").body["sessionAffinity"] == "CLIENT_IP"


def test_an_empty_list_matches_an_absent_field_in_the_diff() -> None:
    assert infra.diff_fields({"autoHealingPolicies": []}, {}) == []
    assert infra.diff_fields({"autoHealingPolicies": []}, {"autoHealingPolicies": [{"x": 1}]}) != []
