"""The exact `gcloud` commands that deploy autoheal, scale and notify, built as data from the inventory.

Four gen2 functions from the self-contained `functions/` directory: autoheal and scale on the
alerts topic, notify once per topic (alerts and fleet events; a gen2 function has one trigger).
Before them, the IAM bindings they rely on: the Monitoring notification agent may publish to the
alerts topic (when `monitoring.project_number` is known), the functions' service account may
publish to the events topic and read the webhook secrets. Webhook URLs are Secret Manager
references (`--set-secrets`), never values; the plain environment is checked with the functions'
own settings parser, so a value they would refuse at cold start is refused here first.
Commands are argv lists; `run` is the one place they are executed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fleet.errors import FleetError, HostSetupError, InventoryError
from fleet.paths import FUNCTIONS_DIR

if TYPE_CHECKING:
    from fleet.alerting.policies import MonitoringConfig, MonitoringReport

GCLOUD = "gcloud"
SOURCE_DIR = FUNCTIONS_DIR
# set from the inventory itself, not from monitoring.functions.env
DERIVED_ENV = ("FLEET_NAME", "FLEET_MIGS", "FLEET_EVENTS_TOPIC")
LOCAL_ONLY_ENV = ("COMPUTE_API_ENDPOINT",)
_ENV_KEY = re.compile(r"[A-Z][A-Z0-9_]*")
_SECRET_REF = re.compile(
    r"(projects/(?P<project>[a-z][a-z0-9-]{4,28}[a-z0-9])/secrets/)?(?P<secret>[A-Za-z0-9_-]{1,255})"
    r":(?P<version>latest|[1-9][0-9]*)"
)
_DELIMITERS = "@|;#~!"


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    entry_point: str
    topic: str  # projects/P/topics/T
    secrets: bool  # gets the webhook secrets (notify only)


@dataclass(frozen=True)
class GcloudCommand:
    """One local gcloud call of the deploy plan (argv, run here; not a remote command of fleet/commands/)."""

    label: str
    argv: tuple[str, ...]

    def shell(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class DeployPlan:
    functions: tuple[FunctionSpec, ...]
    commands: tuple[GcloudCommand, ...]
    relies_on: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "functions": [
                {"name": f.name, "entry_point": f.entry_point, "trigger_topic": f.topic}
                for f in self.functions
            ],
            "relies_on": list(self.relies_on),
            "commands": [{"label": c.label, "argv": list(c.argv), "shell": c.shell()} for c in self.commands],
        }

    def script(self) -> str:
        """What --dry-run prints: the prerequisites as comments, then one command per line."""
        lines = [f"# relies on: {r}" for r in self.relies_on]
        lines += [c.shell() for c in self.commands]
        return "\n".join(lines) + "\n"


def _where(config: MonitoringConfig) -> str:
    return f"data.monitoring.functions (fleet {config.fleet})"


def _required(config: MonitoringConfig, key: str, hint: str) -> Any:
    value = getattr(config.functions, key)
    if value in (None, ""):
        raise InventoryError(f"field monitoring.functions.{key} is missing", where=_where(config), hint=hint)
    return value


def function_specs(config: MonitoringConfig) -> list[FunctionSpec]:
    prefix = config.functions.name_prefix or ""
    name = (lambda base: f"{prefix}-{base}") if prefix else (lambda base: base)
    return [
        FunctionSpec(name("autoheal"), "autoheal", config.alerts_topic, False),
        FunctionSpec(name("scale"), "scale", config.alerts_topic, False),
        FunctionSpec(name("notify-alerts"), "notify", config.alerts_topic, True),
        FunctionSpec(name("notify-events"), "notify", config.events_topic, True),
    ]


def _value(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)


def runtime_env(config: MonitoringConfig) -> dict[str, str]:
    """The functions' plain environment, checked by the functions' own parser."""
    from functions import settings

    where = _where(config)
    if not config.migs:
        raise InventoryError(
            "no managed instance groups: the functions would refuse every instance",
            where=where,
            hint="list them in gce.migs ({project, zone or region, name})",
        )
    env = {
        "FLEET_NAME": config.fleet,
        "FLEET_MIGS": ",".join(str(g) for g in config.migs),
        "FLEET_EVENTS_TOPIC": config.events_topic,
    }
    for key, raw in config.functions.env.items():
        if not _ENV_KEY.fullmatch(key):
            raise InventoryError(f"field monitoring.functions.env: bad variable name {key!r}", where=where)
        if key in DERIVED_ENV:
            raise InventoryError(
                f"field monitoring.functions.env.{key}: set from the inventory",
                where=where,
                hint="FLEET_NAME is monitoring.fleet, FLEET_MIGS gce.migs, FLEET_EVENTS_TOPIC events_topic",
            )
        if key in LOCAL_ONLY_ENV:
            raise InventoryError(
                f"field monitoring.functions.env.{key}: only for the local stand-in",
                where=where,
                hint="remove it",
            )
        if key.endswith("_WEBHOOK_URL"):
            raise InventoryError(
                f"field monitoring.functions.env.{key}: webhook URLs carry credentials",
                where=where,
                hint=f"put it under monitoring.functions.secrets ({key}: SECRET_NAME:latest)",
            )
        value = _value(raw)
        if not value.isprintable():
            raise InventoryError(f"field monitoring.functions.env.{key}: unprintable characters", where=where)
        env[key] = value

    read: set[str] = set()

    class Recorder(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:
            read.add(key)
            return super().get(key, default)

    try:
        settings.load(Recorder(env))
    except settings.ConfigError as exc:
        raise InventoryError(
            f"field monitoring.functions.env.{exc.variable}: {exc.problem}",
            where=where,
            hint=exc.hint or "see docs/functions.md (Configuration)",
        ) from None
    unknown = sorted(set(env) - read)
    if unknown:
        known = sorted(k for k in read if not k.endswith("_WEBHOOK_URL") and k not in LOCAL_ONLY_ENV)
        raise InventoryError(
            f"field monitoring.functions.env: the functions do not read {', '.join(unknown)}",
            where=where,
            hint=f"known: {', '.join(known)}",
        )
    secret_names = {k for k in read if k.endswith("_WEBHOOK_URL")}
    for key in config.functions.secrets:
        if key not in secret_names:
            raise InventoryError(
                f"field monitoring.functions.secrets: the functions do not read {key}",
                where=where,
                hint=f"known: {', '.join(sorted(secret_names))}",
            )
    return env


def secret_refs(config: MonitoringConfig) -> dict[str, re.Match[str]]:
    out = {}
    for key, ref in sorted(config.functions.secrets.items()):
        match = _SECRET_REF.fullmatch(ref)
        if match is None:
            raise InventoryError(
                f"field monitoring.functions.secrets.{key}: {ref!r} is not a Secret Manager reference",
                where=_where(config),
                hint="SECRET:VERSION or projects/PROJECT/secrets/SECRET:VERSION (VERSION: latest or N)",
            )
        out[key] = match
    return out


def env_flag(env: Mapping[str, str]) -> str:
    """The --set-env-vars value; with a comma in a value, gcloud's ^D^ form with a free delimiter."""
    pairs = [f"{k}={v}" for k, v in env.items()]
    if not any("," in p for p in pairs):
        return ",".join(pairs)
    for delim in _DELIMITERS:
        if not any(delim in p for p in pairs):
            return f"^{delim}^" + delim.join(pairs)
    raise InventoryError(
        "the functions' environment uses every delimiter gcloud could take",
        hint=f"avoid one of {_DELIMITERS}",
    )


