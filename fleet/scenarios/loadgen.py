"""A small load generator: keep-alive GET requests through the load balancer while an operation runs,
counting every non-2xx answer and every connection error. It proves "zero downtime", so it counts
strictly: the one thing it forgives is the client's own race on a kept-alive connection that the
server closed while it was idle (every HTTP client retries that once on a fresh connection; the
retries are counted and reported). Bounded in time and in requests, and it talks to loopback only.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fleet.errors import FleetError
from fleet.waits import Deadline

# paths served by the api (through nginx's /console/api) and by web: both keep working while a host
# is drained, unlike /health, which a drained host answers with 503 on purpose (the LB's signal)
DEFAULT_PATHS = ("/console/api/ping", "/", "/v1/ping")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_SECONDS = 1800.0
MAX_REQUESTS = 2_000_000
KEEP_FAILURES = 50


@dataclass
class LoadReport:
    requests: int = 0
    ok: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # non-2xx status -> count
    errors: dict[str, int] = field(default_factory=dict)  # connection error type -> count
    versions: dict[str, int] = field(default_factory=dict)  # X-Standin-Version of 2xx answers
    servers: dict[str, int] = field(default_factory=dict)  # X-Fleet-Server (the LB's choice)
    stale_retries: int = 0
    duration: float = 0.0
    stopped_by: str = "stop"  # stop | time | count
    first_failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.duration if self.duration else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": round(self.rate, 1)}

    def summary(self) -> str:
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(self.versions.items())) or "-"
        text = (
            f"{self.requests} requests in {self.duration:.1f}s ({self.rate:.0f}/s): "
            f"{self.failed} failed; answered by versions {versions}"
        )
        if self.failed:
            text += f"; statuses {self.statuses or '-'}, errors {self.errors or '-'}"
        return text


def check_url(url: str) -> tuple[str, int]:
    """Only plain HTTP to a loopback address: the generator must never load anything else."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        raise FleetError(
            f"refusing to send load to {url!r}", hint="the load generator targets http://127.0.0.1:PORT only"
        )
    return parts.hostname, parts.port or 80


class LoadGen:
    """`threads` clients, each at most `rate` requests per second, until stop() or a bound."""

    def __init__(
        self,
        url: str,
        *,
        threads: int = 4,
        rate: float = 20.0,
        paths: tuple[str, ...] = DEFAULT_PATHS,
        timeout: float = 10.0,
        max_seconds: float = 600.0,
        max_requests: int = 200_000,
    ) -> None:
        self.host, self.port = check_url(url)
        if not 1 <= threads <= 32:
            raise FleetError(f"threads must be 1..32, got {threads}")
        if not 0 < rate <= 1000:
            raise FleetError(f"rate must be in (0, 1000] requests/s per thread, got {rate}")
        if not 0 < max_seconds <= MAX_SECONDS or not 0 < max_requests <= MAX_REQUESTS:
            raise FleetError(
                "the load must be bounded", hint=f"<= {MAX_SECONDS:.0f}s and <= {MAX_REQUESTS} requests"
            )
        if not paths or not all(p.startswith("/") for p in paths):
            raise FleetError(f"paths must start with '/': {paths!r}")
        self.threads = threads
        self.interval = 1.0 / rate
        self.paths = paths
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._report = LoadReport()
        self._statuses: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._versions: Counter[str] = Counter()
        self._servers: Counter[str] = Counter()
        self._workers: list[threading.Thread] = []
        self._started = 0.0
        self._ended = 0.0
        self._issued = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LoadGen:
        self._started = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._client, args=(i,), name=f"loadgen-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> LoadReport:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=self.timeout + 5)
        return self.report()

    def wait(self, timeout: float | None = None) -> LoadReport:
        """Until a bound ends the run (max_seconds or max_requests)."""
        deadline = None if timeout is None else Deadline(timeout)
        for t in self._workers:
            t.join(None if deadline is None else max(0.0, deadline.left()))
        return self.report()

    def __enter__(self) -> LoadGen:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def report(self) -> LoadReport:
        with self._lock:
            r = self._report
            end = self._ended or time.monotonic()
            return LoadReport(
                requests=r.requests,
                ok=r.ok,
                failed=r.failed,
                statuses=dict(self._statuses),
                errors=dict(self._errors),
                versions=dict(self._versions),
                servers=dict(self._servers),
                stale_retries=r.stale_retries,
                duration=end - self._started if self._started else 0.0,
                stopped_by=r.stopped_by,
                first_failures=list(r.first_failures),
            )

    # ------------------------------------------------------------------ one client

    def _claim(self) -> bool:
        """Reserve the next request, or say a bound is reached."""
        with self._lock:
            if self._issued >= self.max_requests:
                self._report.stopped_by = "count"
                return False
            if time.monotonic() - self._started >= self.max_seconds:
                self._report.stopped_by = "time"
                return False
            self._issued += 1
            return True

    def _client(self, index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        reused = False
        n = index
        next_at = time.monotonic()
        while not self._stop.is_set():
            if not self._claim():
                self._stop.set()
                break
            path = self.paths[n % len(self.paths)]
            n += 1
            attempt = 0
            while True:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                    reused = False
                try:
                    conn.request(
                        "GET", path, headers={"User-Agent": "fleet-loadgen", "Connection": "keep-alive"}
                    )
                    resp = conn.getresponse()
                    resp.read()
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    conn.close()
                    conn = None
                    if reused and attempt == 0:
                        attempt += 1
                        with self._lock:
                            self._report.stale_retries += 1
                        continue  # the server closed an idle kept-alive connection: retry once, fresh
                    self._failure(path, type(exc).__name__, str(exc))
                    break
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = None
                    self._failure(path, type(exc).__name__, str(exc))
                    break
                self._answer(path, resp)
                if resp.will_close:
                    conn.close()
                    conn = None
                else:
                    reused = True
                break
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # fell behind: do not burst to catch up
        if conn is not None:
            conn.close()
        with self._lock:
            self._ended = max(self._ended, time.monotonic())

    def _answer(self, path: str, resp: http.client.HTTPResponse) -> None:
        with self._lock:
            self._report.requests += 1
            server = resp.getheader("X-Fleet-Server")
            if server:
                self._servers[server] += 1
            if 200 <= resp.status < 300:
                self._report.ok += 1
                version = resp.getheader("X-Standin-Version")
                if version:
                    self._versions[version] += 1
                return
            self._report.failed += 1
            self._statuses[str(resp.status)] += 1
            self._keep(f"{path}: HTTP {resp.status} from {server or 'the LB'}")

    def _failure(self, path: str, kind: str, detail: str) -> None:
        with self._lock:
            self._report.requests += 1
            self._report.failed += 1
            self._errors[kind] += 1
            self._keep(f"{path}: {kind}: {detail[:200]}")

    def _keep(self, text: str) -> None:
        if len(self._report.first_failures) < KEEP_FAILURES:
            self._report.first_failures.append(f"+{time.monotonic() - self._started:.2f}s {text}")
