"""The database connections a release would open at the fleet's largest size, against max_connections.

Every api worker process and every Celery worker process keeps its own SQLAlchemy pool (up to
SQLALCHEMY_POOL_SIZE + SQLALCHEMY_MAX_OVERFLOW connections), the plugin daemon its own (DB_MAX_OPEN_CONNS),
and each process's pgvector pool up to PGVECTOR_MAX_CONNECTION. Multiplied by the instances a MIG may
scale to, that easily passes a Cloud SQL instance's max_connections, and the failure shows only under
load ("too many clients"). So the plan shows the sum, per instance and for the fleet, and warns when
it is near (80 %) or over the limit the inventory gives (`dify.db_max_connections`,
`dify.pgvector_max_connections`).

Processes per instance (upstream's entrypoint): api = SERVER_WORKER_AMOUNT gunicorn workers; worker =
one process with the default gevent pool (CELERY_WORKER_CLASS empty or gevent: CELERY_WORKER_AMOUNT is
greenlets sharing one pool), else CELERY_WORKER_AMOUNT processes (CELERY_MAX_WORKERS with autoscaling);
worker_beat = one process on the one beat host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NEAR = 0.8  # share of max_connections from which the plan warns


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key, "")
    try:
        return int(float(value)) if value != "" else default
    except ValueError:
        return default


def worker_processes(env: Mapping[str, str]) -> int:
    """Celery worker processes of one instance, as upstream's entrypoint starts them."""
    pool = env.get("CELERY_WORKER_CLASS", "") or "gevent"
    if pool in ("gevent", "eventlet", "threads", "solo"):
        return 1
    if env.get("CELERY_AUTO_SCALE", "").lower() == "true":
        return max(1, _int(env, "CELERY_MAX_WORKERS", 1))
    return max(1, _int(env, "CELERY_WORKER_AMOUNT", 1))


@dataclass(frozen=True)
class Line:
    """One kind of process: how many, connections each, on how many instances."""

    what: str
    processes: int
    per_process: int
    instances: int

    @property
    def total(self) -> int:
        return self.processes * self.per_process * self.instances


@dataclass(frozen=True)
class Budget:
    database: str  # "main" or "pgvector"
    lines: tuple[Line, ...]
    limit: int | None

    @property
    def total(self) -> int:
        return sum(line.total for line in self.lines)

    @property
    def status(self) -> str:
        if self.limit is None:
            return "no limit given"
        if self.total > self.limit:
            return "OVER"
        return "near" if self.total >= NEAR * self.limit else "ok"

    def warning(self) -> str | None:
        if self.status not in ("OVER", "near"):
            return None
        verb = "exceeds" if self.status == "OVER" else "is within 20 % of"
        return (
            f"the {self.database} database: {self.total} connections at the fleet's largest size {verb} "
            f"max_connections {self.limit}; lower SQLALCHEMY_POOL_SIZE / SQLALCHEMY_MAX_OVERFLOW / "
            "SERVER_WORKER_AMOUNT (or the pgvector pool), cap the fleet size, or raise the instance's "
            "max_connections flag"
        )

    def render(self) -> list[str]:
        limit = "?" if self.limit is None else str(self.limit)
        out = [
            f"  {self.database} database: {self.total} connections / max_connections {limit} ({self.status})"
        ]
        for line in self.lines:
            out.append(
                f"    {line.what}: {line.processes} process(es) x {line.per_process} x "
                f"{line.instances} instance(s) = {line.total}"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "total": self.total,
            "limit": self.limit,
            "status": self.status,
            "lines": [{**line.__dict__, "total": line.total} for line in self.lines],
        }


def compute(
    envs: Sequence[Mapping[str, str]],
    instances: int,
    *,
    db_limit: int | None = None,
    pgvector_limit: int | None = None,
    shared: bool = False,
    beat: bool = True,
) -> tuple[Budget, ...]:
    """Budgets from the rendered .env of the hosts (the largest per-instance figure counts for every
    instance); `shared`: pgvector lives on the main instance, so one budget holds both."""
    if not envs:
        return ()

    def biggest(f: Any) -> int:
        return max(f(env) for env in envs)

    def pool(env: Mapping[str, str]) -> int:
        return _int(env, "SQLALCHEMY_POOL_SIZE", 30) + _int(env, "SQLALCHEMY_MAX_OVERFLOW", 10)

    main = [
        Line("api", biggest(lambda e: _int(e, "SERVER_WORKER_AMOUNT", 1)), biggest(pool), instances),
        Line("worker", biggest(worker_processes), biggest(pool), instances),
        Line("plugin_daemon", 1, biggest(lambda e: _int(e, "PLUGIN_DB_MAX_OPEN_CONNS", 30)), instances),
    ]
    if beat:
        main.append(Line("worker_beat", 1, biggest(pool), 1))
    vector_per = biggest(lambda e: _int(e, "PGVECTOR_MAX_CONNECTION", 5))
    vector = [
        Line("api (pgvector pool)", main[0].processes, vector_per, instances),
        Line("worker (pgvector pool)", main[1].processes, vector_per, instances),
    ]
    if shared:
        return (Budget("main (with pgvector)", tuple(main + vector), db_limit),)
    return (Budget("main", tuple(main), db_limit), Budget("pgvector", tuple(vector), pgvector_limit))


def max_instances(inv: Any) -> int:
    """The fleet's largest size: dify.max_instances, else monitoring.scale.max, else its host count."""
    hosts = list(inv.hosts.values())
    for host in hosts[:1]:
        s = host.settings
        if s.dify.max_instances:
            return int(s.dify.max_instances)
        if s.monitoring is not None and s.monitoring.scale is not None:
            return max(int(s.monitoring.scale.max), len(hosts))
    return max(1, len(hosts))


def for_inventory(inv: Any, bundles: Mapping[str, Any]) -> tuple[Budget, ...]:
    """The budgets of the release `bundles` (host -> Bundle) would install across `inv`."""
    if not bundles:
        return ()
    first = inv.hosts[next(iter(bundles))].settings
    envs = [dict(b.env) for b in bundles.values()]
    layer = first.data_layer
    shared = (layer is not None and (layer.pgvector_instance in (None, layer.sql_instance))) or all(
        e.get("PGVECTOR_HOST") == e.get("DB_HOST") for e in envs
    )
    return compute(
        envs,
        max_instances(inv),
        db_limit=first.dify.db_max_connections,
        pgvector_limit=first.dify.pgvector_max_connections if not shared else None,
        shared=shared,
    )
