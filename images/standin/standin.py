#!/usr/bin/python3
"""Stand-in for one service of the dify stack, small enough to build locally in a second.

STANDIN_ROLE picks the service: api (MODE=api|worker|beat, as upstream dify-api), web, sandbox,
plugin_daemon; `standin.py exec -- CMD...` wraps a real daemon (nginx, squid) with the same knobs.
Fault knobs: STANDIN_START_DELAY (s before health turns 200), STANDIN_UNHEALTHY=1 (health 503
forever), STANDIN_CRASH_AFTER (s, then exit 1), and a file DISK_FAULT in the api's storage volume
(health 503 while it exists: data on the VM's disk that no restart or redeploy repairs, only a new
disk). SIGTERM stops promptly: PID 1 must handle it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROLE = os.environ.get("STANDIN_ROLE", "api")
VERSION = os.environ.get("STANDIN_VERSION", "0.0.0")
BROKEN = os.environ.get("STANDIN_BROKEN", "") == "1"  # baked into dify-api:*-broken
PORTS = {"api": 5001, "web": 3000, "sandbox": 8194, "plugin_daemon": 5002}
HEALTH_PATHS = {"api": {"/health"}, "sandbox": {"/health"}, "plugin_daemon": {"/health/check"}}
API_PREFIXES = ("/console/api", "/api", "/v1", "/files", "/mcp", "/triggers")
STARTED = time.monotonic()
STOP = threading.Event()
NAME = os.environ.get("MODE", "api") if ROLE == "api" else ROLE  # api, worker or beat for dify-api


def log(text: str) -> None:
    print(f"{NAME}[{VERSION}]: {text}", flush=True)


def seconds(name: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        log(f"ignoring {name}={raw!r}: not a number of seconds")
        return 0.0
    return max(value, 0.0)


START_DELAY = seconds("STANDIN_START_DELAY")
CRASH_AFTER = seconds("STANDIN_CRASH_AFTER")
UNHEALTHY = os.environ.get("STANDIN_UNHEALTHY", "") == "1"


DISK_FAULT = "/app/api/storage/.standin-disk-fault"  # the VM's volumes/app/storage, mounted there


def health() -> tuple[int, str]:
    if BROKEN:
        return 503, "broken"
    if ROLE == "api" and os.path.exists(DISK_FAULT):
        return 503, "disk fault"
    if UNHEALTHY:
        return 503, "unhealthy"
    if time.monotonic() - STARTED < START_DELAY:
        return 503, "starting"
    return 200, "ok"


def arm_crash() -> None:
    if CRASH_AFTER > 0:

        def crash() -> None:
            log(f"crashing as asked (STANDIN_CRASH_AFTER={CRASH_AFTER:g})")
            os._exit(1)

        timer = threading.Timer(CRASH_AFTER, crash)
        timer.daemon = True
        timer.start()


class Handler(BaseHTTPRequestHandler):
    server_version = f"standin-{ROLE}/{VERSION}"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        if self.path.split("?")[0] not in HEALTH_PATHS.get(ROLE, set()):
            log(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}")

    def send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Standin-Version", VERSION)
        self.send_header("X-Standin-Role", ROLE)
        self.send_header("X-Standin-Host", socket.gethostname())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json(self, code: int, payload: dict[str, object]) -> None:
        self.send(code, (json.dumps(payload) + "\n").encode(), "application/json")

    def route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))
        path = self.path.split("?")[0]
        code, status = health()
        if ROLE == "web":
            body = (
                f"<!doctype html><html><head><title>dify web {VERSION}</title></head>"
                f"<body><h1>dify web stand-in</h1><p>version {VERSION}</p><p>status {status}</p>"
                f"<p>path {path}</p></body></html>\n"
            )
            self.send(code, body.encode(), "text/html; charset=utf-8")
        elif path in HEALTH_PATHS.get(ROLE, set()):
            self.json(code, {"status": status, "version": VERSION, "service": ROLE})
        elif ROLE == "api" and path == "/console/api/ping":
            self.json(200, {"result": "pong", "version": VERSION})
        elif ROLE == "api" and not any(path == p or path.startswith(p + "/") for p in API_PREFIXES):
            self.json(404, {"code": "not_found", "version": VERSION, "path": path})
        else:
            self.json(200, {"service": ROLE, "version": VERSION, "path": path, "method": self.command})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = route


def on_term(signum: int, _frame: object) -> None:
    log(f"signal {signum}: stopping")
    STOP.set()


def serve() -> int:
    port = int(os.environ.get("STANDIN_PORT") or PORTS.get(ROLE, 8000))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - a container's own service
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    log(f"listening on :{port}" + (f", healthy after {START_DELAY:g} s" if START_DELAY else ""))
    STOP.wait()
    server.shutdown()
    return 0


def work(kind: str) -> int:
    """worker: tasks of STANDIN_TASK_SECONDS each, SIGTERM honoured after the current task; beat: ticks."""
    task_seconds = min(seconds("STANDIN_TASK_SECONDS") or 0.3, 0.9)
    every = seconds("STANDIN_BEAT_SECONDS") or 1.0
    if START_DELAY and STOP.wait(START_DELAY):
        return 0
    log(f"{kind} started")
    n = 0
    while not STOP.is_set():
        n += 1
        if kind == "beat":
            log(f"beat: scheduled task {n}")
            open("/tmp/standin-heartbeat", "w").close()
            STOP.wait(every)
        else:
            time.sleep(task_seconds)  # the "task": not interrupted by SIGTERM, finished first
            log(f"worker: task {n} done")
            open("/tmp/standin-heartbeat", "w").close()
    log(f"{kind} stopped after {n} tasks")
    return 0


def wrap(argv: list[str]) -> int:
    """Run a real daemon (nginx, squid) with the start-delay and crash knobs; plain exec otherwise."""
    if not argv:
        log("exec: nothing to run")
        return 2
    if START_DELAY and STOP.wait(START_DELAY):
        return 0
    if not CRASH_AFTER:
        os.execvp(argv[0], argv)  # noqa: S606 - the wrapped daemon becomes PID 1
    import subprocess

    child = subprocess.Popen(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    try:
        return child.wait(timeout=CRASH_AFTER)
    except subprocess.TimeoutExpired:
        log(f"crashing as asked (STANDIN_CRASH_AFTER={CRASH_AFTER:g})")
        child.kill()
        return 1


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if argv[:1] == ["exec"]:
        rest = argv[1:]
        return wrap(rest[1:] if rest[:1] == ["--"] else rest)
    arm_crash()
    mode = os.environ.get("MODE", "api") if ROLE == "api" else ROLE
    if mode in ("worker", "beat"):
        return work(mode)
    if mode != "api" and ROLE == "api":
        log(f"unknown MODE={mode!r}; expected api, worker or beat")
        return 2
    return serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
