"""The whole local alert path of one local fleet, started and stopped as one thing.

    monitor (fleet/scenarios/monitor.py) --real PublisherClient--> local Pub/Sub, topic fleet-alerts
        --push, binary-mode CloudEvents--> functions-framework servers: autoheal, scale, notify
    autoheal, scale --real compute client--> the fleet's Compute endpoint (fleet/local/compute_docker.py)
    autoheal, scale --real PublisherClient--> topic fleet-events --push--> notify
    notify --> webhook sink (Slack, Google Chat and generic webhook flavours)

The functions are the deployable source in functions/, run by `functions-framework` (one process
each, one request at a time: the deploy's `--concurrency 1`), configured only through their
environment, exactly as `fab functions.deploy` would set it, with short delays and cooldowns for the
local fleet. Their logs and the monitor's timeline are kept under `.fleet/<fleet>/alerts/`.

CLI (runs until Ctrl-C, printing incidents, function decisions and notifications as they happen):
    python -m fleet.scenarios.alertpath [--fleet local] [--load-high 8 --load-low 3]
                                        [--cpu-high 0.6 --cpu-low 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fleet.commands.haproxy import SHOW_STAT
from fleet.errors import FleetError
from fleet.local import compute_docker, compute_endpoint
from fleet.local.config import LocalConfig
from fleet.local.cpu import instance_cpu
from fleet.local.lb import LoadBalancer
from fleet.paths import FUNCTIONS_DIR
from fleet.scenarios.monitor import Monitor, MonitorSettings, local_policies, members_from_compute
from fleet.waits import Deadline, polling
from functions import fleet_contract as contract
from standins.pubsub_api import LocalPubsub
from standins.webhook_sink import Message, WebhookSink

FUNCTIONS = ("autoheal", "scale", "notify")
MAX_SCALE = compute_docker.MAX_SIZE


@dataclass(frozen=True)
class AlertPathSettings:
    """The functions' configuration for the local fleet (seconds where production uses minutes)."""

    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    heal_initial_delay: int = 10
    heal_settle: int = 5
    heal_window: int = 600
    heal_max_concurrent: int = 1
    scale_step: int = 1
    scale_min: int | None = None  # None: the MIG's size when the path starts
    scale_max: int | None = None  # None: that size + scale_step
    scale_cooldown: int = 5
    scale_in_stabilization: int = 10
    alerts_topic: str = "fleet-alerts"
    events_topic: str = "fleet-events"
    start_timeout: float = 90.0
    # where instance health comes from: "probe" (each member's published /health, a per-instance
    # uptime check) or "metric" (the agents' app_health series, as without public IPs)
    health_source: str = "probe"
    metric_absent_after: float = 45.0  # seconds without a point before a VM counts as failing

    def __post_init__(self) -> None:
        if self.health_source not in ("probe", "metric"):
            raise FleetError(
                f"health_source {self.health_source!r}", where="alert path settings", hint="probe or metric"
            )


def topic_path(project: str, name: str) -> str:
    return f"projects/{project}/topics/{name}"


def function_env(
    config: LocalConfig,
    settings: AlertPathSettings,
    *,
    compute_url: str,
    pubsub_host: str,
    webhooks: Mapping[str, str],
    scale_min: int,
    scale_max: int,
) -> dict[str, str]:
    """The environment of all three functions (docs/functions.md), pointed at the local endpoints."""
    mig = f"{config.project}/{config.zone}/{compute_endpoint.mig_name(config)}"
    return {
        "FLEET_NAME": config.name,
        "FLEET_MIGS": mig,
        "FLEET_HEAL_MAX_CONCURRENT": str(settings.heal_max_concurrent),
        "FLEET_HEAL_INITIAL_DELAY": str(settings.heal_initial_delay),
        "FLEET_HEAL_SETTLE": str(settings.heal_settle),
        "FLEET_HEAL_WINDOW": str(settings.heal_window),
        "FLEET_SCALE_STEP": str(settings.scale_step),
        "FLEET_SCALE_MIN": str(scale_min),
        "FLEET_SCALE_MAX": str(scale_max),
        "FLEET_SCALE_COOLDOWN": str(settings.scale_cooldown),
        "FLEET_SCALE_IN_STABILIZATION": str(settings.scale_in_stabilization),
        "FLEET_EVENTS_TOPIC": topic_path(config.project, settings.events_topic),
        "FLEET_SLACK_WEBHOOK_URL": webhooks["slack"],
        "FLEET_CHAT_WEBHOOK_URL": webhooks["chat"],
        "FLEET_GENERIC_WEBHOOK_URL": webhooks["generic"],
        "COMPUTE_API_ENDPOINT": compute_url,
        "PUBSUB_EMULATOR_HOST": pubsub_host,
        "FLEET_API_TIMEOUT": "15",
        "FLEET_WEBHOOK_TIMEOUT": "5",
    }


def server_argv(target: str, port: int, python: str = sys.executable) -> list[str]:
    """functions-framework serving one entry point of functions/main.py on 127.0.0.1:PORT."""
    if target not in FUNCTIONS:
        raise FleetError(f"unknown function {target!r}", where="alert path", hint=", ".join(FUNCTIONS))
    binary = Path(python).with_name("functions-framework")
    return [
        str(binary),
        "--target",
        target,
        "--source",
        str(FUNCTIONS_DIR / "main.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FunctionServer:
    """One functions-framework process; its stdout is the function's structured log."""

    target: str
    port: int
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    _read: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def records(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far."""
        try:
            text = self.out.read_text(errors="replace")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def new_records(self) -> list[dict[str, Any]]:
        records = self.records()
        fresh, self._read = records[self._read :], len(records)
        return fresh

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # gunicorn: quick shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _wait_listening(server: FunctionServer, deadline: Deadline) -> None:
    for _ in polling(deadline, 0.1):
        if server.proc.poll() is not None:
            tail = "\n".join(server.err.read_text(errors="replace").splitlines()[-15:])
            raise FleetError(
                f"functions-framework for {server.target} exited {server.proc.returncode}\n{tail}",
                where=str(server.err),
            )
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                return
        except OSError:
            pass
    raise FleetError(
        f"functions-framework for {server.target} is not listening", where=str(server.err), hint="see its log"
    )


@dataclass(frozen=True)
class Line:
    """One line of the merged timeline the demo and the CLI print."""

    at: float
    source: str  # monitor | autoheal | scale | notify | webhook
    text: str


class AlertPath:
    """Everything between the fleet and the webhook sink; `start()` returns when it all listens."""

    def __init__(
        self,
        config: LocalConfig | None = None,
        settings: AlertPathSettings | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.config = config or LocalConfig.from_env()
        self.settings = settings or AlertPathSettings()
        self.workdir = workdir or self.config.state_dir / "alerts"
        self.project = self.config.project
        self.alerts_topic = topic_path(self.project, self.settings.alerts_topic)
        self.events_topic = topic_path(self.project, self.settings.events_topic)
        self.pubsub: LocalPubsub | None = None
        self.sink: WebhookSink | None = None
        self.servers: dict[str, FunctionServer] = {}
        self.monitor: Monitor | None = None
        self.compute: Any = None
        self.mig_ref: Any = None
        self.scale_bounds = (0, 0)
        self._publisher: Any = None
        self._channel: Any = None
        self._fed_monitor = 0
        self._fed_sink = 0
        self._shown: set[tuple[Any, ...]] = set()  # decisions already in the feed (renotified repeats)

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> AlertPath:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> AlertPath:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from fleet.gcp import compute as gce

        found = compute_endpoint.running_endpoint(self.config)
        if found is None:
            raise FleetError(
                f"the Compute endpoint of local fleet {self.config.name!r} is not running",
                where=str(compute_endpoint.state_dir(self.config)),
                hint="bring the fleet up first: `fab local.up`",
            )
        lb = LoadBalancer(self.config)
        if not lb.running():
            raise FleetError(
                f"the load balancer of local fleet {self.config.name!r} is not running",
                where=str(self.config.lb_dir),
                hint="`fab local.up`",
            )
        self.compute = gce.Compute(endpoint=str(found["url"]))
        self.mig_ref = contract.MigRef.make(
            self.project, self.config.zone, compute_endpoint.mig_name(self.config)
        )
        members = members_from_compute(self.compute, self.mig_ref)
        size = len(members())
        s = self.settings
        low = s.scale_min if s.scale_min is not None else max(1, size)
        high = s.scale_max if s.scale_max is not None else min(MAX_SCALE, max(low, size) + s.scale_step)
        if high < low:
            raise FleetError(f"scale bounds [{low}, {high}] are empty", where="alert path settings")
        self.scale_bounds = (low, high)

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pubsub = LocalPubsub(max_attempts=5, retry_delay=0.2, max_retry_delay=2.0).start()
        self.pubsub.create_topic(self.alerts_topic)
        self.pubsub.create_topic(self.events_topic)
        self.sink = WebhookSink().start()
        env = function_env(
            self.config,
            s,
            compute_url=str(found["url"]),
            pubsub_host=self.pubsub.emulator_host,
            webhooks={
                "slack": self.sink.slack_url(),
                "chat": self.sink.chat_url(),
                "generic": self.sink.generic_url(),
            },
            scale_min=low,
            scale_max=high,
        )
        for target in FUNCTIONS:
            self.servers[target] = self._spawn(target, env)
        deadline = Deadline(s.start_timeout)
        for server in self.servers.values():
            _wait_listening(server, deadline)
        for target in FUNCTIONS:
            sub = f"projects/{self.project}/subscriptions/{target}-alerts"
            self.pubsub.add_push(self.alerts_topic, self.servers[target].url, subscription=sub)
        self.pubsub.add_push(
            self.events_topic,
            self.servers["notify"].url,
            subscription=f"projects/{self.project}/subscriptions/notify-events",
        )

        self._publisher = self._client(self.pubsub.emulator_host)
        policies = local_policies(
            fleet=self.config.name,
            project=self.project,
            zone=self.config.zone,
            mig=self.mig_ref.name,
            alerts_topic=self.alerts_topic,
            events_topic=self.events_topic,
            members=[(m.name, m.instance_id) for m in members()],
            scale_min=low,
            scale_max=high,
            scale_step=s.scale_step,
            cpu_high=s.monitor.cpu_high,
            cpu_low=s.monitor.cpu_low,
            instance_health="agent-metric" if s.health_source == "metric" else "uptime",
        )
        cpu_reader, labels = None, None
        if s.monitor.cpu:  # the instances' cgroups, and their labels from the Compute endpoint
            cpu_reader = instance_cpu(self.config)
            compute, project, zone = self.compute, self.project, self.config.zone

            def labels() -> dict[str, dict[str, str]]:
                return {n: dict(i.labels) for n, i in compute.zone_instances(project, zone).items()}

        self.monitor = Monitor(
            project=self.project,
            zone=self.config.zone,
            mig=self.mig_ref.name,
            backend=self.config.backend,
            policies=policies,
            settings=s.monitor,
            members=members,
            lb_stat=lambda: lb.command(SHOW_STAT),
            publish=self._publish,
            cpu=cpu_reader,
            labels=labels,
            health=self._metric_health() if s.health_source == "metric" else None,
        ).start()

    def _metric_health(self) -> Any:
        """The agents' health metric, read from the fleet's metrics stand-in (fleet/local/vmservices.py)."""
        from fleet.local.vmservices import metrics_endpoint
        from fleet.scenarios.metrichealth import MetricHealth, metric_client, series_reader

        where = compute_endpoint.state_dir(self.config)
        endpoint = metrics_endpoint(where)
        if endpoint is None:
            raise FleetError(
                "the fleet's metrics stand-in is not recorded",
                where=str(where),
                hint="restart the fleet's Compute endpoint (`fab local.up`) so it serves the health metric",
            )
        reader = series_reader(metric_client(endpoint), self.project, self.config.name)
        return MetricHealth(reader, absent_after=self.settings.metric_absent_after)

    def _spawn(self, target: str, env: Mapping[str, str]) -> FunctionServer:
        port = free_port()
        out, err = self.workdir / f"{target}.log", self.workdir / f"{target}.err"
        child_env = {
            **os.environ,
            **env,
            "FUNCTION_TARGET": target,
            "THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                server_argv(target, port), env=child_env, stdout=stdout, stderr=stderr, cwd=FUNCTIONS_DIR
            )
        return FunctionServer(target, port, proc, out, err)

    @staticmethod
    def _client(host: str) -> Any:
        import grpc
        from google.cloud.pubsub_v1 import PublisherClient
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        channel = grpc.insecure_channel(host)
        return channel, PublisherClient(transport=PublisherGrpcTransport(channel=channel))

    def _publish(self, data: bytes) -> str:
        """What Monitoring's pubsub notification channel does: one message on the alerts topic."""
        _channel, client = self._publisher
        return str(client.publish(self.alerts_topic, data).result(timeout=15))

    def publish_event(self, event: contract.FleetEvent) -> str:
        """Publish a fleet event (e.g. a rollout's result) to the events topic, as fleet/ tools do;
        notify posts it. Returns the message id."""
        if self._publisher is None:
            raise FleetError("the alert path is not started", where="alert path")
        _channel, client = self._publisher
        data, attributes = event.to_message()
        return str(client.publish(self.events_topic, data, **attributes).result(timeout=15))

    def stop(self) -> None:
        """Stop everything this path started (safe to call twice, and after a failed start)."""
        if self.monitor is not None:
            self.monitor.stop()
        if self.pubsub is not None:
            self.pubsub.wait_deliveries(len(self.pubsub.deliveries()), timeout=10)
        for server in self.servers.values():
            server.stop()
        if self._publisher is not None:
            channel, client = self._publisher
            client.stop()
            channel.close()
            self._publisher = None
        if self.pubsub is not None:
            self.pubsub.stop()
        if self.sink is not None:
            self.sink.stop()

    # --- reading back --------------------------------------------------------------------------

    def decisions(self, function: str | None = None) -> list[dict[str, Any]]:
        """The functions' decision records (one per event handled), in log order per function."""
        out = []
        for target, server in self.servers.items():
            if function is None or target == function:
                out += [r for r in server.records() if "decision" in r]
        return out

    def fleet_events(self) -> list[contract.FleetEvent]:
        """What autoheal and scale published to the events topic."""
        assert self.pubsub is not None
        return [
            contract.FleetEvent.from_message(m.data, m.attributes)
            for m in self.pubsub.messages(self.events_topic)
        ]

    def notifications(self) -> list[Message]:
        """The generic webhook's posts (Slack and Chat got the same notes in their formats)."""
        assert self.sink is not None
        return self.sink.messages("generic")

    def feed(self) -> list[Line]:
        """Timeline lines that appeared since the last call, oldest first."""
        assert self.monitor is not None and self.sink is not None
        now = time.time()
        lines: list[Line] = []
        events = self.monitor.timeline()
        for event in events[self._fed_monitor :]:
            if event.kind == "incident" and event.state == "renotify":
                continue
            if event.kind == "action":
                text = f"{event.subject}: MIG action {event.text}"
            elif event.kind == "lb":
                text = f"{event.subject}: load balancer says {event.text}"
            else:
                text = event.text
            lines.append(Line(event.at, "monitor", text))
        self._fed_monitor = len(events)
        for target, server in self.servers.items():
            for record in server.new_records():
                text = _decision_line(target, record)
                seen = (target, record.get("incident_id"), record.get("decision"), record.get("reason"))
                if text and seen not in self._shown:
                    self._shown.add(seen)
                    lines.append(Line(now, target, text))
        messages = self.sink.messages("generic")
        for message in messages[self._fed_sink :]:
            body = message.body if isinstance(message.body, dict) else {}
            lines.append(Line(message.at, "webhook", str(body.get("title", body))))
        self._fed_sink = len(messages)
        return sorted(lines, key=lambda line: line.at)

    def follow(self, emit: Callable[[Line], None], until: Callable[[], bool], poll: float = 0.25) -> None:
        """Emit feed lines as they come until `until()` holds (checked after each poll)."""
        while True:
            for line in self.feed():
                emit(line)
            if until():
                for line in self.feed():
                    emit(line)
                return
            time.sleep(poll)


# decisions that repeat or concern another function: not worth a line in the timeline
_QUIET = frozenset({"replay", "closed-after-heal", "not-heal-policy", "not-scale-policy", "closed"})


def _decision_line(function: str, record: Mapping[str, Any]) -> str:
    """A decision record worth showing, in words; '' for the routine ones."""
    decision, reason = record.get("decision"), record.get("reason")
    if decision is None:
        if record.get("severity") in ("ERROR", "CRITICAL"):
            return f"{record.get('severity')}: {record.get('message')}"
        return ""
    if function == "notify":
        return "" if reason in ("sent", "duplicate") else str(record.get("message"))
    if reason in _QUIET or (decision == "none" and record.get("state") == "closed"):
        return ""
    return str(record.get("message", ""))


def config_for(fleet: str) -> LocalConfig:
    """The default fleet, or another local fleet by name (its saved config)."""
    if fleet == "local":
        return LocalConfig.from_env()
    return compute_endpoint.load_config(LocalConfig.from_env().fleet_dir / fleet / "compute")


def print_line(t0: float) -> Callable[[Line], None]:
    def emit(line: Line) -> None:
        print(f"{line.at - t0:+8.1f}s  {line.source:<8} {line.text}", flush=True)

    return emit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fleet.scenarios.alertpath", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--fleet", default="local", help="local fleet name (default: local)")
    parser.add_argument("--load-high", type=float, default=None, help="scale out above N requests/s/instance")
    parser.add_argument("--load-low", type=float, default=None, help="scale in below N requests/s/instance")
    parser.add_argument(
        "--cpu-high", type=float, default=None, help="scale out above this mean CPU utilization (0..1)"
    )
    parser.add_argument(
        "--cpu-low", type=float, default=None, help="scale in below this mean CPU utilization (0..1)"
    )
    parser.add_argument(
        "--health",
        choices=("probe", "metric"),
        default="probe",
        help="instance health from each member's /health (probe) or the agents' metric (metric)",
    )
    args = parser.parse_args(argv)
    try:
        monitor = MonitorSettings(
            load_high=args.load_high, load_low=args.load_low, cpu_high=args.cpu_high, cpu_low=args.cpu_low
        )
        settings = replace(AlertPathSettings(), monitor=monitor, health_source=args.health)
        path = AlertPath(config_for(args.fleet), settings).start()
    except FleetError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    low, high = path.scale_bounds
    print(
        f"alert path of fleet {path.config.name!r} running: monitor every {monitor.period:g} s, "
        f"functions {', '.join(FUNCTIONS)}, scale bounds [{low}, {high}]; "
        f"webhook sink {path.sink.url if path.sink else '-'}; Ctrl-C stops",
        flush=True,
    )
    if path.pubsub is not None:
        print(
            f"fleet events: PUBSUB_EMULATOR_HOST={path.pubsub.emulator_host} topic {path.events_topic}",
            flush=True,
        )
    try:
        path.follow(print_line(time.time()), until=stop.is_set)
    finally:
        path.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
