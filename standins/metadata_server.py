"""A local GCE metadata server: what a VM sees at http://metadata.google.internal/computeMetadata/v1/.

The embedder says who is calling (`identify(client_ip)`), as GCE knows the calling VM by its address;
an unknown caller gets 404, as if it were no VM at all. The real server's rules are kept, so code that
works here works on GCE: `Metadata-Flavor: Google` is required (403 without it) and any request with
`X-Forwarded-For` is refused (403); directories end in `/` (without it: a redirect), list one entry a
line with `/` after sub-directories; `?recursive=true` answers JSON with camelCase keys; `?alt=json|text`
picks the form; every answer carries `Metadata-Flavor: Google` (google-auth's ping checks it).

Guest attributes (`instance/guest-attributes/NS/KEY`, PUT/GET/DELETE) live in a GuestAttributes store
the embedder can share with the Compute stand-in's getGuestAttributes; as on GCE they are served only
when the metadata key `enable-guest-attributes` is TRUE (instance, else project).

    server = MetadataServer(identify, GuestAttributes(), "127.0.0.1", 0).start()
    ... server.port ...; server.stop()
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standins.errors import StandinError
from standins.serving import HttpStandin

ROOT = "/computeMetadata/v1/"
MAX_VALUE = 256 * 1024  # bytes, GCE's limit on a metadata or guest attribute value
TOKEN_SECONDS = 3600  # an access token's life; the server hands out the remaining seconds (3599 when new)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
_DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


@dataclass
class Identity:
    """What the metadata server knows of one VM (and its project)."""

    project_id: str
    numeric_project_id: str
    zone: str  # short name, e.g. europe-west1-b
    name: str
    id: str  # numeric instance id, as a string
    hostname: str = ""  # default: NAME.ZONE.c.PROJECT.internal (zonal DNS)
    attributes: dict[str, str] = field(default_factory=dict)  # instance metadata
    project_attributes: dict[str, str] = field(default_factory=dict)  # project-wide metadata
    service_account_email: str = ""  # default: NUM-compute@developer.gserviceaccount.com
    scopes: tuple[str, ...] = _DEFAULT_SCOPES

    def fqdn(self) -> str:
        return self.hostname or f"{self.name}.{self.zone}.c.{self.project_id}.internal"

    def email(self) -> str:
        return (
            self.service_account_email or f"{self.numeric_project_id}-compute@developer.gserviceaccount.com"
        )

    def guest_attributes_enabled(self) -> bool:
        """GCE's rule: the instance's `enable-guest-attributes`, else the project's, must be TRUE."""
        raw = self.attributes.get("enable-guest-attributes")
        if raw is None:
            raw = self.project_attributes.get("enable-guest-attributes", "")
        return raw.strip().lower() in ("true", "1", "y", "yes")


Identify = Callable[[str], Identity | None]


def check_name(value: str, what: str) -> str:
    """Guest attribute namespaces and keys: letters, digits, '-' and '_' (GCE refuses others)."""
    if not _NAME.fullmatch(value):
        raise StandinError(
            f"invalid guest attribute {what} {value!r}",
            hint="use 1-128 letters, digits, '-' or '_'",
        )
    return value


