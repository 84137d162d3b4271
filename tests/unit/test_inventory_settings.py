"""The typed view of a host's settings (`FleetHost.settings`): defaults declared once in the schema,
inherited values winning over them, runtime facts kept out, and errors naming file, host and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet.errors import InventoryError
from fleet.inventory import FleetHost, load
from fleet.inventory.schema import JumpProxy


def write(inv: Path, hosts: object, groups: object | None = None, defaults: object | None = None) -> Path:
    inv.mkdir(parents=True, exist_ok=True)
    (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    if groups is not None:
        (inv / "groups.yaml").write_text(yaml.safe_dump(groups))
    if defaults is not None:
        (inv / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    return inv


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    s = load(str(write(tmp_path / "inv", {"h1": {}}))).hosts["h1"].settings
    assert (s.ssh.proxy, s.ssh.connect_timeout, s.ssh.keepalive, s.ssh.connect_retries) == ("none", 10, 15, 2)
    assert (s.app.dir, s.app.project, s.app.http_port) == ("/opt/fleet/dify", "dify", 80)
    assert (s.app.keep_releases, s.app.min_free_mb) == (5, 512)
    assert (s.lb.kind, s.lb.check_interval, s.lb.healthy_threshold) == ("none", 5, 2)
    assert (s.lb.unhealthy_threshold, s.lb.draining_timeout) == (2, 10)
    r = s.rollout
    assert (r.canary, r.batch, r.max_failures, r.on_failure) == (1, "25%", "0", "rollback")
    assert (r.drain_wait, r.min_ready, r.health_timeout) == (None, None, None)  # derived from lb
    assert (s.gce.project, s.gce.migs, s.vars, s.secrets, s.monitoring) == (None, [], {}, {}, None)


def test_inherited_values_win_over_defaults_and_null_means_unset(tmp_path: Path) -> None:
    inv = load(
        str(
            write(
                tmp_path / "inv",
                {
                    "h1": {"groups": ["web"], "data": {"app": {"http_port": None}}},
                    "h2": {"data": {"ssh": {"keepalive": 0}}},
                },
                groups={"web": {"data": {"app": {"http_port": 8080}, "lb": {"draining_timeout": 0}}}},
                defaults={"data": {"ssh": {"proxy": {"jump": "bastion"}, "keepalive": 30}}},
            )
        )
    )
    h1, h2 = inv.hosts["h1"], inv.hosts["h2"]
    assert h1.settings.app.http_port == 8080  # null in hosts.yaml: the group's value stays
    assert h1.settings.lb.draining_timeout == 0  # a falsy value is a value, not the default
    assert h1.settings.ssh.keepalive == 30 and h2.settings.ssh.keepalive == 0
    assert h1.settings.ssh.proxy == JumpProxy(jump="bastion")
    # the layers as written: defaults are not dumped into the merged dict
    assert "app" not in h2.data and "lb" not in h2.data
    assert inv.defaults == {"data": {"ssh": {"proxy": {"jump": "bastion"}, "keepalive": 30}}}


def test_runtime_facts_stay_out_of_the_settings() -> None:
    host = FleetHost(
        "m1", "10.0.0.1", 22, "deploy", (), {"gce": {"zone": "europe-west1-b", "status": "RUNNING"}}
    )
    assert host.settings.gce.zone == "europe-west1-b"
    assert host.get("gce.status") == "RUNNING"
    assert not hasattr(host.settings.gce, "status")


def test_a_bad_value_names_file_host_and_field(tmp_path: Path) -> None:
    inv = write(tmp_path / "inv", {"h1": {"data": {"app": {"http_port": 70000}}}})
    with pytest.raises(InventoryError) as err:
        load(str(inv))
    assert "hosts.yaml" in str(err.value.where) and "'h1'" in str(err.value.where)
    assert "field data.app.http_port" in err.value.what


def test_a_bad_value_in_a_group_names_the_group_file(tmp_path: Path) -> None:
    inv = write(tmp_path / "inv", {"h1": {"groups": ["g"]}}, groups={"g": {"data": {"lb": {"kind": "f5"}}}})
    with pytest.raises(InventoryError) as err:
        load(str(inv))
    assert "groups.yaml" in str(err.value.where) and "'g'" in str(err.value.where)
    assert "field data.lb.kind" in err.value.what


def test_a_host_built_from_bad_data_names_host_and_field() -> None:
    with pytest.raises(InventoryError) as err:
        FleetHost("h9", "10.0.0.9", 22, "deploy", (), {"ssh": {"keepalive": -1}})
    assert "'h9'" in str(err.value.where) and "field ssh.keepalive" in err.value.what


def test_monitoring_defaults_and_empty_sections_resolve_as_before(tmp_path: Path) -> None:
    from fleet.alerting.policies import Threshold, config_from_inventory

    project = "my-project"
    data = {
        "gce": {"project": project, "migs": [{"zone": "europe-west1-b", "name": "dify-mig"}]},
        "monitoring": {"uptime": {"lb_url": "https://x.example.com/health"}, "scale": {"cpu": {"high": 0.8}}},
    }
    cfg = config_from_inventory(load(str(write(tmp_path / "a", {"h1": {}}, defaults={"data": data}))), {})
    assert (cfg.project, cfg.auto_close, cfg.period, cfg.timeout) == (project, 1800, 60, 10)
    assert (cfg.failing_locations, cfg.failure_duration, cfg.escalate_after) == (2, 60, 300)
    assert cfg.alerts_topic == f"projects/{project}/topics/fleet-alerts"
    assert (cfg.scale_migs, cfg.scale_step, cfg.scale_min, cfg.scale_max) == (("dify-mig",), 1, 1, 10)
    assert cfg.cpu == Threshold(high=0.8, duration=300) and cfg.latency is None and cfg.instance_checks == ()
    fn = cfg.functions
    assert (fn.runtime, fn.max_instances, fn.concurrency, fn.ingress) == ("python312", 1, 1, "internal-only")
    assert (fn.name_prefix, fn.env, fn.secrets) == (None, {}, {})

    # `scale: {}` (or cpu: {}) is no scale section: nothing to scale, no error about MIGs
    empty = {"gce": {"project": project}, "monitoring": {"scale": {}}}
    cfg = config_from_inventory(load(str(write(tmp_path / "b", {"h1": {}}, defaults={"data": empty}))), {})
    assert (cfg.scale_migs, cfg.cpu) == ((), None)


def test_a_merge_that_mixes_two_proxy_forms_is_an_error_naming_host_and_field(tmp_path: Path) -> None:
    # defaults' jump and a host's command merge key by key into a mapping that is neither form; this
    # used to pick the jump host silently
    inv = write(
        tmp_path / "inv",
        {"h1": {"data": {"ssh": {"proxy": {"command": "nc %h %p"}}}}},
        defaults={"data": {"ssh": {"proxy": {"jump": "bastion"}}}},
    )
    with pytest.raises(InventoryError) as err:
        load(str(inv))
    assert "'h1'" in str(err.value.where) and "field ssh.proxy" in err.value.what
