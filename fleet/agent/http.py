"""HTTP for the agent (urllib only): a timeout on every try, bounded retries with backoff on connection
errors, 429 and 5xx, then one clear error. Other answers go back to the caller, who knows what a 404 means."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fleet import settings
from fleet.errors import FleetError

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class HttpError(FleetError):
    """A request failed: `status` is the last HTTP status (0 = no answer)."""

    def __init__(self, what: str, *, status: int = 0, where: str | None = None, hint: str | None = None):
        self.status = status
        super().__init__(what, where=where, hint=hint)


@dataclass(frozen=True)
class Retry:
    attempts: int = settings.AGENT_HTTP_ATTEMPTS
    budget: float = settings.AGENT_HTTP_BUDGET  # seconds for all tries of one request
    timeout: float = settings.AGENT_HTTP_TIMEOUT  # seconds for one try
    backoff: float = 1.0  # first pause; doubles, at most `max_pause`
    max_pause: float = 10.0


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _label(url: str) -> str:
    """The URL without its query (no token or upload name in an error)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class Http:
    def __init__(
        self,
        retry: Retry | None = None,
        *,
        proxies: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry = retry or Retry()
        # the metadata server must never be asked through a proxy (it answers only the VM itself)
        handlers = [] if proxies else [urllib.request.ProxyHandler({})]
        self._opener = urllib.request.build_opener(*handlers)
        self._sleep = sleep
        self._clock = clock

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        what: str = "request",
    ) -> Response:
        """The first answer that is not worth retrying (any status the caller must judge), or HttpError."""
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise HttpError(f"{what}: not an http(s) URL: {_label(url)}")
        r = self.retry
        deadline = self._clock() + r.budget
        problem, status, attempt = "", 0, 0
        for attempt in range(1, max(1, r.attempts) + 1):
            left = deadline - self._clock()
            # the scheme is checked above: no file: or custom scheme reaches urllib
            req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))  # noqa: S310
            try:
                with self._opener.open(req, timeout=max(0.5, min(r.timeout, left))) as resp:
                    return Response(resp.status, dict(resp.headers.items()), resp.read())
            except urllib.error.HTTPError as exc:
                data = exc.read()
                if exc.code not in RETRY_STATUS:
                    return Response(exc.code, dict(exc.headers.items()), data)
                status, problem = exc.code, f"HTTP {exc.code} {data[:200].decode(errors='replace')}".strip()
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                reason = getattr(exc, "reason", exc)
                status, problem = 0, f"no answer ({reason})"
            pause = min(r.backoff * 2 ** (attempt - 1), r.max_pause)
            if attempt >= r.attempts or self._clock() + pause >= deadline:
                break
            self._sleep(pause)
        raise HttpError(
            f"{what}: {method} {_label(url)}: {problem} (gave up after {attempt} tries)",
            status=status,
            hint="is the endpoint reachable from this VM (network, firewall, Private Google Access)?",
        )
