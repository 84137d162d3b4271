"""The inventory's data_layer section (validated on the way in, resolved with its defaults) and the
data layer stand-in's wire format (lists, errors, state file) as plain HTTP sees it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from fleet.errors import InventoryError
from fleet.inventory import load
from fleet.inventory.datalayer import resolve
from fleet.inventory.loader import Inventory
from fleet.inventory.schema import Data
from standins.datalayer_api import LocalDataLayerApi
from standins.errors import StandinError

SECTION = {"sql_instance": "dify-main", "redis_instance": "dify-redis", "network": "dify-vpc"}


def inventory(tmp_path: Path, data: dict[str, Any], hosts: dict[str, Any] | None = None) -> Path:
    inv = tmp_path / "prod"
    inv.mkdir(parents=True)
    default_hosts = {"vm-1": {"hostname": "10.0.0.5"}, "vm-2": {"hostname": "10.0.0.6"}}
    (inv / "hosts.yaml").write_text(yaml.safe_dump(default_hosts if hosts is None else hosts))
    (inv / "defaults.yaml").write_text(yaml.safe_dump({"username": "deploy", "data": data}))
    return inv


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sql_instance", "Dify-Main"),
        ("sql_instance", "-x"),
        ("redis_instance", "a" * 41),
        ("network", "vpc with space"),
        ("bucket", "my.bucket.example.com"),
        ("database_version", "MYSQL_8_0"),
        ("region", "--region"),
        ("psa_prefix_length", 30),
    ],
)
def test_bad_names_are_refused_on_the_way_in(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Data.model_validate({"data_layer": {**SECTION, field: value}})


def test_endpoints_must_be_local_stand_in_urls_and_unknown_keys_are_typos() -> None:
    ok = Data.model_validate({"data_layer": {**SECTION, "endpoints": {"sqladmin": "http://127.0.0.1:8086"}}})
    assert ok.data_layer is not None and ok.data_layer.endpoints.sqladmin == "http://127.0.0.1:8086"
    with pytest.raises(ValidationError, match="sqladmin"):
        Data.model_validate({"data_layer": {**SECTION, "endpoints": {"sqladmin": "http://x/; rm -rf /"}}})
    with pytest.raises(ValidationError, match="sql_instances"):
        Data.model_validate({"data_layer": {**SECTION, "sql_instances": "x"}})


def test_resolve_fills_project_region_and_bucket_from_the_rest_of_the_inventory(tmp_path: Path) -> None:
    inv = inventory(
        tmp_path,
        {
            "gce": {"project": "my-dify-project", "zone": "europe-west1-b"},
            "vars": {"GOOGLE_STORAGE_BUCKET_NAME": "dify-files", "REDIS_USE_SSL": True, "REDIS_PORT": 6378},
            "data_layer": SECTION,
        },
    )
    layer = resolve(load(str(inv)))
    assert (layer.project, layer.region, layer.network, layer.bucket) == (
        "my-dify-project",
        "europe-west1",
        "dify-vpc",
        "dify-files",
    )
    assert layer.pgvector_instance is None and [n for _, n in layer.sql_instances()] == ["dify-main"]
    # the app's vars as its env file holds them
    assert dict(layer.app_vars) == {
        "GOOGLE_STORAGE_BUCKET_NAME": "dify-files",
        "REDIS_USE_SSL": "true",
        "REDIS_PORT": "6378",
    }
    assert layer.network_path == "projects/my-dify-project/global/networks/dify-vpc"


def test_resolve_refuses_what_it_cannot_check(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="no data_layer section"):
        resolve(load(str(inventory(tmp_path / "a", {"gce": {"project": "p1"}}))))
    with pytest.raises(InventoryError, match="no valid bucket"):
        resolve(
            load(
                str(
                    inventory(
                        tmp_path / "b", {"gce": {"project": "p1", "region": "r1"}, "data_layer": SECTION}
                    )
                )
            )
        )
    with pytest.raises(InventoryError, match="no region"):
        resolve(
            load(
                str(
                    inventory(
                        tmp_path / "c", {"gce": {"project": "p1"}, "data_layer": {**SECTION, "bucket": "bb1"}}
                    )
                )
            )
        )
    with pytest.raises(InventoryError, match="no project"):
        resolve(
            load(str(inventory(tmp_path / "d", {"data_layer": {**SECTION, "bucket": "bb1", "region": "r1"}})))
        )


def test_hosts_that_disagree_are_an_error(tmp_path: Path) -> None:
    data = {
        "gce": {"project": "p1", "region": "europe-west1"},
        "vars": {"DB_HOST": "10.0.0.3"},
        "data_layer": {**SECTION, "bucket": "bb1"},
    }
    hosts = {
        "vm-1": {"hostname": "10.0.0.5"},
        "vm-2": {"hostname": "10.0.0.6", "data": {"vars": {"DB_HOST": "10.0.0.9"}}},
    }
    with pytest.raises(InventoryError, match="hosts disagree") as err:
        resolve(load(str(inventory(tmp_path, data, hosts))))
    assert err.value.hint is not None and "defaults.yaml" in err.value.hint


# ------------------------------------------------------------------------------------ the stand-in


def get(url: str, method: str = "GET") -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method != "GET" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_stand_in_speaks_each_api_s_lists_and_errors(tmp_path: Path) -> None:
    with LocalDataLayerApi() as api:
        api.put_sql_instance(
            "p1", {"name": "main", "region": "europe-west1", "databaseVersion": "POSTGRES_15"}
        )
        api.put_redis_instance("p1", "europe-west1", {"name": "cache", "tier": "STANDARD_HA"})
        api.put_redis_instance("p1", "us-east1", {"name": "other", "tier": "BASIC"})
        api.put_address("p1", {"name": "psa", "purpose": "VPC_PEERING", "network": "n"})
        api.put_address("p1", {"name": "lb", "purpose": "GCE_ENDPOINT"})

        code, body = get(f"{api.url}/v1/projects/p1/instances/main")
        assert (
            code == 200
            and body["kind"] == "sql#instance"
            and body["connectionName"] == "p1:europe-west1:main"
        )
        code, body = get(f"{api.url}/v1/projects/p1/instances")
        assert code == 200 and [i["name"] for i in body["items"]] == ["main"]
        assert get(f"{api.url}/v1/projects/p2/instances") == (200, {"kind": "sql#instancesList"})
        code, body = get(f"{api.url}/v1/projects/p1/instances/gone")
        assert code == 404 and body["error"]["errors"][0]["reason"] == "instanceDoesNotExist"

        code, body = get(f"{api.url}/v1/projects/p1/locations/-/instances")
        assert [i["name"] for i in body["instances"]] == [
            "projects/p1/locations/europe-west1/instances/cache",
            "projects/p1/locations/us-east1/instances/other",
        ]
        code, body = get(f"{api.url}/v1/projects/p1/locations/europe-west1/instances/gone")
        assert code == 404 and body["error"]["status"] == "NOT_FOUND"

        query = urllib.parse.quote('purpose = "VPC_PEERING"')
        code, body = get(f"{api.url}/compute/v1/projects/p1/global/addresses?filter={query}")
        assert code == 200 and [a["name"] for a in body["items"]] == ["psa"]
        code, body = get(f"{api.url}/compute/v1/projects/p1/global/addresses?filter=purpose%20%3E%201")
        assert code == 400
        code, body = get(f"{api.url}/storage/v1/b/nope")
        assert code == 404 and body["error"]["errors"][0]["reason"] == "notFound"
        code, body = get(f"{api.url}/v1/projects/p1/instances/main", method="POST")
        assert code == 405  # read-only: it stands in for what the user created

        state = tmp_path / "state.json"
        state.write_text(json.dumps(api.dump()))
    with LocalDataLayerApi(state=state) as again:
        assert get(f"{again.url}/v1/projects/p1/instances/main")[1]["databaseVersion"] == "POSTGRES_15"
    state.write_text(json.dumps({"sql": {"no-slash": {}}}))
    with pytest.raises(StandinError, match="bad key"):
        LocalDataLayerApi(state=state)


def test_an_inventory_without_hosts_yet_is_resolved_from_its_defaults(tmp_path: Path) -> None:
    """A MIG inventory before its first member: the loader gives no host, the defaults say it all."""
    data = {"gce": {"project": "p1", "region": "europe-west1"}, "data_layer": {**SECTION, "bucket": "bb1"}}
    inv = Inventory(name="prod", path=tmp_path, hosts={}, groups={}, defaults={"data": data})
    layer = resolve(inv)
    assert (layer.project, layer.region, layer.bucket, layer.sql_instance) == (
        "p1",
        "europe-west1",
        "bb1",
        "dify-main",
    )
    bad = {"data": {**data, "data_layer": {**SECTION, "sql_instance": "Bad_Name"}}}
    with pytest.raises(InventoryError, match="sql_instance"):
        resolve(Inventory(name="prod", path=tmp_path, hosts={}, groups={}, defaults=bad))


def test_the_example_in_docs_loads_and_resolves(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "infra-data.md").read_text()
    example = yaml.safe_load(doc.split("```yaml\n", 1)[1].split("```", 1)[0])
    layer = resolve(load(str(inventory(tmp_path, example["data"]))))
    assert (layer.project, layer.region, layer.network, layer.bucket) == (
        "my-dify-project",
        "europe-west1",
        "dify-vpc",
        "my-dify-project-files",
    )
    assert [name for _, name in layer.sql_instances()] == ["dify-main", "dify-vector"]
    assert layer.app_vars["REDIS_USE_SSL"] == "true" and layer.app_vars["REDIS_PORT"] == "6378"
