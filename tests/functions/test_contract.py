"""The contract both sides share: labels, the fleet lock, fleet events; and the functions' settings."""

from __future__ import annotations

import ast
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import settings as fn_settings

from functions import fleet_contract as contract
from functions.fleet_contract import ContractError, FleetEvent, Lock
from tests.functions.conftest import FUNCTIONS_DIR

pytestmark = pytest.mark.functions

NOW = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)


def test_contract_imports_only_the_standard_library():
    tree = ast.parse((FUNCTIONS_DIR / "fleet_contract.py").read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}


def test_same_module_both_ways():
    import fleet_contract as top_level

    assert Path(top_level.__file__).resolve() == Path(contract.__file__).resolve()


@pytest.mark.parametrize("value", ["", "r-20261126-1", "a" * 63, "x_y-9"])
def test_label_values_accepted(value):
    assert contract.validate_label_value(value) == value


@pytest.mark.parametrize("value", ["A", "a" * 64, "r 1", "é", "a/b", 5])
def test_label_values_refused(value):
    with pytest.raises(ContractError):
        contract.validate_label_value(value)


def test_label_keys():
    assert contract.validate_label_key(contract.ROLLOUT_LABEL) == "fleet-rollout"
    for bad in ("", "1abc", "Abc", "a" * 64):
        with pytest.raises(ContractError):
            contract.validate_label_key(bad)


def test_lock_round_trip_and_expiry():
    lock = Lock("prod", "alice@host", "release 1.2", "r-7", NOW, NOW + timedelta(minutes=30))
    text = contract.lock_to_json(lock)
    assert '"expires":"2026-11-26T07:30:00Z"' in text
    assert contract.parse_lock(text) == lock
    assert contract.is_held(lock, NOW + timedelta(minutes=29))
    assert not contract.is_held(lock, NOW + timedelta(minutes=30))
    assert not contract.is_held(None, NOW)
    assert contract.lock_problem(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"fleet": "x"}', "lacks"),
        (
            '{"fleet":"x","owner":"o","reason":"","rollout_id":"","created":"yesterday","expires":"2026-01-01T00:00:00Z"}',
            "lock time",
        ),
        (
            '{"fleet":"x","owner":"o","reason":"","rollout_id":"","created":"2026-01-01T00:00:00",'
            '"expires":"2026-01-01T00:00:00Z"}',
            "without offset",
        ),
        (
            '{"fleet":"x","owner":"o","reason":"","rollout_id":"Bad Id","created":"2026-01-01T00:00:00Z",'
            '"expires":"2026-01-01T00:00:00Z"}',
            "rollout_id",
        ),
    ],
)
def test_garbled_locks(text, problem):
    assert contract.parse_lock(text) is None
    assert problem in (contract.lock_problem(text) or "")


def test_absent_lock():
    assert contract.parse_lock(None) is None and contract.lock_problem("") is None


def test_fleet_event_round_trip():
    event = FleetEvent(
        "heal",
        "reset",
        "started",
        "prod",
        project="p",
        zone="z",
        instance="vm-1",
        time="2026-11-26T07:00:00Z",
    )
    data, attributes = event.to_message()
    assert attributes[contract.EVENT_SCHEMA_ATTRIBUTE] == "1" and attributes["kind"] == "heal"
    assert FleetEvent.from_message(data, attributes) == event
    later = FleetEvent(
        "heal",
        "reset",
        "started",
        "prod",
        project="p",
        zone="z",
        instance="vm-1",
        time="2026-11-26T08:00:00Z",
    )
    assert later.event_id == event.event_id, "time does not change the identity"
    assert (
        FleetEvent("heal", "reset", "done", "prod").event_id
        != FleetEvent("heal", "reset", "started", "prod").event_id
    )


@pytest.mark.parametrize(
    ("data", "attributes", "problem"),
    [
        (b"{", None, "not JSON"),
        (b'{"kind":"heal"}', None, "lacks"),
        (b'{"kind":"party","action":"a","result":"r","fleet":"f"}', None, "kind"),
        (b'{"kind":"heal","action":"A B","result":"r","fleet":"f"}', None, "lowercase token"),
        (b'{"kind":"heal","action":"a","result":"r","fleet":"f","extra":1}', None, "unknown fields"),
        (b'{"kind":"heal","action":"a","result":"r","fleet":"f","time":"noon"}', None, "RFC 3339"),
        (
            b'{"kind":"heal","action":"a","result":"r","fleet":"f"}',
            {contract.EVENT_SCHEMA_ATTRIBUTE: "2"},
            "schema",
        ),
        (b'{"kind":"heal","action":"a","result":"r","fleet":7}', None, "string"),
    ],
)
def test_bad_fleet_events(data, attributes, problem):
    with pytest.raises(ContractError, match=problem):
        FleetEvent.from_message(data, attributes)


# --- settings --------------------------------------------------------------------------------------


