"""fleet/alerting/functions_deploy.py: the exact gcloud commands, checked as data, by the `fab` CLI's
--dry-run, and against the real gcloud's argument parser (offline: it parses, then stops at auth)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleet import inventory
from fleet.alerting import functions_deploy as fd
from fleet.alerting import policies as mon
from fleet.errors import FleetError, HostSetupError, InventoryError
from tests.unit.test_monitoring import PROJECT, ZONE, base, write_inventory

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))
SA = "fleet-functions@my-project.iam.gserviceaccount.com"


def config_of(tmp_path: Path, data: dict[str, Any] | None = None) -> mon.MonitoringConfig:
    d, hosts = base()
    return mon.config_from_inventory(
        inventory.load(str(write_inventory(tmp_path / "inv", data or d, hosts))), {}
    )


def with_functions(**functions: Any) -> dict[str, Any]:
    data, _ = base()
    data["monitoring"]["functions"].update(functions)
    return data


def test_deploy_command_is_exact(tmp_path: Path) -> None:
    cfg = config_of(tmp_path)
    env = fd.runtime_env(cfg)
    autoheal = fd.function_specs(cfg)[0]
    cmd = fd.deploy_command(cfg, autoheal, env, fd.SOURCE_DIR)
    assert list(cmd.argv) == [
        "gcloud", "functions", "deploy", "autoheal",
        f"--project={PROJECT}",
        "--gen2",
        "--region=europe-west1",
        "--runtime=python312",
        f"--source={REPO / 'functions'}",
        "--entry-point=autoheal",
        "--trigger-topic=fleet-alerts",
        "--retry",
        f"--service-account={SA}",
        "--max-instances=1",
        "--concurrency=1",
        "--ingress-settings=internal-only",
        f"--set-env-vars=FLEET_NAME=prod,FLEET_MIGS={PROJECT}/{ZONE}/dify-mig,"
        f"FLEET_EVENTS_TOPIC=projects/{PROJECT}/topics/fleet-events",
        "--quiet",
    ]  # fmt: skip


def test_four_functions_notify_once_per_topic(tmp_path: Path) -> None:
    cfg = config_of(tmp_path, with_functions(name_prefix="prod"))
    specs = [(s.name, s.entry_point, s.topic.rsplit("/", 1)[-1], s.secrets) for s in fd.function_specs(cfg)]
    assert specs == [
        ("prod-autoheal", "autoheal", "fleet-alerts", False),
        ("prod-scale", "scale", "fleet-alerts", False),
        ("prod-notify-alerts", "notify", "fleet-alerts", True),
        ("prod-notify-events", "notify", "fleet-events", True),
    ]


def test_secrets_are_references_and_only_notify_gets_them(tmp_path: Path) -> None:
    secrets = {
        "FLEET_SLACK_WEBHOOK_URL": "slack-webhook:latest",
        "FLEET_CHAT_WEBHOOK_URL": "projects/shared-secrets/secrets/chat-webhook:3",
    }
    cfg = config_of(tmp_path, with_functions(secrets=secrets))
    plan = fd.deploy_plan(cfg)
    deploys = {c.argv[3]: c.argv for c in plan.commands if c.argv[1] == "functions"}
    flag = (
        "--set-secrets=FLEET_CHAT_WEBHOOK_URL=projects/shared-secrets/secrets/chat-webhook:3,"
        "FLEET_SLACK_WEBHOOK_URL=slack-webhook:latest"
    )
    assert flag in deploys["notify-alerts"] and flag in deploys["notify-events"]
    assert not any(a.startswith("--set-secrets") for a in deploys["autoheal"] + deploys["scale"])
    grants = [c.argv for c in plan.commands if c.argv[1] == "secrets"]
    assert sorted((g[3], g[4]) for g in grants) == [
        ("chat-webhook", "--project=shared-secrets"),
        ("slack-webhook", f"--project={PROJECT}"),
    ]
    assert all(g[5] == f"--member=serviceAccount:{SA}" for g in grants)


@pytest.mark.parametrize(
    ("functions", "message"),
    [
        (
            {"secrets": {"FLEET_SLACK_WEBHOOK_URL": "https://hooks.slack.com/x"}},
            "not a Secret Manager reference",
        ),
        ({"secrets": {"FLEET_PAGER_WEBHOOK_URL": "pager:latest"}}, "do not read FLEET_PAGER_WEBHOOK_URL"),
        ({"env": {"FLEET_SLACK_WEBHOOK_URL": "https://hooks.slack.com/x"}}, "webhook URLs carry credentials"),
        ({"env": {"FLEET_MIGS": "p/z/x"}}, "set from the inventory"),
        ({"env": {"COMPUTE_API_ENDPOINT": "http://127.0.0.1:1"}}, "only for the local stand-in"),
        ({"env": {"FLEET_HEAL_MAX_CONCURENT": 2}}, "do not read FLEET_HEAL_MAX_CONCURENT"),
        ({"env": {"FLEET_HEAL_MAX_PERCENT": 150}}, "FLEET_HEAL_MAX_PERCENT: 150 is not in"),
        ({"env": {"FLEET_HEAL_WINDOW": 10}}, "FLEET_HEAL_WINDOW: 10s is shorter"),
        ({"region": None}, "monitoring.functions.region is missing"),
    ],
)
def test_bad_function_settings_are_refused(tmp_path: Path, functions: dict[str, Any], message: str) -> None:
    data = with_functions(**functions)
    data["monitoring"]["functions"] = {
        k: v for k, v in data["monitoring"]["functions"].items() if v is not None
    }
    with pytest.raises(InventoryError, match=message):
        fd.deploy_plan(config_of(tmp_path, data))


def test_secret_values_never_appear_in_errors(tmp_path: Path) -> None:
    secret = "https://hooks.slack.com/services/T000/B000/very-secret-token"
    with pytest.raises(InventoryError) as err:
        fd.deploy_plan(config_of(tmp_path, with_functions(env={"FLEET_SLACK_WEBHOOK_URL": secret})))
    assert "very-secret-token" not in err.value.render()


def test_env_values_with_commas_use_a_free_delimiter(tmp_path: Path) -> None:
    data, _ = base()
    data["gce"]["migs"].append({"project": PROJECT, "region": "europe-west1", "name": "dify-r"})
    data["monitoring"]["functions"]["env"] = {"FLEET_HEAL_MAX_CONCURRENT": 2, "FLEET_HEAL_INITIAL_DELAY": 60}
    cfg = config_of(tmp_path, data)
    env = fd.runtime_env(cfg)
    assert env["FLEET_MIGS"] == f"{PROJECT}/{ZONE}/dify-mig,{PROJECT}/europe-west1/dify-r"
    assert env["FLEET_HEAL_MAX_CONCURRENT"] == "2"
    assert fd.env_flag(env).startswith("^@^FLEET_NAME=prod@FLEET_MIGS=")
    assert fd.env_flag({"A": "x,y", "B": "a@b"}) == "^|^A=x,y|B=a@b"
    assert fd.env_flag({"A": "1", "B": "2"}) == "A=1,B=2"


def test_grants(tmp_path: Path) -> None:
    cfg = config_of(
        tmp_path, {**base()[0], "monitoring": {**base()[0]["monitoring"], "project_number": "123456"}}
    )
    grants = fd.grant_commands(cfg)
    assert [g.shell() for g in grants] == [
        "gcloud pubsub topics add-iam-policy-binding fleet-alerts --project=my-project "
        "--member=serviceAccount:service-123456@gcp-sa-monitoring-notification.iam.gserviceaccount.com "
        "--role=roles/pubsub.publisher --quiet",
        "gcloud pubsub topics add-iam-policy-binding fleet-events --project=my-project "
        f"--member=serviceAccount:{SA} --role=roles/pubsub.publisher --quiet",
    ]
    assert not any("notification agent" in r for r in fd.deploy_plan(cfg).relies_on)
    assert any("notification agent" in r for r in fd.deploy_plan(config_of(tmp_path)).relies_on)


def test_concurrency_above_one_brings_a_cpu(tmp_path: Path) -> None:
    cfg = config_of(tmp_path, with_functions(concurrency=4, memory="512Mi", timeout=120))
    argv = fd.deploy_plan(cfg).commands[-1].argv
    assert {"--concurrency=4", "--cpu=1", "--memory=512Mi", "--timeout=120s"} <= set(argv)


def test_source_dir_must_be_complete(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("")
    with pytest.raises(FleetError, match=r"lacks requirements\.txt"):
        fd.source_dir(tmp_path)


def test_run_stops_at_the_first_failure(tmp_path: Path) -> None:
    """The executor runs argv lists as given (real processes), echoing each one exactly first."""
    log = tmp_path / "log"
    commands = [
        fd.GcloudCommand("one", ("sh", "-c", f'echo one >> "{log}"')),
        fd.GcloudCommand("two", ("sh", "-c", "exit 3")),
        fd.GcloudCommand("three", ("sh", "-c", f'echo three >> "{log}"')),
    ]
    echo = tmp_path / "echo"
    with echo.open("w") as fh:
        results = fd.run(commands, echo=fh, output=subprocess.DEVNULL)  # type: ignore[arg-type]
    assert [(r.command.label, r.exit_code) for r in results] == [("one", 0), ("two", 3)]
    assert log.read_text() == "one\n"
    assert echo.read_text().splitlines() == [f"+ {commands[0].shell()}", f"+ {commands[1].shell()}"]


def test_missing_gcloud_is_a_host_setup_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostSetupError, match="gcloud is not on PATH"):
        fd.require_gcloud()


# --- through the CLI -----------------------------------------------------------------------------


def fab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FAB, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_dry_run_prints_exactly_the_plan(tmp_path: Path) -> None:
    data = with_functions(secrets={"FLEET_SLACK_WEBHOOK_URL": "slack-webhook:latest"})
    inv = write_inventory(tmp_path / "inv", data, base()[1])
    proc = fab("functions.deploy", "--inventory", str(inv), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    plan = fd.deploy_plan(mon.config_from_inventory(inventory.load(str(inv)), {}))
    assert proc.stdout == plan.script()
    assert [line for line in proc.stdout.splitlines() if not line.startswith("#")] == [
        c.shell() for c in plan.commands
    ]
    proc = fab("functions.deploy", "--inventory", str(inv), "--dry-run", "--json")
    doc = json.loads(proc.stdout)
    assert doc["dry_run"] is True
    assert [c["argv"] for c in doc["commands"]] == [list(c.argv) for c in plan.commands]


def test_deploy_without_gcloud_is_a_clear_error(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", *base())
    proc = fab("functions.deploy", "--inventory", str(inv), env={"PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert "gcloud is not on PATH" in proc.stderr and "--dry-run" in proc.stderr
    assert proc.stdout == ""


def test_bad_inventory_is_exit_2_with_the_field(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", with_functions(env={"FLEET_SCALE_MIN": "two"}), base()[1])
    proc = fab("functions.deploy", "--inventory", str(inv), "--dry-run")
    assert proc.returncode == 2
    assert "monitoring.functions.env.FLEET_SCALE_MIN: 'two' is not an integer" in proc.stderr


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_real_gcloud_accepts_every_command(tmp_path: Path) -> None:
    """gcloud parses the arguments before it needs an account: with an empty configuration each
    command must get as far as "no active account" (exit 1), never an argument error (exit 2)."""
    data = with_functions(
        secrets={"FLEET_SLACK_WEBHOOK_URL": "slack-webhook:latest"},
        env={"FLEET_HEAL_MAX_CONCURRENT": 2},
        name_prefix="prod",
        concurrency=2,
        memory="512Mi",
        timeout=120,
        trigger_service_account=SA,
    )
    data["monitoring"]["project_number"] = "123456"
    data["gce"]["migs"].append({"project": PROJECT, "region": "europe-west1", "name": "dify-r"})  # ^@^ form
    plan = fd.deploy_plan(config_of(tmp_path, data))
    kinds = {c.argv[1:3] for c in plan.commands}
    assert kinds == {("pubsub", "topics"), ("secrets", "add-iam-policy-binding"), ("functions", "deploy")}
    env = {
        **os.environ,
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }
    checked = {}
    for command in plan.commands:
        key = command.argv[1:3]
        if key in checked and key != ("functions", "deploy"):
            continue
        proc = subprocess.run(list(command.argv), capture_output=True, text=True, timeout=120, env=env)
        checked[key] = proc.returncode
        assert proc.returncode == 1, f"{command.shell()}\n{proc.stderr}"
        assert "do not currently have an active account" in proc.stderr, proc.stderr
    # and a broken command would have been caught
    bad = subprocess.run([*plan.commands[-1].argv, "--retry-bogus"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr
