"""Benchmark the Cloud Functions: per-event decision time and cold-start import of each entry point.

Decision time is the pure path an event takes before any network call: CloudEvent envelope ->
incident parsing -> policy decision on a snapshot of live state (1,000 events, after a warm-up).
A second figure times whole deliveries through functions-framework's app against the local Compute
endpoint (loopback HTTP included), for context. Cold start is `import main` in a fresh interpreter
with FUNCTION_TARGET set, i.e. everything that entry point loads before its first event.
"""

from __future__ import annotations

import base64
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.report import write_section
from fleet.paths import CHECKOUT

ROOT = CHECKOUT
FUNCTIONS = ROOT / "functions"
PROJECT, ZONE = "bench-proj", "us-central1-a"
MIGS = [f"{PROJECT}/{ZONE}/web", f"{PROJECT}/{ZONE}/api", f"{PROJECT}/us-central1/workers"]
EVENTS = 1000
WARMUP = 200
IMPORT_RUNS = 7
TARGETS = {"decision_p99_ms": 20.0, "cold_import_s": 1.5}


def _functions_on_path() -> None:
    if str(FUNCTIONS) not in sys.path:
        sys.path.append(str(FUNCTIONS))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _incident(rng: random.Random, n: int, member_ids: list[str]) -> dict[str, Any]:
    kind = rng.random()
    state = "open" if rng.random() < 0.8 else "closed"
    if kind < 0.7:
        instance_id = rng.choice(member_ids) if rng.random() < 0.9 else str(rng.randrange(10**12))
        labels = {"fleet-action": "autoheal"}
        resource = {
            "type": "gce_instance",
            "labels": {"project_id": PROJECT, "zone": ZONE, "instance_id": instance_id},
        }
    else:
        labels = {
            "fleet-action": "scale",
            "fleet-scale-direction": rng.choice(["out", "in"]),
            "fleet-mig": "web",
        }
        resource = {"type": "instance_group", "labels": {"instance_group_name": "web", "location": ZONE}}
    return {
        "version": "1.2",
        "incident": {
            "incident_id": f"0.bench-{n}",
            "state": state,
            "started_at": 1764140000 + n,
            "ended_at": None if state == "open" else 1764140600 + n,
            "policy_name": "bench",
            "policy_user_labels": labels,
            "resource": resource,
            "metric": {"type": "compute.googleapis.com/instance/uptime_check", "labels": {}},
            "condition_name": "health failing",
            "threshold_value": "1",
            "observed_value": "0.000",
            "summary": "bench incident",
            "url": "https://console.cloud.google.com/monitoring/alerting/incidents/x",
        },
    }


def _event_data(doc: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "message": {
            "data": base64.b64encode(json.dumps(doc).encode()).decode(),
            "messageId": str(n),
            "publishTime": "2026-11-26T07:00:00.000Z",
        },
        "subscription": f"projects/{PROJECT}/subscriptions/bench",
    }


def decision_times() -> list[float]:
    """Milliseconds per event for the pure decision path (envelope, parsing, policy)."""
    _functions_on_path()
    import fleet_contract
    import incidents
    import policy
    import settings

    cfg = settings.load({"FLEET_MIGS": ",".join(MIGS), "FLEET_HEAL_MAX_CONCURRENT": "3"})
    now = time.time()
    rng = random.Random(6)
    fleet = []
    member_ids: list[str] = []
    for m, ref in enumerate(cfg.migs):
        members = []
        for i in range(20):
            labels: dict[str, str] = {}
            if i == 3:
                labels[fleet_contract.ROLLOUT_LABEL] = "r-bench"
            if i == 5:
                labels[fleet_contract.HEAL_LABEL] = (
                    f"reset-{int(now) - 900}-{fleet_contract.incident_key('x')}"
                )
            member_id = str(10**12 + m * 100 + i)
            member_ids.append(member_id)
            members.append(
                policy.ManagedInstance(
                    name=f"{ref.name}-{i:03d}",
                    zone=ZONE if not ref.regional else "us-central1-b",
                    id=member_id,
                    current_action="RECREATING" if i == 7 else "NONE",
                    status="RUNNING",
                    created=now - 7200,
                    labels=labels,
                    label_fingerprint="fp",
                )
            )
        fleet.append(policy.MigState(ref, 20, tuple(members)))
    source = f"//pubsub.googleapis.com/projects/{PROJECT}/topics/alerts"
    events = [_event_data(_incident(rng, n, member_ids), n) for n in range(EVENTS + WARMUP)]

    def decide(data: dict[str, Any]) -> policy.Decision:
        message = incidents.pubsub_message(incidents.PUBSUB_EVENT_TYPE, source, data)
        inc = incidents.parse_incident(message.data)
        target = policy.heal_target(inc)
        if isinstance(target, policy.InstanceTarget):
            return policy.decide_heal(inc, target, fleet, False, now, cfg)
        intent = policy.scale_intent(inc, cfg)
        if isinstance(intent, policy.Decision):
            return intent
        ref = policy.choose_mig(inc, cfg.migs)
        if isinstance(ref, policy.Decision):
            return ref
        state = next(m for m in fleet if m.ref == ref)
        return policy.decide_scale(inc, intent, state, False, now, cfg)

    times = []
    for n, data in enumerate(events):
        start = time.perf_counter_ns()
        decide(data)
        elapsed = (time.perf_counter_ns() - start) / 1e6
        if n >= WARMUP:
            times.append(elapsed)
    return times


def handler_times(count: int = 200) -> list[float]:
    """Milliseconds per delivery through functions-framework's app to the local Compute endpoint."""
    import functions_framework

    from standins.compute_api import ComputeApi
    from standins.compute_state import InMemoryCompute
    from standins.pubsub_api import binary_cloudevent

    backend = InMemoryCompute(action_seconds=0.05, op_seconds=0.01)
    names = backend.add_mig(PROJECT, ZONE, "web", size=20, age=7200)
    api = ComputeApi(backend).start()
    saved = dict(os.environ)
    os.environ.update(
        {
            "FUNCTION_TARGET": "autoheal",
            "FLEET_MIGS": f"{PROJECT}/{ZONE}/web",
            "FLEET_HEAL_MAX_CONCURRENT": "20",
            "COMPUTE_API_ENDPOINT": api.url,
        }
    )
    os.environ.pop("FLEET_EVENTS_TOPIC", None)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    real_stdout = sys.stdout
    try:
        app = functions_framework.create_app(target="autoheal", source=str(FUNCTIONS / "main.py"))
        client = app.test_client()
        ids = [backend.instance(PROJECT, ZONE, n)["id"] for n in names]
        rng = random.Random(7)
        times = []
        sys.stdout = devnull  # the function's JSON logs
        for n in range(count + 20):
            doc = _incident(rng, n, ids)
            doc["incident"]["policy_user_labels"] = {"fleet-action": "autoheal"}
            doc["incident"]["resource"] = {
                "type": "gce_instance",
                "labels": {"project_id": PROJECT, "zone": ZONE, "instance_id": rng.choice(ids)},
            }
            headers, body = binary_cloudevent(
                f"projects/{PROJECT}/topics/alerts", f"h{n}", json.dumps(doc).encode()
            )
            start = time.perf_counter_ns()
            response = client.post("/", headers=headers, data=body)
            elapsed = (time.perf_counter_ns() - start) / 1e6
            if response.status_code != 200:
                raise RuntimeError(f"delivery {n} answered {response.status_code}")
            if n >= 20:
                times.append(elapsed)
        return times
    finally:
        sys.stdout = real_stdout
        devnull.close()
        os.environ.clear()
        os.environ.update(saved)
        api.stop()
        backend.close()


def cold_imports(target: str) -> tuple[list[float], list[float]]:
    """(seconds to `import main`, seconds of the whole interpreter run) for IMPORT_RUNS fresh processes."""
    code = "import time; t = time.perf_counter(); import main; print(time.perf_counter() - t)"
    env = {
        **os.environ,
        "FUNCTION_TARGET": target,
        "FLEET_MIGS": ",".join(MIGS),
        "FLEET_EVENTS_TOPIC": f"projects/{PROJECT}/topics/events",
    }
    imports, walls = [], []
    for _ in range(IMPORT_RUNS):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=FUNCTIONS, env=env, capture_output=True, text=True, check=True
        )
        walls.append(time.perf_counter() - start)
        imports.append(float(out.stdout.strip().splitlines()[-1]))
    return imports, walls


def full_compute_import(runs: int = 3) -> float:
    """Median seconds of `import google.cloud.compute_v1` done the ordinary way, for comparison."""
    code = (
        "import time; t = time.perf_counter(); import google.cloud.compute_v1; print(time.perf_counter() - t)"
    )
    values = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        values.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(values)


def main() -> None:
    load = os.getloadavg()[0]
    decisions = decision_times()
    handler = handler_times()
    imports = {t: cold_imports(t) for t in ("autoheal", "scale", "notify")}
    full = full_compute_import()
    p50, p99 = _percentile(decisions, 50), _percentile(decisions, 99)
    ok = "meets" if p99 <= TARGETS["decision_p99_ms"] else "MISSES"
    lines = [
        f"Decision time per event, no network ({len(decisions)} events after {WARMUP} warm-up; envelope + "
        "incident parsing + policy on a 3-MIG x 20-instance snapshot):",
        "",
        "| p50 | p99 | max | mean | target p99 |",
        "|---|---|---|---|---|",
        f"| {p50:.3f} ms | {p99:.3f} ms | {max(decisions):.3f} ms | {statistics.mean(decisions):.3f} ms "
        f"| <= {TARGETS['decision_p99_ms']:.0f} ms ({ok}) |",
        "",
        f"For context, whole deliveries through functions-framework's app (autoheal, {len(handler)} events, "
        "including ~4 loopback HTTP calls to the local Compute endpoint and the action):"
        f" p50 {_percentile(handler, 50):.1f} ms, p99 {_percentile(handler, 99):.1f} ms.",
        "",
        "Cold start: `import main` with FUNCTION_TARGET set, fresh interpreter, "
        f"median of {IMPORT_RUNS} runs (bytecode cached; the Compute client package is loaded selectively, "
        "see docs/functions.md):",
        "",
        "| entry point | import main (median) | max | whole process (median) | target |",
        "|---|---|---|---|---|",
    ]
    for target, (imp, wall) in imports.items():
        median = statistics.median(imp)
        verdict = "meets" if median <= TARGETS["cold_import_s"] else "MISSES"
        lines.append(
            f"| {target} | {median:.2f} s | {max(imp):.2f} s | {statistics.median(wall):.2f} s "
            f"| <= {TARGETS['cold_import_s']} s ({verdict}) |"
        )
    lines += [
        "",
        f"1-minute load average when the benchmark started: {load:.2f} on {os.cpu_count()} cores "
        "(the machine is shared; tails move with it).",
        "",
        f"For comparison, a plain `import google.cloud.compute_v1` (all ~100 API clients) takes {full:.2f} s "
        "(median of 3) on the same machine.",
    ]
    body = "\n".join(lines)
    print(body)
    write_section(
        "functions", "Cloud Functions: decision time and cold start", "python -m bench functions", body
    )


if __name__ == "__main__":
    main()
