"""The local alert source: conditions, the load signal, the incident payload the functions parse, and
the monitor's rounds against a real HTTP /health endpoint (no fleet needed)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fleet.errors import FleetError
from fleet.local.config import LocalConfig
from fleet.scenarios.alertpath import AlertPathSettings, function_env, server_argv
from fleet.scenarios.monitor import (
    FAILING,
    LOAD_HIGH,
    LOAD_LOW,
    STILL_FAILING,
    HealthCount,
    LoadSignal,
    MonitoredInstance,
    MonitorSettings,
    health_conditions,
    incident_doc,
    load_conditions,
    parse_backend,
    probe,
)
from fleet.scenarios.selfheal import break_api_script
from functions import fleet_contract as contract
from tests.unit.monitor_rig import (
    MIG,
    PROJECT,
    ZONE,
    MonitorRig,
    fn_incidents,
    fn_policy,
    fn_settings,
    policies,
    stat,
)

# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"period": 0}, "period"),
        ({"fail_after": 0}, "fail_after"),
        ({"fail_after": 5, "escalate_after": 5}, "escalate_after"),
        ({"load_high": 2.0, "load_low": 2.0}, "load_low"),
        ({"renotify": -1}, "renotify"),
    ],
)
def test_bad_monitor_settings_are_refused_with_the_field_named(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(FleetError, match=words):
        MonitorSettings(**kwargs)


# --------------------------------------------------------------------------- conditions


def test_failures_open_then_escalate_no_data_changes_nothing_passes_close() -> None:
    s = MonitorSettings(fail_after=2, escalate_after=4, pass_after=2)
    count = HealthCount()
    seen = []
    for result in [False, False, None, None, False, True, False, False, False, False, True, True]:
        count.add(result)
        seen.append(health_conditions(count, s))
    assert seen[1] == {FAILING: True, STILL_FAILING: None}
    assert seen[3] == seen[1], "no data (an action on the member) neither counts nor resets"
    assert seen[4] == {FAILING: True, STILL_FAILING: None}, "the count went on across the gap: 3"
    assert seen[5] == {FAILING: None, STILL_FAILING: None}, "one pass is not enough to close"
    assert seen[9] == {FAILING: True, STILL_FAILING: True}
    assert seen[11] == {FAILING: False, STILL_FAILING: False}


def test_load_signal_is_requests_per_serving_instance_and_survives_a_counter_reset() -> None:
    signal = LoadSignal()
    assert signal.add(1000, 2, 10.0, keep=3) is None  # first reading
    assert signal.add(1040, 2, 12.0, keep=3) == pytest.approx(10.0)
    assert signal.add(5, 2, 13.0, keep=3) is None  # haproxy restarted
    assert signal.add(25, 0, 14.0, keep=3) == pytest.approx(20.0), "no server UP counts as one"
    assert signal.rates == [pytest.approx(10.0), pytest.approx(20.0)]


def test_load_conditions_need_every_round_beyond_to_open_and_none_to_close() -> None:
    s = MonitorSettings(load_high=5, load_low=1, load_rounds=3)
    assert load_conditions(LoadSignal(rates=[6, 7]), s) == {LOAD_HIGH: None, LOAD_LOW: None}
    assert load_conditions(LoadSignal(rates=[6, 7, 8]), s) == {LOAD_HIGH: True, LOAD_LOW: False}
    assert load_conditions(LoadSignal(rates=[6, 4, 8]), s) == {LOAD_HIGH: None, LOAD_LOW: False}
    assert load_conditions(LoadSignal(rates=[0.5, 0, 0.2]), s) == {LOAD_HIGH: False, LOAD_LOW: True}
    unset = MonitorSettings(load_rounds=1)
    assert load_conditions(LoadSignal(rates=[100]), unset) == {LOAD_HIGH: None, LOAD_LOW: None}


def test_backend_counter_and_servers_are_read_from_show_stat() -> None:
    text = stat({"local-1": ("UP", "127.0.0.1:8101"), "local-2": ("DOWN", "127.0.0.1:8102")}, 4242)
    total, servers = parse_backend(text, "app")
    assert total == 4242
    assert servers == {"local-1": ("UP", "127.0.0.1:8101"), "local-2": ("DOWN", "127.0.0.1:8102")}
    with pytest.raises(FleetError, match="show stat"):
        parse_backend("Unknown command", "app")


# --------------------------------------------------------------------------- policies and payload


def test_policies_carry_the_labels_monitoring_apply_sets_and_the_functions_read() -> None:
    found = policies()
    assert found.heal.user_labels[contract.POLICY_ACTION_LABEL] == contract.POLICY_ACTION_HEAL
    assert found.heal.display_name == "compose-fleet local: instance health"
    assert found.scale_out is not None and found.scale_in is not None
    assert found.scale_out.user_labels[contract.POLICY_SCALE_DIRECTION_LABEL] == "out"
    assert found.scale_in.user_labels[contract.POLICY_SCALE_DIRECTION_LABEL] == "in"
    for ref in (found.scale_out, found.scale_in):
        labels = ref.user_labels
        assert labels[contract.POLICY_ACTION_LABEL] == contract.POLICY_ACTION_SCALE
        assert (labels[contract.POLICY_SCALE_MIN_LABEL], labels[contract.POLICY_SCALE_MAX_LABEL]) == (
            "2",
            "3",
        )
        assert labels[contract.POLICY_MIG_LABEL] == MIG


class Health:
    """A real HTTP /health whose answer the test switches."""

    def __init__(self) -> None:
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"status": "ok" if outer.status == 200 else "down"}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def health() -> Iterator[Health]:
    h = Health()
    yield h
    h.close()


def test_probe_passes_on_200_only_and_refuses_non_loopback(health: Health) -> None:
    assert probe(health.address, 1.0)
    health.status = 502
    assert not probe(health.address, 1.0)
    assert not probe("127.0.0.1:1", 0.5)
    with pytest.raises(FleetError, match="refusing"):
        probe("10.0.0.1:80", 0.5)


class Rig(MonitorRig):
    """A Monitor over one real /health endpoint, with the MIG and the LB given as data."""

    def __init__(self, health: Health, settings: MonitorSettings) -> None:
        self.health = health
        self.member = MonitoredInstance("local-2", "222", "RUNNING", "NONE")
        self.total = 0
        super().__init__(
            settings,
            policies=policies(),
            members=lambda: [self.member],
            lb_stat=lambda: stat({"local-2": ("UP", health.address)}, self.total),
        )

    def rounds(self, n: int, step: float = 1.0) -> list[dict[str, Any]]:
        return self.run(n, step)


def test_monitor_opens_escalates_pauses_renotifies_and_closes(health: Health) -> None:
    rig = Rig(health, MonitorSettings(fail_after=2, escalate_after=4, pass_after=2, renotify=10))
    assert rig.rounds(3) == [], "healthy: nothing to say"
    health.status = 502
    first = rig.rounds(2)
    assert [(i["condition_name"], i["state"]) for i in first] == [("instance /health failing", "open")]
    rig.member = MonitoredInstance("local-2", "222", "RUNNING", "RESTARTING")
    assert rig.rounds(5) == [], "no data while the MIG acts on the member"
    rig.member = MonitoredInstance("local-2", "222", "RUNNING", "NONE")
    second = rig.rounds(2)
    assert [(i["condition_name"], i["state"]) for i in second] == [("instance /health still failing", "open")]
    assert second[0]["incident_id"] != first[0]["incident_id"], "a new incident: autoheal escalates on it"
    again = rig.rounds(3, step=5.0)  # 15 s later: both re-sent once more (renotify every 10 s)
    assert {i["incident_id"] for i in again} == {first[0]["incident_id"], second[0]["incident_id"]}
    assert all(i["state"] == "open" for i in again)

    rig.member = MonitoredInstance("local-2", "333", "RUNNING", "NONE")  # recreated: a new VM, same member
    health.status = 200
    closed = rig.rounds(2)
    assert sorted((i["incident_id"], i["state"]) for i in closed) == sorted(
        [(first[0]["incident_id"], "closed"), (second[0]["incident_id"], "closed")]
    )
    for i in closed:
        assert i["resource"]["labels"]["instance_id"] == "222", "the VM the incident was about"
        assert i["ended_at"] >= i["started_at"]
    kinds = [e.kind for e in rig.monitor.timeline()]
    assert "action" in kinds and "incident" in kinds


def test_monitor_load_conditions_open_scale_incidents(health: Health) -> None:
    rig = Rig(health, MonitorSettings(load_high=5, load_low=1, load_rounds=2))
    rig.rounds(1)
    low = rig.rounds(2)  # no requests at all: below the low threshold
    assert [(i["condition_name"], i["policy_user_labels"]["fleet-scale-direction"]) for i in low] == [
        ("LB requests per serving instance below 1/s", "in")
    ]
    events = []
    for _ in range(3):
        rig.total += 10  # 10 requests/s, one server UP
        events += rig.rounds(1)
    assert [(i["state"], i["policy_user_labels"]["fleet-scale-direction"]) for i in events] == [
        ("closed", "in"),
        ("open", "out"),
    ]
    out = events[1]
    assert out["resource"] == {
        "type": "gce_instance_group",
        "labels": {"project_id": PROJECT, "location": ZONE, "instance_group_name": MIG},
    }
    assert out["observed_value"] == "10.000" and out["threshold_value"] == "5"


def test_the_functions_parse_the_monitors_incidents_and_find_their_target(health: Health) -> None:
    rig = Rig(health, MonitorSettings(fail_after=2, escalate_after=3, load_low=1, load_rounds=1))
    health.status = 503
    sent = rig.rounds(3)
    heal = next(i for i in sent if i["policy_user_labels"].get("fleet-action") == "autoheal")
    scale = next(i for i in sent if i["policy_user_labels"].get("fleet-action") == "scale")
    for raw in (heal, scale):
        parsed = fn_incidents.parse_incident(json.dumps({"version": "1.2", "incident": raw}).encode())
        assert parsed.state == "open" and parsed.version == "1.2"
        assert isinstance(raw["observed_value"], str) and isinstance(raw["threshold_value"], str)
    target = fn_policy.heal_target(fn_incidents.parse_incident(json.dumps(incident_doc_of(heal)).encode()))
    assert isinstance(target, fn_policy.InstanceTarget)
    assert (target.project, target.zone, target.instance_id, target.name) == (PROJECT, ZONE, "222", "local-2")
    cfg = fn_settings.load(
        {"FLEET_MIGS": f"{PROJECT}/{ZONE}/{MIG}", "FLEET_SCALE_MIN": "1", "FLEET_SCALE_MAX": "5"}
    )
    parsed_scale = fn_incidents.parse_incident(json.dumps(incident_doc_of(scale)).encode())
    intent = fn_policy.scale_intent(parsed_scale, cfg)
    assert isinstance(intent, fn_policy.ScaleIntent)
    assert (intent.direction, intent.minimum, intent.maximum) == ("in", 2, 3), "bounds from the policy labels"
    assert fn_policy.choose_mig(parsed_scale, cfg.migs) == cfg.migs[0]


def incident_doc_of(raw: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.2", "incident": raw}


def test_incident_doc_has_monitorings_schema_fields(health: Health) -> None:
    rig = Rig(health, MonitorSettings(fail_after=1, escalate_after=2))
    health.status = 500
    rig.rounds(1)
    incident = rig.monitor.incidents()[0]
    doc = incident_doc(incident, PROJECT)
    assert doc["version"] == "1.2"
    assert {
        "incident_id",
        "scoping_project_id",
        "url",
        "started_at",
        "ended_at",
        "state",
        "resource",
        "metric",
        "policy_name",
        "policy_user_labels",
        "condition",
        "condition_name",
        "threshold_value",
        "observed_value",
        "summary",
    } <= set(doc["incident"])
    assert doc["incident"]["ended_at"] is None and doc["incident"]["state"] == "open"
    assert doc["incident"]["condition"]["name"].startswith(f"projects/{PROJECT}/alertPolicies/")


# --------------------------------------------------------------------------- alert path wiring


def test_function_env_is_what_the_functions_accept_for_the_local_mig() -> None:
    config = LocalConfig()
    env = function_env(
        config,
        AlertPathSettings(),
        compute_url="http://127.0.0.1:8089",
        pubsub_host="127.0.0.1:1234",
        webhooks={
            "slack": "http://127.0.0.1:9/s",
            "chat": "http://127.0.0.1:9/c",
            "generic": "http://127.0.0.1:9/g",
        },
        scale_min=4,
        scale_max=5,
    )
    cfg = fn_settings.load(env)
    assert [str(m) for m in cfg.migs] == ["local-project/europe-west1-b/local-mig"]
    assert not cfg.migs[0].regional, "the local zone is a zone"
    assert (cfg.scale_min, cfg.scale_max, cfg.heal_initial_delay) == (4, 5, 10)
    assert cfg.events_topic == "projects/local-project/topics/fleet-events"
    assert cfg.compute_endpoint == "http://127.0.0.1:8089"


def test_server_argv_runs_one_entry_point_on_loopback() -> None:
    argv = server_argv("autoheal", 8123, python="/venv/bin/python")
    assert argv[0] == "/venv/bin/functions-framework"
    assert argv[argv.index("--target") + 1] == "autoheal"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--source") + 1].endswith("functions/main.py")
    with pytest.raises(FleetError, match="unknown function"):
        server_argv("rm -rf /", 1)


def test_break_script_is_valid_shell_aimed_at_the_compose_api_service() -> None:
    script = break_api_script()
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
    assert "com.docker.compose.service=api" in script and "--restart=no" in script
    assert "'weird project'" in break_api_script("weird project")
    assert "touch /opt/fleet/dify/volumes/app/storage/.standin-disk-fault" in script