class GuestAttributes:
    """Guest attributes per instance name ("namespace/key" -> value), thread-safe; with `path`, kept in a
    JSON file (rewritten atomically on each change) so another process or stand-in can read them."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, str]] = {}
        if path is not None and path.exists():
            self._data = self._load(path)

    @staticmethod
    def _load(path: Path) -> dict[str, dict[str, str]]:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StandinError(f"cannot read guest attributes: {exc}", where=str(path)) from None
        if not isinstance(raw, dict) or not all(
            isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())
            for v in raw.values()
        ):
            raise StandinError(
                "guest attributes file is not {instance: {namespace/key: value}}",
                where=str(path),
                hint="delete it to start empty",
            )
        return raw

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=self._path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(self._data, out, sort_keys=True, indent=1)
        os.replace(tmp, self._path)

    def get(self, instance: str, namespace: str, key: str) -> str | None:
        with self._lock:
            return self._data.get(instance, {}).get(f"{namespace}/{key}")

    def put(self, instance: str, namespace: str, key: str, value: str) -> None:
        check_name(namespace, "namespace")
        check_name(key, "key")
        if len(value.encode()) > MAX_VALUE:
            raise StandinError(f"guest attribute {namespace}/{key} is over {MAX_VALUE} bytes")
        with self._lock:
            self._data.setdefault(instance, {})[f"{namespace}/{key}"] = value
            self._save()

    def delete(self, instance: str, namespace: str, key: str) -> bool:
        with self._lock:
            found = self._data.get(instance, {}).pop(f"{namespace}/{key}", None) is not None
            if found:
                self._save()
            return found

    def list(self, instance: str, namespace: str = "") -> dict[str, str]:
        """{"namespace/key": value}, sorted; only `namespace` when given (the Compute API's queryPath)."""
        prefix = f"{namespace}/" if namespace else ""
        with self._lock:
            items = self._data.get(instance, {})
            return {k: v for k, v in sorted(items.items()) if k.startswith(prefix)}

    def forget(self, instance: str) -> None:
        """A deleted VM's guest attributes go with it."""
        with self._lock:
            if self._data.pop(instance, None) is not None:
                self._save()


# --- the metadata tree -------------------------------------------------------------------------------


class _Token:
    """Placeholder for service-accounts/*/token: listed, answered per request, left out of recursive."""


_TOKEN = _Token()


@dataclass
class _Dir:
    entries: dict[str, Any]  # name -> _Dir, str, int, list[str] or _TOKEN
    camel: bool = True  # recursive JSON renames kebab-case keys; user keys (attributes, emails) stay


def _camel(name: str) -> str:
    head, *rest = name.split("-")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _tree(who: Identity) -> _Dir:
    account = _Dir(
        {
            "aliases": ["default"],
            "email": who.email(),
            "scopes": list(who.scopes),
            "token": _TOKEN,
        }
    )
    instance = _Dir(
        {
            "attributes": _Dir(dict(who.attributes), camel=False),
            "hostname": who.fqdn(),
            "id": int(who.id),
            "name": who.name,
            "service-accounts": _Dir({"default": account, who.email(): account}, camel=False),
            "zone": f"projects/{who.numeric_project_id}/zones/{who.zone}",
        }
    )
    project = _Dir(
        {
            "attributes": _Dir(dict(who.project_attributes), camel=False),
            "numeric-project-id": int(who.numeric_project_id),
            "project-id": who.project_id,
        }
    )
    universe = _Dir({"universe-domain": "googleapis.com"})
    return _Dir({"instance": instance, "project": project, "universe": universe})


def _json(node: Any) -> Any:
    if isinstance(node, _Dir):
        return {
            (_camel(k) if node.camel else k): _json(v)
            for k, v in sorted(node.entries.items())
            if not isinstance(v, _Token)
        }
    return node


def _text_lines(node: Any, prefix: str = "") -> Iterator[str]:
    """recursive + alt=text: one `path value` line per leaf, paths relative to the directory asked."""
    if isinstance(node, _Dir):
        for k, v in sorted(node.entries.items()):
            if not isinstance(v, _Token):
                yield from _text_lines(v, f"{prefix}{k}/" if isinstance(v, _Dir) else f"{prefix}{k}")
    elif isinstance(node, list):
        for item in node:
            yield f"{prefix} {item}"
    else:
        yield f"{prefix} {node}"


def _leaf_text(leaf: Any) -> str:
    if isinstance(leaf, list):
        return "".join(f"{item}\n" for item in leaf)
    return str(leaf)


@dataclass
class Reply:
    status: int
    body: str
    content_type: str = "application/text"
    headers: dict[str, str] = field(default_factory=dict)


def etag(body: str) -> str:
    """The answer's version, for `?wait_for_change=true&last_etag=...`."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def _error(status: int, message: str) -> Reply:
    return Reply(status, message + "\n", "text/html; charset=UTF-8")


class MetadataServer(HttpStandin):
    """The metadata server for the VMs `identify` knows; start() serves in a daemon thread."""

    name = "metadata"
    listen_hint = "port 80 needs root (or CAP_NET_BIND_SERVICE); is another server on that address?"
    poll_interval = 0.05

    def __init__(
        self,
        identify: Identify,
        guest_attributes: GuestAttributes | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token_file: Path | None = None,
    ) -> None:
        super().__init__(host, port)
        self.identify = identify
        self.guest_attributes = guest_attributes if guest_attributes is not None else GuestAttributes()
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}  # email -> (token, expiry)
        self._owners: dict[str, str] = {}  # token -> email
        # tokens outlive a restart of this server when kept in a file, as Google's outlive a metadata
        # server's: a VM's dockerd (gcplogs) holds its token for an hour and never asks again before
        self._token_file = token_file
        if token_file is not None:
            self._load_tokens(token_file)

    def _load_tokens(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        now, wall = time.monotonic(), time.time()
        for email, (token, until) in doc.items():
            if until > wall:
                self._tokens[email] = (token, now + (until - wall))
                self._owners[token] = email

    def _save_tokens(self, path: Path) -> None:
        now, wall = time.monotonic(), time.time()
        doc = {email: [token, wall + (expiry - now)] for email, (token, expiry) in self._tokens.items()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.chmod(0o600)
        tmp.replace(path)

    # --- lifecycle ---------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class _Handler(_RequestHandler):
            server_owner = owner

        return _Handler

    # --- tokens ------------------------------------------------------------------------------------

    def token(self, email: str) -> tuple[str, int]:
        """An opaque access token for the account and its remaining seconds; renewed near expiry."""
        now = time.monotonic()
        with self._lock:
            held = self._tokens.get(email)
            if held is None or held[1] - now < 300:
                token = "ya29.local-" + secrets.token_urlsafe(32)
                if held is not None:
                    self._owners.pop(held[0], None)
                held = (token, now + TOKEN_SECONDS)
                self._tokens[email] = held
                self._owners[token] = email
                if self._token_file is not None:
                    self._save_tokens(self._token_file)
            return held[0], max(1, int(held[1] - now) - 1)

    def token_owner(self, token: str) -> str | None:
        """The service account a token was issued to (for stand-ins that check Authorization)."""
        with self._lock:
            email = self._owners.get(token)
            if email is None or self._tokens[email][1] <= time.monotonic():
                return None
            return email

    # --- dispatch ----------------------------------------------------------------------------------

    def handle(
        self, client_ip: str, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> Reply:
        """Answer one request as the real server would; headers' names are lower-case.

        `?wait_for_change=true` holds a GET until the answer's ETag differs from `last_etag` (or from
        the first answer) or `timeout_sec` (default 60) has passed, as the real server's long poll."""
        reply = self._answer(client_ip, method, raw_path, headers, body)
        query = {k: v[-1] for k, v in parse_qs(urlsplit(raw_path).query).items()}
        if method != "GET" or reply.status != 200 or query.get("wait_for_change", "").lower() != "true":
            return reply
        try:
            timeout = min(float(query.get("timeout_sec", "60")), 3600.0)
        except ValueError:
            return _error(400, "Bad Request: timeout_sec must be a number of seconds")
        want = query.get("last_etag") or etag(reply.body)
        deadline = time.monotonic() + timeout
        while reply.status == 200 and etag(reply.body) == want and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            reply = self._answer(client_ip, method, raw_path, headers, body)
        return reply

    def _answer(
        self, client_ip: str, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> Reply:
        who = self.identify(client_ip)
        if who is None:
            return _error(404, f"no VM is known at {client_ip}")
        if "x-forwarded-for" in headers:
            return _error(403, "Forbidden: the metadata server refuses requests with X-Forwarded-For.")
        parts = urlsplit(raw_path)
        path = parts.path
        if path in ("/", ""):
            return Reply(200, "computeMetadata/\n")
        if headers.get("metadata-flavor") != "Google":
            return _error(403, f"Forbidden: missing header 'Metadata-Flavor: Google' for {path}")
        if path == "/computeMetadata/":
            return Reply(200, "v1/\n")
        if not path.startswith(ROOT) and path != ROOT.rstrip("/"):
            return _error(404, f"Not Found: {path}")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        rel = path[len(ROOT) :] if path.startswith(ROOT) else ""
        if rel.startswith("instance/guest-attributes"):
            return self._guest(who, method, rel, query, body)
        if method != "GET":
            return _error(405, f"Method Not Allowed: {method} {path}")
        return self._read(who, rel, query, path)

    def _read(self, who: Identity, rel: str, query: dict[str, str], path: str) -> Reply:
        segments = [s for s in rel.split("/") if s]
        node: Any = _tree(who)
        for seg in segments:
            if not isinstance(node, _Dir) or seg not in node.entries:
                return _error(404, f"Not Found: {path}")
            node = node.entries[seg]
        if isinstance(node, _Token):
            token, seconds = self.token(who.email())
            return self._json({"access_token": token, "expires_in": seconds, "token_type": "Bearer"})
        recursive = query.get("recursive", "").lower() == "true"
        alt = query.get("alt", "json" if recursive else "text")
        if alt not in ("json", "text"):
            return _error(400, f"Bad Request: alt must be json or text, not {alt!r}")
        if isinstance(node, _Dir):
            if segments and not path.endswith("/") and not recursive:
                return Reply(301, "", headers={"Location": path + "/"})
            return self._read_dir(node, query)
        if path.endswith("/"):
            return _error(404, f"Not Found: {path} (a value, not a directory)")
        return self._json(node) if alt == "json" else Reply(200, _leaf_text(node))

    @staticmethod
    def _json(obj: Any) -> Reply:
        return Reply(200, json.dumps(obj, separators=(",", ":")), "application/json")

    def _guest(self, who: Identity, method: str, rel: str, query: dict[str, str], body: bytes) -> Reply:
        """instance/guest-attributes/[NS/[KEY]]: PUT/DELETE a key, GET a key or list a directory."""
        if not who.guest_attributes_enabled():
            return _error(
                403, "Forbidden: guest attributes are disabled (set metadata enable-guest-attributes=TRUE)."
            )
        tail = rel[len("instance/guest-attributes") :]
        if tail and not tail.startswith("/"):
            return _error(404, f"Not Found: {ROOT}{rel}")
        parts = tail.strip("/").split("/") if tail.strip("/") else []
        if len(parts) > 2:
            return _error(400, "Bad Request: a guest attribute path is NAMESPACE/KEY")
        try:
            for name, what in zip(parts, ("namespace", "key"), strict=False):
                check_name(name, what)
        except StandinError as exc:
            return _error(400, f"Bad Request: {exc.what}")
        store = self.guest_attributes
        if len(parts) == 2 and not tail.endswith("/"):
            ns, key = parts
            if method == "PUT":
                try:
                    store.put(who.name, ns, key, body.decode("utf-8"))
                except (StandinError, UnicodeDecodeError) as exc:
                    return _error(400, f"Bad Request: {exc}")
                return Reply(200, "")
            if method == "DELETE":
                store.delete(who.name, ns, key)
                return Reply(200, "")
            if method != "GET":
                return _error(405, f"Method Not Allowed: {method}")
            found = store.get(who.name, ns, key)
            if found is None:
                return _error(404, f"Not Found: {ROOT}{rel}")
            return self._json(found) if query.get("alt") == "json" else Reply(200, found)
        if method != "GET":
            return _error(405, f"Method Not Allowed: {method} on a directory")
        if not tail.endswith("/") and query.get("recursive", "").lower() != "true":
            return Reply(301, "", headers={"Location": f"{ROOT}{rel}/"})
        # A directory: the namespaces, or one namespace's keys, as a tree like any other.
        tree: dict[str, Any] = {}
        for full, found in store.list(who.name, parts[0] if parts else "").items():
            ns, key = full.split("/", 1)
            tree.setdefault(ns, _Dir({}, camel=False)).entries[key] = found
        if parts and parts[0] not in tree:
            return _error(404, f"Not Found: {ROOT}{rel}")
        return self._read_dir(tree[parts[0]] if parts else _Dir(tree, camel=False), query)

    def _read_dir(self, node: _Dir, query: dict[str, str]) -> Reply:
        recursive = query.get("recursive", "").lower() == "true"
        alt = query.get("alt", "json" if recursive else "text")
        if alt not in ("json", "text"):
            return _error(400, f"Bad Request: alt must be json or text, not {alt!r}")
        if recursive:
            if alt == "json":
                return self._json(_json(node))
            return Reply(200, "".join(line + "\n" for line in _text_lines(node)))
        names = [k + "/" if isinstance(v, _Dir) else k for k, v in sorted(node.entries.items())]
        return self._json(names) if alt == "json" else Reply(200, "".join(n + "\n" for n in names))


class _RequestHandler(BaseHTTPRequestHandler):
    server_owner: MetadataServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "Metadata Server for VM"
    sys_version = ""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_VALUE + 1024:
            self._send(_error(413, f"Request Entity Too Large: values are at most {MAX_VALUE} bytes"))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            reply = self.server_owner.handle(self.client_address[0], self.command, self.path, headers, body)
        except Exception as exc:  # an embedder's identify() failing: say so rather than drop the connection
            reply = _error(500, f"Internal Server Error: {type(exc).__name__}: {exc}")
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        data = reply.body.encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        if reply.status == 200:
            self.send_header("ETag", etag(reply.body))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_DELETE = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a VM polls the metadata server often."""