def source_dir(path: Path = SOURCE_DIR) -> Path:
    for needed in ("main.py", "requirements.txt", "fleet_contract.py"):
        if not (path / needed).is_file():
            raise FleetError(
                f"the functions' source directory lacks {needed}",
                where=str(path),
                hint="deploy from a checkout of compose-fleet (functions/ is uploaded as is)",
            )
    return path


def deploy_command(
    config: MonitoringConfig, spec: FunctionSpec, env: Mapping[str, str], source: Path
) -> GcloudCommand:
    f = config.functions
    argv = [
        GCLOUD,
        "functions",
        "deploy",
        spec.name,
        f"--project={config.project}",
        "--gen2",
        f"--region={_required(config, 'region', 'the region the functions run in, e.g. europe-west1')}",
        f"--runtime={f.runtime}",
        f"--source={source}",
        f"--entry-point={spec.entry_point}",
        f"--trigger-topic={spec.topic.rsplit('/', 1)[-1]}",
        "--retry",
        f"--service-account={_required(config, 'service_account', 'the functions runtime identity')}",
    ]
    if f.trigger_service_account:
        argv.append(f"--trigger-service-account={f.trigger_service_account}")
    concurrency = f.concurrency
    argv += [f"--max-instances={f.max_instances}", f"--concurrency={concurrency}"]
    if concurrency > 1:
        argv.append("--cpu=1")  # gen2 needs a whole CPU for concurrency above 1
    if f.memory:
        argv.append(f"--memory={f.memory}")
    if f.timeout:
        argv.append(f"--timeout={f.timeout}s")
    argv.append(f"--ingress-settings={f.ingress}")
    argv.append(f"--set-env-vars={env_flag(env)}")
    if spec.secrets and f.secrets:
        argv.append("--set-secrets=" + ",".join(f"{k}={v}" for k, v in sorted(f.secrets.items())))
    argv.append("--quiet")
    return GcloudCommand(f"deploy {spec.name}", tuple(argv))


