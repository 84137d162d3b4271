"""The lifecycle every stand-in server shares, in one place so each stand-in says only what it serves:
listen (a taken port is a StandinError, not a traceback), serve on daemon threads, stop, `with`, and
the CLI's wait for SIGTERM/SIGINT.

  HttpFront     one ThreadingHTTPServer on a daemon thread (a stand-in may hold several fronts)
  HttpStandin   base of a stand-in with one HTTP front: give `name` and `_handler()`
  GrpcStandin   base of a gRPC stand-in: give `name` and `_services()` (tls optional)
  method_handler(handle, methods)      a quiet HTTP/1.1 handler class passing requests to `handle`
  serve_until_signal(parser, start, banner)   a stand-in's `main()` once its arguments are parsed
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Protocol, Self, TypeVar

import grpc

from standins.errors import StandinError

LISTEN_HINT = "pick another --port, or stop what listens there"


class Standin:
    """start() returns the started server, stop() may be called twice; `with` runs both."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def method_handler(
    handle: Callable[[BaseHTTPRequestHandler, str], None], methods: Iterable[str]
) -> type[BaseHTTPRequestHandler]:
    """A handler class (HTTP/1.1, no access log) whose do_METHOD calls handle(request, METHOD)."""

    def do(method: str) -> Callable[[BaseHTTPRequestHandler], None]:
        return lambda request: handle(request, method)

    def quiet(request: BaseHTTPRequestHandler, *args: Any) -> None:
        pass

    attrs: dict[str, Any] = {"protocol_version": "HTTP/1.1", "log_message": quiet}
    attrs.update({f"do_{method}": do(method) for method in methods})
    return type("Handler", (BaseHTTPRequestHandler,), attrs)


class HttpFront:
    """One HTTP listener served by a daemon thread. `port` is the configured port until start(), then
    the bound one (port 0 = any free port), and stays so after stop() (URLs already handed out)."""

    def __init__(self, name: str, host: str, port: int, *, poll_interval: float = 0.5) -> None:
        self.name = name
        self.host = host
        self.poll_interval = poll_interval  # how long stop() may wait for the serving loop to notice
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, handler: type[BaseHTTPRequestHandler], *, hint: str = LISTEN_HINT) -> None:
        try:
            server = ThreadingHTTPServer((self.host, self._port), handler)
        except OSError as exc:
            raise StandinError(
                f"cannot listen on {self.host}:{self._port}: {exc.strerror or exc}",
                where=self.name,
                hint=hint,
            ) from None
        server.daemon_threads = True
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": self.poll_interval},
            name=self.name,
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class HttpStandin(Standin):
    """A stand-in with one HTTP front on `host:port`; `url` is its root."""

    name: ClassVar[str]  # the serving thread's name, and `where` of a listen error
    listen_hint: ClassVar[str] = LISTEN_HINT
    poll_interval: ClassVar[float] = 0.5
    methods: ClassVar[tuple[str, ...]] = ("GET", "POST", "PATCH", "DELETE")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self._http = HttpFront(self.name, host, port, poll_interval=self.poll_interval)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class, made at each start: by default one passing `methods` to _handle."""
        return method_handler(self._handle, self.methods)

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._http.start(self._handler(), hint=self.listen_hint)
        return self

    def stop(self) -> None:
        self._http.stop()

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        """The API root every client is pointed at, e.g. http://127.0.0.1:8086."""
        return f"http://{self.host}:{self.port}"


class GrpcStandin(Standin):
    """A stand-in serving gRPC services on `host:port` (insecure, or TLS with `tls`); `endpoint` is
    the host:port a client's channel dials."""

    name: ClassVar[str]  # the worker threads' prefix, and `where` of a listen error
    workers: ClassVar[int] = 4

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tls: tuple[bytes, bytes] | None = None):
        self.host = host
        self._port = port
        self._tls = tls  # (certificate chain PEM, private key PEM)
        self._server: grpc.Server | None = None

    def _services(self) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        """Full service name -> method name -> handler."""
        raise NotImplementedError

    def start(self) -> Self:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=self.name)
        )
        server.add_generic_rpc_handlers(
            tuple(grpc.method_handlers_generic_handler(s, table) for s, table in self._services().items())
        )
        address = f"{self.host}:{self._port}"
        try:
            if self._tls is not None:
                creds = grpc.ssl_server_credentials([(self._tls[1], self._tls[0])])
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # newer grpcio raises where older ones return 0
            raise StandinError(
                f"cannot listen on {address}: {exc}", where=self.name, hint=LISTEN_HINT
            ) from None
        if not port:
            raise StandinError(f"cannot listen on {address}", where=self.name, hint=LISTEN_HINT)
        self._port = port
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self._port}"


class _Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Stoppable)


def serve_until_signal(
    parser: argparse.ArgumentParser, start: Callable[[], S], banner: Callable[[S], str]
) -> int:
    """Start the server (a StandinError exits 2 with its message, no traceback), print its banner,
    serve until SIGTERM or SIGINT, stop it: the tail of every stand-in's CLI."""
    try:
        server = start()
    except StandinError as exc:
        parser.exit(2, exc.render() + "\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(banner(server), flush=True)
    stop.wait()
    server.stop()
    return 0
