"""The inventory's `data_layer` section, resolved into what fleet/gcp/datalayer.py checks.

Fleet-wide: every host must say the same (set it in defaults.yaml). Unset fields come from the rest of
the inventory: project from gce.project, region from gce.region or gce.zone's region, the bucket from
vars.GOOGLE_STORAGE_BUCKET_NAME. The app's own view of the services (DB_HOST, REDIS_PORT, ...) comes
from vars, so the check can say where it disagrees with what exists.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from fleet.errors import InventoryError
from fleet.gcp.datalayer import DataLayer, Endpoints
from fleet.inventory.loader import Inventory
from fleet.inventory.schema import BUCKET_PATTERN, Data, DataLayerSettings

HINT = "see docs/infra-data.md"
# the app's settings (Dify's env) that name the data services: cross-checked against what exists
APP_VARS = (
    "DB_HOST",
    "DB_PORT",
    "PGVECTOR_HOST",
    "PGVECTOR_PORT",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_USE_SSL",
    "GOOGLE_STORAGE_BUCKET_NAME",
)


def resolve(inv: Inventory) -> DataLayer:
    """The data layer the inventory names; InventoryError when it names none or hosts disagree."""
    where = f"inventory {inv.name}"
    found: dict[str, tuple[DataLayerSettings | None, dict[str, str], dict[str, Any], str]] = {}
    for host in inv.hosts.values():
        s = host.settings
        app = {k: _text(s.vars[k]) for k in APP_VARS if k in s.vars}
        gce = {"project": s.gce.project, "region": s.gce.region, "zone": s.gce.zone}
        key = repr(
            (s.data_layer.model_dump() if s.data_layer else None, sorted(app.items()), sorted(gce.items()))
        )
        found.setdefault(key, (s.data_layer, app, gce, host.name))
    if not inv.hosts:  # a MIG inventory with no member yet: the defaults say it all
        found["defaults"] = _from_defaults(inv, where)
    if len(found) > 1:
        names = ", ".join(sorted(v[3] for v in found.values())[:4])
        raise InventoryError(
            f"hosts disagree on data_layer, gce.project/region/zone or the app's data vars ({names})",
            where=where,
            hint="the data layer is fleet-wide: set data_layer, gce and vars in defaults.yaml",
        )
    settings, app, gce, _ = next(iter(found.values()), (None, {}, {}, ""))
    return _layer(settings, app, gce, where)


def resolve_defaults(data: Data, where: str) -> DataLayer | None:
    """The data layer from defaults.yaml's settings alone (no hosts, no MIG discovery: `fab infra.plan`
    runs before the MIG exists); None when the inventory names no data layer."""
    if data.data_layer is None:
        return None
    app = {k: _text(data.vars[k]) for k in APP_VARS if k in data.vars}
    gce = {"project": data.gce.project, "region": data.gce.region, "zone": data.gce.zone}
    return _layer(data.data_layer, app, gce, where)


def _layer(
    settings: DataLayerSettings | None, app: dict[str, str], gce: dict[str, Any], where: str
) -> DataLayer:
    if settings is None:
        raise InventoryError(
            "the inventory has no data_layer section",
            where=where,
            hint="add `data_layer: {sql_instance: ..., redis_instance: ..., network: ...}` under data in "
            f"defaults.yaml; {HINT}",
        )
    project = settings.project or gce.get("project")
    if not project:
        raise InventoryError(
            "no project for the data layer", where=where, hint="set data_layer.project or gce.project"
        )
    region = settings.region or gce.get("region") or _zone_region(gce.get("zone"))
    if not region:
        raise InventoryError(
            "no region for the data layer", where=where, hint="set data_layer.region (or gce.region/gce.zone)"
        )
    bucket = settings.bucket or app.get("GOOGLE_STORAGE_BUCKET_NAME")
    if not bucket or not re.fullmatch(BUCKET_PATTERN, bucket):
        raise InventoryError(
            f"no valid bucket for the data layer (got {bucket!r})",
            where=where,
            hint="set data_layer.bucket or vars.GOOGLE_STORAGE_BUCKET_NAME (3-63 of a-z 0-9 _ -)",
        )
    ep = settings.endpoints
    return DataLayer(
        project=project,
        region=region,
        network=settings.network,
        sql_instance=settings.sql_instance,
        pgvector_instance=settings.pgvector_instance,
        database_version=settings.database_version,
        sql_tier=settings.sql_tier,
        redis_instance=settings.redis_instance,
        redis_size_gb=settings.redis_size_gb,
        redis_version=settings.redis_version,
        bucket=bucket,
        bucket_location=settings.bucket_location,
        psa_range=settings.psa_range,
        psa_prefix_length=settings.psa_prefix_length,
        app_vars=app,
        endpoints=Endpoints(ep.sqladmin, ep.redis, ep.storage, ep.compute),
    )


def _from_defaults(
    inv: Inventory, where: str
) -> tuple[DataLayerSettings | None, dict[str, str], dict[str, Any], str]:
    data = inv.defaults.get("data") or {}
    raw = data.get("data_layer")
    try:
        settings = DataLayerSettings.model_validate(raw) if raw else None
    except ValidationError as exc:
        raise InventoryError(f"data_layer: {exc}", where=f"{where}: defaults", hint=HINT) from None
    variables = data.get("vars") or {}
    app = {k: _text(variables[k]) for k in APP_VARS if k in variables}
    gce = {k: (data.get("gce") or {}).get(k) for k in ("project", "region", "zone")}
    return settings, app, gce, "defaults"


def _text(value: Any) -> str:
    """A var as the app's env file holds it (booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _zone_region(zone: str | None) -> str | None:
    m = re.fullmatch(r"([a-z]+-[a-z]+[0-9]+)-[a-z]", zone or "")
    return m.group(1) if m else None