def test_settings_defaults_and_migs():
    cfg = fn_settings.load({"FLEET_MIGS": "proj-a1/us-central1-a/web, proj-a1/europe-west1/api"})
    assert [str(m) for m in cfg.migs] == ["proj-a1/us-central1-a/web", "proj-a1/europe-west1/api"]
    assert [m.regional for m in cfg.migs] == [False, True]
    assert (cfg.heal_max_concurrent, cfg.heal_initial_delay, cfg.events_topic) == (1, 300, None)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FLEET_MIGS": "web"}, "FLEET_MIGS"),
        ({"FLEET_MIGS": "proj-a1/mars-1/web"}, "FLEET_MIGS"),
        ({"FLEET_MIGS": "P/us-central1-a/web"}, "FLEET_MIGS"),
        ({"FLEET_MIGS": "proj-a1/us-central1-a/web,proj-a1/us-central1-a/web"}, "FLEET_MIGS"),
        ({"FLEET_HEAL_MAX_CONCURRENT": "0"}, "FLEET_HEAL_MAX_CONCURRENT"),
        ({"FLEET_HEAL_MAX_PERCENT": "150"}, "FLEET_HEAL_MAX_PERCENT"),
        ({"FLEET_HEAL_INITIAL_DELAY": "soon"}, "FLEET_HEAL_INITIAL_DELAY"),
        ({"FLEET_HEAL_SETTLE": "600", "FLEET_HEAL_WINDOW": "60"}, "FLEET_HEAL_WINDOW"),
        ({"FLEET_SCALE_MIN": "5", "FLEET_SCALE_MAX": "2"}, "FLEET_SCALE_MAX"),
        ({"FLEET_EVENTS_TOPIC": "events"}, "FLEET_EVENTS_TOPIC"),
        ({"FLEET_API_TIMEOUT": "nan"}, "FLEET_API_TIMEOUT"),
        ({"COMPUTE_API_ENDPOINT": "127.0.0.1:80"}, "COMPUTE_API_ENDPOINT"),
        ({"FLEET_NAME": "Prod Fleet"}, "FLEET_NAME"),
    ],
)
def test_settings_errors_name_the_variable(env, variable):
    with pytest.raises(fn_settings.ConfigError) as info:
        fn_settings.load(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)


def test_webhook_urls_are_secrets():
    cfg = fn_settings.load({"FLEET_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/topsecret"})
    assert cfg.slack_webhook is not None and cfg.slack_webhook.reveal().endswith("topsecret")
    assert "topsecret" not in repr(cfg) and "topsecret" not in str(cfg.slack_webhook)
    for bad in ("ftp://x/topsecret", "http://hooks.example.com/topsecret", "topsecret"):
        with pytest.raises(fn_settings.ConfigError) as info:
            fn_settings.load({"FLEET_CHAT_WEBHOOK_URL": bad})
        assert "topsecret" not in str(info.value)


# --- the MIG reference (issue 11 req. 3): one definition, one zone/region rule --------------------


@pytest.mark.parametrize(
    ("location", "zone", "region"),
    [
        ("us-central1-a", True, "us-central1"),
        ("us-central1", False, "us-central1"),
        ("northamerica-northeast1-b", True, "northamerica-northeast1"),
        ("europe-west1", False, "europe-west1"),
        ("europe-west1-b", True, "europe-west1"),  # the local fleet's zone: a real-looking one
    ],
)
def test_zone_and_region_rule(location, zone, region):
    assert contract.is_zone(location) is zone
    assert contract.is_region(location) is (not zone)
    assert contract.region_of(location) == region


@pytest.mark.parametrize(
    "location",
    # local-zone(-a): the stand-in's old names; a name special to the stand-in is no location
    ["mars-1", "us", "US-central1", "us-central1-", "us-central1-ab1", "a/b", "local-zone", "local-zone-a"],
)
def test_not_a_location(location):
    assert not contract.is_zone(location) and not contract.is_region(location)
    with pytest.raises(ContractError, match="zone"):
        contract.MigRef.parse(f"proj-a1/{location}/web")


def test_mig_ref_parse_covers_and_is_the_one_the_functions_use():
    zonal = contract.MigRef.parse("proj-a1/us-central1-a/web")
    regional = contract.MigRef.parse("proj-a1/us-central1/web")
    assert (zonal.regional, regional.regional, str(regional)) == (False, True, "proj-a1/us-central1/web")
    assert zonal.covers("us-central1-a") and not zonal.covers("us-central1-b")
    assert not zonal.covers("us-central1"), "a region-wide incident is not about one zonal MIG"
    assert regional.covers("us-central1-c") and regional.covers("us-central1")
    assert not regional.covers("us-east1-b")
    for bad in ("web", "P/us-central1-a/web", "proj-a1/us-central1-a/Web", "a/b/c/d"):
        with pytest.raises(ContractError):
            contract.MigRef.parse(bad)
    assert (fn_settings.MigRef.__module__, fn_settings.MigRef.__qualname__) == ("fleet_contract", "MigRef")
    assert [str(m) for m in fn_settings.load({"FLEET_MIGS": str(zonal)}).migs] == [str(zonal)]
    source = "\n".join(p.read_text() for p in FUNCTIONS_DIR.glob("*.py"))
    assert "_LOCAL" not in source and 'r"local-' not in source, "no special case for local names"
    assert "local-zone" not in source
