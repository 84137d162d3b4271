"""A local HTTP sink for chat webhooks: records every POSTed JSON message and answers like the service.

Paths decide the flavour, as with the real URLs:
  /services/...                    Slack incoming webhook: answers text "ok"
  /v1/spaces/SPACE/messages?...    Google Chat webhook: needs key and token; threads by
                                   thread.threadKey; a repeated requestId returns the message created
                                   for it instead of a second one (as the Chat API documents)
  anything else                    generic JSON webhook: answers {}
Messages are read back in-process (`messages()`) or over HTTP (GET /_sink/messages).

CLI:  python -m standins.webhook_sink [--port N]   (binds 127.0.0.1 only)
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standins.serving import HttpStandin, serve_until_signal

_CHAT = re.compile(r"/v1/spaces/(?P<space>[^/]+)/messages")
_MAX_BODY = 1 << 20


@dataclass
class Message:
    """One accepted POST."""

    flavour: str  # slack | chat | generic
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    thread: str = ""  # Chat: the thread name the message landed in
    name: str = ""  # Chat: the message name
    at: float = field(default_factory=time.time)


class WebhookSink(HttpStandin):
    """Start it, point the webhook URLs at `url` + a path (or `slack_url()`...), read `messages()`."""

    name = "webhook-sink"
    poll_interval = 0.05

    def __init__(self, port: int = 0) -> None:
        super().__init__("127.0.0.1", port)
        self._lock = threading.Condition()
        self._messages: list[Message] = []
        self._attempts = 0
        self._fail: list[int] = []  # statuses for the next requests
        self._threads: dict[tuple[str, str], str] = {}
        self._chat_requests: dict[tuple[str, str], Message] = {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class _Handler(_SinkHandler):
            owner = sink

        return _Handler

    def slack_url(self) -> str:
        return f"{self.url}/services/T000/B000/localsecret"

    def chat_url(self, space: str = "AAAAlocal") -> str:
        return f"{self.url}/v1/spaces/{space}/messages?key=localkey&token=localtoken"

    def generic_url(self) -> str:
        return f"{self.url}/hooks/fleet"

    # --- reading back ------------------------------------------------------------------------------

    def messages(self, flavour: str | None = None) -> list[Message]:
        with self._lock:
            return [m for m in self._messages if flavour is None or m.flavour == flavour]

    @property
    def attempts(self) -> int:
        """Every POST received, accepted or not."""
        with self._lock:
            return self._attempts

    def wait_for(self, count: int, timeout: float = 10.0, flavour: str | None = None) -> list[Message]:
        """Block until at least `count` messages arrived (or the timeout passes); returns them."""
        with self._lock:
            self._lock.wait_for(
                lambda: len([m for m in self._messages if flavour is None or m.flavour == flavour]) >= count,
                timeout,
            )
        return self.messages(flavour)

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """Answer the next `count` POSTs with `status` (and record nothing)."""
        with self._lock:
            self._fail.extend([status] * count)

    # --- handling ----------------------------------------------------------------------------------

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        parts = urlsplit(path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with self._lock:
            self._attempts += 1
            if self._fail:
                return self._fail.pop(0), {"error": "injected failure"}
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, {"error": {"code": 400, "message": "Invalid JSON payload received."}}
        kept = {
            k.lower(): v
            for k, v in headers.items()
            if k.lower() in ("content-type", "idempotency-key", "user-agent") or k.lower().startswith("ce-")
        }
        chat = _CHAT.fullmatch(parts.path)
        with self._lock:
            if parts.path.startswith("/services/"):
                if not isinstance(body, dict) or not isinstance(body.get("text"), str):
                    return 400, "invalid_payload"
                self._add(Message("slack", parts.path, query, kept, body))
                return 200, "ok"
            if chat is not None:
                return self._chat(chat.group("space"), parts.path, query, kept, body)
            self._add(Message("generic", parts.path, query, kept, body))
            return 200, {}

    def _add(self, message: Message) -> None:
        self._messages.append(message)
        self._lock.notify_all()

    def _chat(
        self, space: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        if not query.get("key") or not query.get("token"):
            return 401, {"error": {"code": 401, "message": "Request had invalid authentication credentials."}}
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return 400, {"error": {"code": 400, "message": "Message cannot be empty."}}
        request_id = query.get("requestId", "")
        if request_id and (space, request_id) in self._chat_requests:
            earlier = self._chat_requests[(space, request_id)]
            return 200, {"name": earlier.name, "thread": {"name": earlier.thread}}
        key = (body.get("thread") or {}).get("threadKey", "") if isinstance(body.get("thread"), dict) else ""
        reply = query.get("messageReplyOption", "") in (
            "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
            "REPLY_MESSAGE_OR_FAIL",
        )
        number = len(self._messages) + 1
        if key and reply and (space, key) in self._threads:
            thread = self._threads[(space, key)]
        else:
            thread = f"spaces/{space}/threads/t{number}"
            if key:
                self._threads[(space, key)] = thread
        message = Message(
            "chat", path, query, headers, body, thread=thread, name=f"spaces/{space}/messages/m{number}"
        )
        self._add(message)
        if request_id:
            self._chat_requests[(space, request_id)] = message
        return 200, {"name": message.name, "thread": {"name": thread}}


class _SinkHandler(BaseHTTPRequestHandler):
    owner: WebhookSink
    protocol_version = "HTTP/1.1"
    # One segment per response and no Nagle: otherwise delayed ACKs add ~40 ms to every call.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._reply(413, {"error": "too large"})
            return
        raw = self.rfile.read(length) if length else b""
        status, result = self.owner.handle(self.path, dict(self.headers.items()), raw)
        self._reply(status, result)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/_sink/messages":
            self._reply(200, {"messages": [asdict(m) for m in self.owner.messages()]})
        else:
            self._reply(404, {"error": "not found"})

    def _reply(self, status: int, result: Any) -> None:
        if isinstance(result, str):
            data, ctype = result.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(result).encode(), "application/json; charset=UTF-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: messages are recorded, not printed."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.webhook_sink", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    args = parser.parse_args(argv)
    return serve_until_signal(
        parser,
        WebhookSink(args.port).start,
        lambda sink: (
            f"webhook-sink listening on {sink.url}\n"
            f"  slack:   {sink.slack_url()}\n  chat:    {sink.chat_url()}\n  generic: {sink.generic_url()}"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
