"""A local Cloud Logging endpoint: `google.logging.v2.LoggingServiceV2` over gRPC, optionally with TLS.

Docker's `gcplogs` logging driver (and google-cloud-logging) write with `WriteLogEntries` to
logging.googleapis.com:443 over TLS with the VM's access token. A VM of the local fleet resolves that
name to its network's gateway (an /etc/hosts entry) and trusts a local CA, so the same driver, unchanged,
writes here; this server records every entry with its log name, resource (`gce_instance` with
`instance_id` and `zone`), labels and payload, and answers `ListLogEntries` so a test (or the real
client's `list_entries`) can find a line by instance and release.

Implemented: WriteLogEntries (request defaults for log name, resource and labels merged into each
entry as the API does; `dry_run`; `partial_success` is accepted, every entry is checked: a bad one
fails the whole call with INVALID_ARGUMENT as without it), ListLogEntries (one project in
`resource_names`; `order_by` "timestamp asc|desc"; paging) with a filter subset of the Logging query
language: clauses joined by AND, each `FIELD="VALUE"` (equal) or `FIELD:"VALUE"` (has), FIELD a
dotted path whose segments may be quoted (`jsonPayload.container.metadata."com.docker.compose.service"`),
snake_case or camelCase. Anything else in a filter is INVALID_ARGUMENT, never silently ignored.
With `token_owner`, a write must carry `authorization: Bearer <token>` the metadata server issued
(UNAUTHENTICATED otherwise); reads are open to whoever reaches the port (this machine's operator side).

    sink = LocalLogging(host="127.0.0.1", port=0).start()   # insecure, for the Python client
    sink.entries(lambda e: e["resource"]["labels"]["instance_id"] == "123")
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
from google.cloud.logging_v2 import types as lt
from google.protobuf import json_format

from standins.serving import GrpcStandin

SERVICE = "google.logging.v2.LoggingServiceV2"
API_HOST = "logging.googleapis.com"
_LOG_NAME = re.compile(r"^(projects|organizations|folders|billingAccounts)/([^/]+)/logs/([^/]+)$")
_CLAUSE = re.compile(
    r'\s*((?:[A-Za-z_][A-Za-z0-9_]*|"[^"]*")(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|"[^"]*"))*)\s*([=:])\s*"((?:[^"\\]|\\.)*)"\s*'
)
_SEGMENT = re.compile(r'"[^"]*"|[^.]+')
MAX_PAGE = 1000


class _Reject(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True)
class Clause:
    path: tuple[str, ...]
    op: str  # "=" equal, ":" has (substring)
    value: str

    def matches(self, entry: dict[str, Any]) -> bool:
        node: Any = entry
        for seg in self.path:
            if not isinstance(node, dict):
                return False
            if seg in node:
                node = node[seg]
            elif _camel(seg) in node:
                node = node[_camel(seg)]
            else:
                return False
        if isinstance(node, dict | list):
            return False
        text = str(node).lower() if isinstance(node, bool) else str(node)
        return text == self.value if self.op == "=" else self.value.lower() in text.lower()


def parse_filter(text: str) -> list[Clause]:
    """The supported subset (see the module doc); raises ValueError naming what is not supported."""
    clauses: list[Clause] = []
    if not text.strip():
        return clauses
    for part in re.split(r"\s+AND\s+", text.strip()):
        m = _CLAUSE.fullmatch(part)
        if m is None:
            raise ValueError(
                f'unsupported filter clause {part!r}: the local sink takes FIELD="VALUE" or FIELD:"VALUE" '
                "clauses joined by AND"
            )
        path = tuple(s.strip('"') for s in _SEGMENT.findall(m.group(1)))
        clauses.append(Clause(path, m.group(2), re.sub(r"\\(.)", r"\1", m.group(3))))
    return clauses


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LocalLogging(GrpcStandin):
    """LoggingServiceV2's write and list calls; entries kept in memory as the API's JSON form."""

    name = "logging-api"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: tuple[bytes, bytes] | None = None,
        token_owner: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(host, port, tls=tls)
        self._token_owner = token_owner
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._seq = itertools.count(1)
        self.writes = 0  # WriteLogEntries calls accepted

    # --- lifecycle ---------------------------------------------------------------------------------

    def _services(self) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        methods = {
            "WriteLogEntries": grpc.unary_unary_rpc_method_handler(
                self._guard(self._write),
                request_deserializer=lt.WriteLogEntriesRequest.deserialize,
                response_serializer=lt.WriteLogEntriesResponse.serialize,
            ),
            "ListLogEntries": grpc.unary_unary_rpc_method_handler(
                self._guard(self._list, auth=False),
                request_deserializer=lt.ListLogEntriesRequest.deserialize,
                response_serializer=lt.ListLogEntriesResponse.serialize,
            ),
        }
        return {SERVICE: methods}

    # --- inspection --------------------------------------------------------------------------------

    def entries(self, where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """Recorded entries (the API's JSON form, camelCase), oldest first."""
        with self._lock:
            return [e for e in self._entries if where is None or where(e)]

    def query(self, filter_text: str) -> list[dict[str, Any]]:
        """Entries matching a filter of the supported subset (what ListLogEntries answers)."""
        clauses = parse_filter(filter_text)
        return self.entries(lambda e: all(c.matches(e) for c in clauses))

    def wait_for(self, filter_text: str, timeout: float, interval: float = 0.2) -> list[dict[str, Any]]:
        """The matching entries once there is at least one, or [] after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.query(filter_text)
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(interval)

    # --- handlers ----------------------------------------------------------------------------------

    def _guard(
        self, fn: Callable[[Any], Any], auth: bool = True
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if auth and self._token_owner is not None:
                    meta = dict(context.invocation_metadata())
                    header = str(meta.get("authorization", ""))
                    token = header[7:] if header.lower().startswith("bearer ") else ""
                    if not token or self._token_owner(token) is None:
                        raise _Reject(
                            grpc.StatusCode.UNAUTHENTICATED,
                            "Request had invalid authentication credentials (no valid access token)",
                        )
                return fn(request)
            except _Reject as exc:
                context.abort(exc.code, exc.message)

        return handler

    def _write(self, request: lt.WriteLogEntriesRequest) -> lt.WriteLogEntriesResponse:
        if not request.entries:
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "entries: at least one entry is required")
        default_labels = dict(request.labels)
        resource_pb = lt.WriteLogEntriesRequest.pb(request).resource
        default_resource = json_format.MessageToDict(resource_pb) if resource_pb.type else None
        prepared = []
        for i, entry in enumerate(request.entries):
            doc = json_format.MessageToDict(lt.LogEntry.pb(entry))
            log_name = doc.get("logName") or request.log_name
            if not log_name or not _LOG_NAME.match(log_name):
                raise _Reject(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"entries[{i}].log_name: {log_name!r} is not projects/PROJECT/logs/LOG_ID",
                )
            resource = doc.get("resource") or default_resource
            if not resource or not resource.get("type"):
                raise _Reject(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"entries[{i}].resource: a monitored resource is required",
                )
            doc["logName"] = log_name
            doc["resource"] = resource
            labels = {**default_labels, **doc.get("labels", {})}
            if labels:
                doc["labels"] = labels
            prepared.append(doc)
        if request.dry_run:
            return lt.WriteLogEntriesResponse()
        with self._lock:
            for doc in prepared:
                received = _now()
                doc.setdefault("timestamp", received)
                doc["receiveTimestamp"] = received
                doc.setdefault("insertId", f"local-{next(self._seq):012d}")
                self._entries.append(doc)
            self.writes += 1
        return lt.WriteLogEntriesResponse()

    def _list(self, request: lt.ListLogEntriesRequest) -> lt.ListLogEntriesResponse:
        names = list(request.resource_names)
        if len(names) != 1 or not re.fullmatch(r"projects/[^/]+", names[0]):
            raise _Reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "resource_names: the local sink takes exactly one projects/PROJECT",
            )
        project = names[0].split("/", 1)[1]
        try:
            clauses = parse_filter(request.filter)
        except ValueError as exc:
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        order = (request.order_by or "timestamp asc").strip().lower()
        if order not in ("timestamp asc", "timestamp", "timestamp desc"):
            raise _Reject(
                grpc.StatusCode.INVALID_ARGUMENT, f"order_by {request.order_by!r}: timestamp asc|desc"
            )

        def wanted(e: dict[str, Any]) -> bool:
            m = _LOG_NAME.match(e["logName"])
            return m is not None and m.group(2) == project and all(c.matches(e) for c in clauses)

        found = sorted(self.entries(wanted), key=lambda e: e["timestamp"], reverse=order.endswith("desc"))
        start = 0
        if request.page_token:
            try:
                start = int(request.page_token)
            except ValueError:
                raise _Reject(
                    grpc.StatusCode.INVALID_ARGUMENT, "page_token: not a token this server issued"
                ) from None
        size = min(request.page_size or MAX_PAGE, MAX_PAGE)
        page = found[start : start + size]
        out = lt.ListLogEntriesResponse()
        for doc in page:
            pb = lt.LogEntry.pb(lt.LogEntry())
            json_format.ParseDict(doc, pb, ignore_unknown_fields=True)
            out.entries.append(lt.LogEntry.wrap(pb))
        if start + size < len(found):
            out.next_page_token = str(start + size)
        return out


def log_id(entry: dict[str, Any]) -> str:
    """The LOG_ID part of an entry's logName, unquoted ("gcplogs-docker-driver")."""
    return unquote(str(entry.get("logName", "")).rsplit("/logs/", 1)[-1])


# --------------------------------------------------------------------------- a local CA for TLS


@dataclass(frozen=True)
class Tls:
    """A CA and a server certificate it signed, as PEM files in one directory."""

    ca_cert: Path
    cert: Path
    key: Path

    def server_pair(self) -> tuple[bytes, bytes]:
        return self.cert.read_bytes() + self.ca_cert.read_bytes(), self.key.read_bytes()


def make_tls(directory: Path, names: tuple[str, ...] = (API_HOST,), days: int = 30) -> Tls:
    """A local CA and a certificate for `names`, written once and reused while valid for a day more."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    tls = Tls(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    if all(p.exists() for p in (tls.ca_cert, tls.cert, tls.key)):
        cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if set(sans.get_values_for_type(x509.DNSName)) == set(names) and cert.not_valid_after_utc > (
            dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        ):
            return tls
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "compose-fleet local CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    tls.ca_cert.write_bytes(ca.public_bytes(pem))
    tls.cert.write_bytes(cert.public_bytes(pem))
    tls.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tls.key.chmod(0o600)
    return tls


def iter_lines(entries: list[dict[str, Any]]) -> Iterator[str]:
    """The container lines of gcplogs entries (jsonPayload.message)."""
    for e in entries:
        msg = e.get("jsonPayload", {}).get("message")
        if isinstance(msg, str):
            yield msg
