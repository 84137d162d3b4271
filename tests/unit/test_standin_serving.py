"""The stand-ins' shared server lifecycle (standins/serving.py): real sockets, a real gRPC server and
a real stand-in CLI process; a taken port is a clear StandinError, stop is idempotent."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import grpc
import pytest

from standins.errors import StandinError
from standins.serving import GrpcStandin, HttpStandin

ROOT = Path(__file__).resolve().parents[2]


class Hello(HttpStandin):
    name = "hello-api"
    methods = ("GET", "POST")

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        body = json.dumps({"method": method, "path": request.path}).encode()
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


class Echo(GrpcStandin):
    name = "echo-api"

    def _services(self) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        return {"test.Echo": {"Say": grpc.unary_unary_rpc_method_handler(_echo)}}


@pytest.fixture
def taken() -> Iterator[int]:
    """A port held by a plain listening socket (no SO_REUSEPORT, so no server may share it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_http_standin_serves_on_a_free_port_and_stops_twice() -> None:
    api = Hello("127.0.0.1", 0)
    assert api.port == 0, "the configured port until start"
    with api:
        assert api.port > 0 and api.url == f"http://127.0.0.1:{api.port}"
        with urllib.request.urlopen(f"{api.url}/x?y=1", timeout=5) as resp:
            assert json.loads(resp.read()) == {"method": "GET", "path": "/x?y=1"}
            assert resp.version == 11, "HTTP/1.1, as the Google APIs answer"
        with urllib.request.urlopen(urllib.request.Request(f"{api.url}/p", data=b"{}"), timeout=5) as resp:
            assert json.loads(resp.read()) == {"method": "POST", "path": "/p"}
        with pytest.raises(urllib.error.HTTPError) as put:  # not among its methods
            urllib.request.urlopen(urllib.request.Request(api.url, data=b"", method="PUT"), timeout=5)
        assert put.value.code == 501
    assert api.url.endswith(f":{api.port}"), "the bound port stays after stop (URLs handed out)"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(api.url, timeout=2)
    api.stop()  # a second stop is harmless
    port = api.port
    with api, urllib.request.urlopen(api.url, timeout=5) as resp:  # it starts again, on the same port
        assert resp.status == 200 and api.port == port


def test_a_taken_http_port_is_a_standin_error_naming_the_server(taken: int) -> None:
    with pytest.raises(StandinError) as exc:
        Hello("127.0.0.1", taken).start()
    assert exc.value.where == "hello-api"
    assert f"cannot listen on 127.0.0.1:{taken}" in exc.value.what
    assert exc.value.hint and "--port" in exc.value.hint


def test_grpc_standin_serves_and_stops(tmp_path: Path) -> None:
    with Echo() as api:
        assert api.port > 0 and api.endpoint == f"127.0.0.1:{api.port}"
        with grpc.insecure_channel(api.endpoint) as channel:
            say = channel.unary_unary("/test.Echo/Say")
            assert say(b"hi", timeout=5) == b"echo:hi"
    with grpc.insecure_channel(api.endpoint) as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/test.Echo/Say")(b"hi", timeout=2)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    api.stop()


def test_a_taken_grpc_port_is_a_standin_error_naming_the_server(taken: int) -> None:
    with pytest.raises(StandinError) as exc:
        Echo(port=taken).start()
    assert exc.value.where == "echo-api" and f"127.0.0.1:{taken}" in exc.value.what


@pytest.mark.parametrize(
    ("module", "args", "banner"),
    [
        ("webhook_sink", [], "webhook-sink listening on http://127.0.0.1:"),
        ("datalayer_api", [], "datalayer-api listening on http://127.0.0.1:"),
        ("secretmanager_api", [], "secretmanager-api listening; export FLEET_SECRETMANAGER_ENDPOINT=http://"),
        ("metrics_api", [], "metrics-api listening: gRPC 127.0.0.1:"),
        ("monitoring_api", [], "monitoring-api listening; set monitoring.endpoint: 127.0.0.1:"),
        ("pubsub_api", [], "pubsub-api listening; export PUBSUB_EMULATOR_HOST=127.0.0.1:"),
        ("storage", ["--root", "{tmp}/gcs"], "storage listening on http://127.0.0.1:"),
    ],
)
def test_each_standin_cli_serves_until_sigterm_then_exits_0(
    module: str, args: list[str], banner: str, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", f"standins.{module}", *(a.format(tmp=tmp_path) for a in args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(banner), line + (proc.stderr.read() if proc.poll() is not None else "")
        if module == "webhook_sink":  # it answers while it says it listens
            url = line.split()[-1]
            with urllib.request.urlopen(f"{url}/_sink/messages", timeout=5) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_standin_cli_on_a_taken_port_exits_2_with_the_error(taken: int) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "standins.webhook_sink", "--port", str(taken)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"webhook-sink: cannot listen on 127.0.0.1:{taken}" in done.stderr
    assert "Traceback" not in done.stderr
