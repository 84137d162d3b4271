"""A local HTTP endpoint speaking the Compute Engine REST v1 subset the project uses.

Point the real client at it:
    compute_v1.InstancesClient(credentials=AnonymousCredentials(),
                               client_options={"api_endpoint": api.url})
Real URL paths, camelCase JSON, Compute's error format and status codes, requestId idempotency and
operations that really go PENDING -> RUNNING -> DONE. Every call is recorded, and faults (for the next
N calls of a method: an error status, a garbled body, or a late answer) can be injected, in-process or
over HTTP under /_local/.

CLI:  python -m standins.compute_api --state STATE.json [--port N]   (binds 127.0.0.1 only)
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standins import compute_resources
from standins.compute_state import ComputeApiError, ComputeBackend, InMemoryCompute, invalid, scope_of
from standins.errors import StandinError

_P = r"/compute/v1/projects/(?P<project>[^/]+)"
_LOC = r"/(?P<scope>zones|regions)/(?P<location>[^/]+)"
_ZONE = r"/zones/(?P<zone>[^/]+)"
_MAX_BODY = 1 << 20


@dataclass
class Call:
    """One request as the endpoint saw it."""

    method: str  # Compute method name, e.g. instances.reset, regionInstanceGroupManagers.resize
    http_method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int
    request_id: str = ""
    at: float = field(default_factory=time.time)


@dataclass
class Fault:
    method: str
    status: int
    times: int
    reason: str
    message: str
    raw: str | None = None  # answer this body verbatim (e.g. a proxy's HTML page) instead
    delay: float = 0.0  # seconds to wait before answering (a status < 400 then answers normally)


@dataclass(frozen=True)
class RawBody:
    """A response body sent as is, not as JSON."""

    text: str


Handler = Callable[[dict[str, str], dict[str, str], Any], tuple[int, Any]]


class ComputeApi:
    """The HTTP front of a ComputeBackend; start() serves on `host` (127.0.0.1) in a thread. A second
    front on another address (the VMs' network) may share the backend."""

    def __init__(
        self, backend: ComputeBackend, port: int = 0, wait_limit: float = 2.0, host: str = "127.0.0.1"
    ) -> None:
        self.backend = backend
        self.host = host
        self.wait_limit = wait_limit  # operations.wait returns after this long even if not DONE
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._faults: list[Fault] = []
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # what `fab infra.apply` manages: networks ... forwarding rules, regional MIG insert/patch
        self.resources = compute_resources.for_backend(backend)
        self._routes = self._build_routes()

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> ComputeApi:
        api = self

        class _Handler(_RequestHandler):
            owner = api

        self._server = ThreadingHTTPServer((self.host, self._port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="compute-api", daemon=True
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("compute api not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ComputeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test hooks --------------------------------------------------------------------------------

    def inject(
        self,
        method: str,
        status: int = 503,
        times: int = 1,
        reason: str = "backendError",
        message: str = "injected fault",
        *,
        raw: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next `times` calls of `method` with `status` (before touching the backend), or
        with `raw` as the body; `delay` first waits that long (status < 400: then answers normally)."""
        with self._lock:
            self._faults.append(Fault(method, status, times, reason, message, raw, delay))

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def actions(self) -> list[Call]:
        """Successful mutating calls (what changed the fleet), in order."""
        return [
            c
            for c in self.calls()
            if c.http_method != "GET"
            and c.status == 200
            and not c.method.endswith(("wait", "listManagedInstances"))
        ]

    # --- dispatch ----------------------------------------------------------------------------------

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], str, Handler]]:
        b = self.backend
        raw: list[tuple[str, str, str, Handler]] = [
            # first: its regionInstanceGroupManagers.get lays the MIG fields it keeps over the backend's
            *self.resources.routes(),
            ("GET", _P + r"$", "projects.get", lambda p, q, body: (200, b.project(p["project"]))),
            (
                "POST",
                _P + r"/setCommonInstanceMetadata$",
                "projects.setCommonInstanceMetadata",
                self._set_metadata,
            ),
            ("GET", _P + _ZONE + r"/instances$", "instances.list", self._list_instances),
            (
                "GET",
                _P + _ZONE + r"/instances/(?P<instance>[^/]+)$",
                "instances.get",
                lambda p, q, body: (200, b.instance(p["project"], p["zone"], p["instance"])),
            ),
            (
                "POST",
                _P + _ZONE + r"/instances/(?P<instance>[^/]+)/setLabels$",
                "instances.setLabels",
                self._set_labels,
            ),
            ("POST", _P + _ZONE + r"/instances/(?P<instance>[^/]+)/reset$", "instances.reset", self._reset),
            (
                "GET",
                _P + _ZONE + r"/instances/(?P<instance>[^/]+)/getGuestAttributes$",
                "instances.getGuestAttributes",
                lambda p, q, body: (
                    200,
                    b.guest_attributes(
                        p["project"],
                        p["zone"],
                        p["instance"],
                        q.get("queryPath", ""),
                        q.get("variableKey", ""),
                    ),
                ),
            ),
            ("GET", _P + _LOC + r"/instanceGroupManagers$", "instanceGroupManagers.list", self._list_igms),
            (
                "GET",
                _P + _LOC + r"/instanceGroupManagers/(?P<igm>[^/]+)$",
                "instanceGroupManagers.get",
                lambda p, q, body: (200, b.igm(p["project"], p["location"], p["igm"])),
            ),
            (
                "POST",
                _P + _LOC + r"/instanceGroupManagers/(?P<igm>[^/]+)/listManagedInstances$",
                "instanceGroupManagers.listManagedInstances",
                lambda p, q, body: (
                    200,
                    {"managedInstances": b.managed_instances(p["project"], p["location"], p["igm"])},
                ),
            ),
            (
                "POST",
                _P + _LOC + r"/instanceGroupManagers/(?P<igm>[^/]+)/resize$",
                "instanceGroupManagers.resize",
                self._resize,
            ),
            (
                "POST",
                _P + _LOC + r"/instanceGroupManagers/(?P<igm>[^/]+)/recreateInstances$",
                "instanceGroupManagers.recreateInstances",
                self._recreate,
            ),
            (
                "POST",
                _P + _LOC + r"/instanceGroupManagers/(?P<igm>[^/]+)/setInstanceTemplate$",
                "instanceGroupManagers.setInstanceTemplate",
                self._set_instance_template,
            ),
            (
                "POST",
                _P + _LOC + r"/instanceGroupManagers/(?P<igm>[^/]+)/applyUpdatesToInstances$",
                "instanceGroupManagers.applyUpdatesToInstances",
                self._apply_updates,
            ),
            # a zonal MIG's patch (a regional one's is the resource store's, above: same backend call)
            (
                "PATCH",
                _P + _LOC + r"/instanceGroupManagers/(?P<igm>[^/]+)$",
                "instanceGroupManagers.patch",
                self._patch_igm,
            ),
            ("GET", _P + _LOC + r"/autoscalers$", "autoscalers.list", self._list_autoscalers),
            (
                "GET",
                _P + _LOC + r"/autoscalers/(?P<autoscaler>[^/]+)$",
                "autoscalers.get",
                lambda p, q, body: (200, b.autoscaler(p["project"], p["location"], p["autoscaler"])),
            ),
            ("PATCH", _P + _LOC + r"/autoscalers$", "autoscalers.patch", self._patch_autoscaler),
            ("PUT", _P + _LOC + r"/autoscalers$", "autoscalers.update", self._update_autoscaler),
            (
                "GET",
                _P + _LOC + r"/operations/(?P<operation>[^/]+)$",
                "operations.get",
                lambda p, q, body: (
                    200,
                    b.ops.get(p["project"], p["scope"], p["location"], p["operation"]).to_json(),
                ),
            ),
            ("POST", _P + _LOC + r"/operations/(?P<operation>[^/]+)/wait$", "operations.wait", self._wait),
            (
                "GET",
                _P + r"/global/operations/(?P<operation>[^/]+)$",
                "globalOperations.get",
                lambda p, q, body: (200, b.ops.get(p["project"], "global", "", p["operation"]).to_json()),
            ),
            (
                "POST",
                _P + r"/global/operations/(?P<operation>[^/]+)/wait$",
                "globalOperations.wait",
                self._wait,
            ),
        ]
        return [(verb, re.compile(pattern), name, fn) for verb, pattern, name, fn in raw]

    @staticmethod
    def method_name(name: str, params: dict[str, str]) -> str:
        """Compute's own method names: zonal and regional variants differ by prefix."""
        scope = params.get("scope")
        if name.startswith("operations."):
            prefix = "zoneOperations" if scope == "zones" else "regionOperations"
            return f"{prefix}.{name.split('.', 1)[1]}"
        if scope == "regions" and name.split(".")[0] in ("instanceGroupManagers", "autoscalers"):
            head, tail = name.split(".", 1)
            return f"region{head[0].upper()}{head[1:]}.{tail}"
        return name

    def dispatch(self, http_method: str, raw_path: str, raw_body: bytes) -> tuple[int, Any]:
        """Route one request; returns (status, JSON body). Records the call."""
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if parts.path.startswith("/_local/"):
            return self._local(http_method, parts.path, raw_body)
        body: Any = None
        name = "unknown"
        status: int
        result: Any
        try:
            if raw_body:
                try:
                    body = json.loads(raw_body)
                except ValueError:
                    raise invalid("Invalid JSON payload received.") from None
            for verb, pattern, route_name, fn in self._routes:
                match = pattern.fullmatch(parts.path)
                if match is None:
                    continue
                if verb != http_method:
                    continue
                params = match.groupdict()
                name = self.method_name(route_name, params)
                if (
                    "scope" in params
                    and params["location"]
                    and scope_of(params["location"]) != params["scope"]
                ):
                    raise invalid(f"Invalid value for field '{params['scope'][:-1]}': '{params['location']}'")
                fault = self._take_fault(name)
                if fault is not None and fault.delay > 0:
                    time.sleep(fault.delay)
                if fault is not None and fault.raw is not None:
                    status, result = fault.status, RawBody(fault.raw)
                elif fault is not None and fault.status >= 400:
                    raise ComputeApiError(fault.status, fault.reason, fault.message)
                else:
                    status, result = fn(params, query, body)
                break
            else:
                raise ComputeApiError(404, "notFound", f"Not Found: {http_method} {parts.path}")
        except ComputeApiError as exc:
            status, result = exc.status, exc.body()
        with self._lock:
            self._calls.append(
                Call(name, http_method, parts.path, query, body, status, query.get("requestId", ""))
            )
        return status, result

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _local(self, http_method: str, path: str, raw_body: bytes) -> tuple[int, Any]:
        """Test/demo hooks over HTTP, for when the endpoint runs as a separate process."""
        if http_method == "GET" and path == "/_local/calls":
            return 200, {"calls": [asdict(c) for c in self.calls()]}
        if http_method == "DELETE" and path == "/_local/calls":
            self.clear_calls()
            return 200, {}
        if http_method == "GET" and path == "/_local/state":
            return 200, self.backend.dump()
        if http_method == "GET" and path == "/_local/resources":
            return 200, self.resources.dump()
        if http_method == "POST" and path == "/_local/faults":
            try:
                spec = json.loads(raw_body or b"{}")
                self.inject(
                    spec["method"],
                    int(spec.get("status", 503)),
                    int(spec.get("times", 1)),
                    raw=None if spec.get("raw") is None else str(spec["raw"]),
                    delay=float(spec.get("delay", 0.0)),
                )
            except (ValueError, KeyError, TypeError) as exc:
                return 400, {"error": {"code": 400, "message": f"bad fault: {exc}"}}
            return 200, {}
        return 404, {"error": {"code": 404, "message": f"no local hook {http_method} {path}"}}

    # --- handlers ----------------------------------------------------------------------------------

    @staticmethod
    def _request_id(query: dict[str, str]) -> str:
        """Compute accepts only a non-zero UUID as requestId."""
        raw = query.get("requestId", "")
        if not raw:
            return ""
        try:
            parsed = uuid.UUID(raw)
        except ValueError:
            parsed = None
        if parsed is None or parsed.int == 0:
            raise invalid(
                f"Invalid value for field 'requestId': '{raw}'. The request id must be a valid UUID with the "
                "exception that zero UUID is not supported (00000000-0000-0000-0000-000000000000)."
            )
        return raw

    @staticmethod
    def _object(body: Any, what: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise invalid(f"Required field '{what}' not specified")
        return body

    def _list(self, key: str, items: list[dict[str, Any]], kind: str, link: str) -> tuple[int, Any]:
        return 200, {"kind": kind, "id": link, key: items, "selfLink": link}

    def _list_instances(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        items = self.backend.instances(p["project"], p["zone"])
        return self._list(
            "items", items, "compute#instanceList", f"projects/{p['project']}/zones/{p['zone']}/instances"
        )

    def _list_igms(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        items = self.backend.igms(p["project"], p["location"])
        link = f"projects/{p['project']}/{p['scope']}/{p['location']}/instanceGroupManagers"
        return self._list("items", items, "compute#instanceGroupManagerList", link)

    def _list_autoscalers(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        items = self.backend.autoscalers(p["project"], p["location"])
        link = f"projects/{p['project']}/{p['scope']}/{p['location']}/autoscalers"
        return self._list("items", items, "compute#autoscalerList", link)

    def _set_labels(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        req = self._object(body, "resource")
        labels = req.get("labels") or {}
        if not isinstance(labels, dict):
            raise invalid("Invalid value for field 'resource.labels'")
        op = self.backend.set_labels(
            p["project"],
            p["zone"],
            p["instance"],
            labels,
            str(req.get("labelFingerprint", "")),
            self._request_id(q),
        )
        return 200, op.to_json()

    def _reset(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        return 200, self.backend.reset(p["project"], p["zone"], p["instance"], self._request_id(q)).to_json()

    def _resize(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        raw = q.get("size")
        if raw is None:
            raise invalid("Required field 'size' not specified")
        try:
            size = int(raw)
        except ValueError:
            raise invalid(f"Invalid value for field 'size': '{raw}'") from None
        op = self.backend.resize(p["project"], p["location"], p["igm"], size, self._request_id(q))
        return 200, op.to_json()

    def _recreate(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        instances = self._object(body, "resource").get("instances") or []
        if not isinstance(instances, list) or not all(isinstance(i, str) for i in instances):
            raise invalid("Invalid value for field 'resource.instances'")
        op = self.backend.recreate(p["project"], p["location"], p["igm"], instances, self._request_id(q))
        return 200, op.to_json()

    def _set_instance_template(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        template = self._object(body, "resource").get("instanceTemplate")
        if not isinstance(template, str):
            raise invalid("Required field 'instanceTemplate' not specified")
        op = self.backend.set_instance_template(
            p["project"], p["location"], p["igm"], template, self._request_id(q)
        )
        return 200, op.to_json()

    def _apply_updates(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        req = self._object(body, "resource")
        op = self.backend.apply_updates(p["project"], p["location"], p["igm"], req, self._request_id(q))
        return 200, op.to_json()

    def _patch_igm(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        req = self._object(body, "resource")
        op = self.backend.patch_igm(p["project"], p["location"], p["igm"], req, self._request_id(q))
        return 200, op.to_json()

    def _autoscaler_write(
        self, p: dict[str, str], q: dict[str, str], body: Any, replace: bool
    ) -> tuple[int, Any]:
        req = self._object(body, "resource")
        name = q.get("autoscaler") or req.get("name")
        if not isinstance(name, str) or not name:
            raise invalid("Required field 'autoscaler' not specified")
        op = self.backend.patch_autoscaler(
            p["project"], p["location"], name, req, self._request_id(q), replace
        )
        return 200, op.to_json()

    def _patch_autoscaler(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        return self._autoscaler_write(p, q, body, replace=False)

    def _update_autoscaler(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        return self._autoscaler_write(p, q, body, replace=True)

    def _set_metadata(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        req = self._object(body, "resource")
        return 200, self.backend.set_common_metadata(p["project"], req, self._request_id(q)).to_json()

    def _wait(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        scope = p.get("scope") or "global"
        op = self.backend.ops.wait(
            p["project"], scope, p.get("location") or "", p["operation"], self.wait_limit
        )
        return 200, op.to_json()


class _RequestHandler(BaseHTTPRequestHandler):
    owner: ComputeApi
    protocol_version = "HTTP/1.1"  # keep-alive, like Google's front ends
    # One segment per response and no Nagle: otherwise delayed ACKs add ~40 ms to every call.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._reply(413, {"error": {"code": 413, "message": "request too large"}})
            return
        raw = self.rfile.read(length) if length else b""
        status, result = self.owner.dispatch(self.command, self.path, raw)
        self._reply(status, result)

    def _reply(self, status: int, result: Any) -> None:
        raw = isinstance(result, RawBody)
        data = result.text.encode() if raw else json.dumps(result).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if raw else "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: calls are recorded, not printed."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.compute_api", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--state", type=Path, required=True, help="JSON state file (MIGs, instances, metadata)"
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument(
        "--action-seconds", type=float, default=2.0, help="duration of reset/recreate/create/delete"
    )
    parser.add_argument(
        "--op-seconds", type=float, default=0.5, help="time until MIG/autoscaler operations are DONE"
    )
    args = parser.parse_args(argv)
    try:
        backend = InMemoryCompute.from_file(
            args.state, action_seconds=args.action_seconds, op_seconds=args.op_seconds
        )
    except StandinError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    api = ComputeApi(backend, port=args.port).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"compute-api listening on {api.url}", flush=True)
    stop.wait()
    api.stop()
    api.resources.close()
    backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