def grant_commands(config: MonitoringConfig) -> list[GcloudCommand]:
    """IAM bindings the loop needs (each idempotent in gcloud)."""
    sa = _required(config, "service_account", "the functions runtime identity")
    out = []
    topic_id = config.alerts_topic.rsplit("/", 1)[-1]
    if config.project_number:
        agent = f"service-{config.project_number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com"
        out.append(
            GcloudCommand(
                "let Monitoring publish alerts",
                (
                    GCLOUD,
                    "pubsub",
                    "topics",
                    "add-iam-policy-binding",
                    topic_id,
                    f"--project={config.project}",
                    f"--member=serviceAccount:{agent}",
                    "--role=roles/pubsub.publisher",
                    "--quiet",
                ),
            )
        )
    out.append(
        GcloudCommand(
            "let the functions publish fleet events",
            (
                GCLOUD,
                "pubsub",
                "topics",
                "add-iam-policy-binding",
                config.events_topic.rsplit("/", 1)[-1],
                f"--project={config.project}",
                f"--member=serviceAccount:{sa}",
                "--role=roles/pubsub.publisher",
                "--quiet",
            ),
        )
    )
    seen = set()
    for match in secret_refs(config).values():
        secret, project = match["secret"], match["project"] or config.project
        if (project, secret) in seen:
            continue
        seen.add((project, secret))
        out.append(
            GcloudCommand(
                f"let the functions read secret {secret}",
                (
                    GCLOUD,
                    "secrets",
                    "add-iam-policy-binding",
                    secret,
                    f"--project={project}",
                    f"--member=serviceAccount:{sa}",
                    "--role=roles/secretmanager.secretAccessor",
                    "--quiet",
                ),
            )
        )
    return out


def deploy_plan(config: MonitoringConfig, source: Path = SOURCE_DIR) -> DeployPlan:
    env = runtime_env(config)
    secret_refs(config)
    src = source_dir(source)
    specs = function_specs(config)
    sa = _required(config, "service_account", "the functions runtime identity")
    relies = [
        f"topic {config.alerts_topic} and notification channel 'compose-fleet {config.fleet}: alerts' "
        "(type pubsub) on it: `fab monitoring.apply`",
        f"topic {config.events_topic}: `fab monitoring.apply`",
        f"service account {sa} with the custom role fleetFunctions on project {config.project}: "
        "`fab infra.plan` prints its gcloud lines",
    ]
    if not config.project_number:
        relies.append(
            "the Monitoring notification agent may publish to the alerts topic "
            "(set monitoring.project_number to have this command grant it)"
        )
    commands = [*grant_commands(config), *(deploy_command(config, s, env, src) for s in specs)]
    return DeployPlan(tuple(specs), tuple(commands), tuple(relies))


def missing_prerequisites(report: MonitoringReport) -> list[str]:
    """Objects the functions rely on that a Monitoring plan says do not exist yet."""
    return [
        f"{c.kind.replace('_', ' ')} {c.display_name}"
        for c in report.changes
        if c.kind in ("topic", "channel") and c.action == "create"
    ]


def require_gcloud() -> str:
    path = shutil.which(GCLOUD)
    if path is None:
        raise HostSetupError(
            "gcloud is not on PATH",
            hint="install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and "
            "`gcloud auth login`; or use --dry-run to print the commands",
        )
    return path


@dataclass(frozen=True)
class RunResult:
    command: GcloudCommand
    exit_code: int


def run(
    commands: Sequence[GcloudCommand],
    *,
    echo: IO[str] = sys.stdout,
    output: IO[str] | None = None,
    runner: Callable[..., subprocess.CompletedProcess[Any]] = subprocess.run,
) -> list[RunResult]:
    """Run the commands in order, each echoed exactly before it runs; stop at the first failure."""
    results = []
    for command in commands:
        echo.write(f"+ {command.shell()}\n")
        echo.flush()
        proc = runner(list(command.argv), check=False, stdout=output, stderr=None)
        results.append(RunResult(command, proc.returncode))
        if proc.returncode != 0:
            break
    return results
