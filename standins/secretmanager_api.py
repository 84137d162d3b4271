"""A local HTTP endpoint speaking the Secret Manager REST v1 subset the project uses.

Point the real client at it (REST transport; an `http://` endpoint keeps its scheme):
    secretmanager_v1.SecretManagerServiceClient(transport="rest", credentials=AnonymousCredentials(),
                                                client_options={"api_endpoint": api.url})
and the on-VM agent reads `GET {api.url}/v1/projects/P/secrets/S/versions/N:access` with urllib.

Implemented: secrets create/get/list/delete, addVersion (the payload's dataCrc32c is verified), versions
get/list/access (`latest` = the most recently created version, as the API says) and
disable/enable/destroy, with the real paths, camelCase JSON and Google's error body
{"error": {"code", "message", "status"}} (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION for a disabled or
destroyed version, INVALID_ARGUMENT). No IAM: every caller may do everything; each call is recorded with
whether it carried `Authorization: Bearer`. The state can live in a JSON file so a restart keeps secrets.

CLI:  python -m standins.secretmanager_api [--host H] [--port N] [--state FILE]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import google_crc32c

from standins.errors import StandinError
from standins.serving import HttpStandin, serve_until_signal

SECRET_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
PROJECT_ID = re.compile(r"[a-z0-9][a-z0-9.:-]{0,62}")
MAX_PAYLOAD = 64 * 1024  # the API's limit on one version's data
_MAX_BODY = 1 << 20
_STATUS = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ALREADY_EXISTS",
}
_SECRETS = r"/v1/projects/(?P<project>[^/:]+)/secrets"
_SECRET = _SECRETS + r"/(?P<secret>[^/:]+)"
_VERSION = _SECRET + r"/versions/(?P<version>[^/:]+)"


class ApiError(Exception):
    """An answer in Google's error format."""

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS.get(code, "UNKNOWN")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


@dataclass
class Call:
    """One request as the endpoint saw it (never the payload)."""

    method: str  # e.g. versions.access, secrets.addVersion
    http_method: str
    path: str
    status: int
    bearer: bool  # whether the request carried `Authorization: Bearer ...`
    at: float = field(default_factory=time.time)


class LocalSecretManager(HttpStandin):
    """Secret Manager's REST front on `host:port` in a thread; state in memory (and `state` file)."""

    name = "secretmanager-api"

    def __init__(self, port: int = 0, host: str = "127.0.0.1", state: Path | None = None) -> None:
        super().__init__(host, port)
        self.state_file = state
        self._lock = threading.RLock()
        # "projects/P/secrets/S" -> {"createTime", "labels", "replication", "versions": [version dicts]}
        self._secrets: dict[str, dict[str, Any]] = {}
        self._calls: list[Call] = []
        if state is not None and state.exists():
            self._load(state)

    # --- setup and inspection (no HTTP) ------------------------------------------------------------

    def put(self, project: str, secret: str, value: str | bytes) -> str:
        """Create the secret if needed and add a version holding `value`; the new version's name."""
        data = value.encode() if isinstance(value, str) else value
        with self._lock:
            name = f"projects/{project}/secrets/{secret}"
            if name not in self._secrets:
                self._create(project, secret, {"replication": {"automatic": {}}})
            return str(self._add_version(name, data, crc32c(data))["name"])

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    # --- state -------------------------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text())
            secrets = raw["secrets"]
            if not isinstance(secrets, dict):
                raise TypeError("secrets is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StandinError(
                f"unreadable state file ({exc})", where=str(path), hint="delete it to start empty"
            ) from None
        self._secrets = secrets

    def _save(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds secret values
        with os.fdopen(fd, "w") as f:
            json.dump({"format": 1, "secrets": self._secrets}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.state_file)

    # --- the API -----------------------------------------------------------------------------------

    def _secret(self, project: str, secret: str) -> tuple[str, dict[str, Any]]:
        name = f"projects/{project}/secrets/{secret}"
        found = self._secrets.get(name)
        if found is None:
            raise ApiError(404, f"Secret [{name}] not found.")
        return name, found

    def _version(self, project: str, secret: str, version: str) -> dict[str, Any]:
        name, found = self._secret(project, secret)
        versions = found["versions"]
        if version == "latest":
            if not versions:
                raise ApiError(404, f"Secret [{name}] not found or has no versions.")
            return dict(versions[-1])
        if not version.isdigit() or int(version) < 1:
            raise ApiError(400, f"Invalid version id [{version}]: a positive number or `latest`.")
        number = int(version)
        if number > len(versions):
            raise ApiError(404, f"Secret Version [{name}/versions/{number}] not found.")
        return dict(versions[number - 1])

    def _create(self, project: str, secret: str, body: dict[str, Any]) -> dict[str, Any]:
        if not PROJECT_ID.fullmatch(project):
            raise ApiError(400, f"Invalid project [{project}].")
        if not SECRET_ID.fullmatch(secret):
            raise ApiError(
                400,
                f"Invalid secret id [{secret}]: 1-255 characters, letters, digits, underscores and hyphens.",
            )
        name = f"projects/{project}/secrets/{secret}"
        if name in self._secrets:
            raise ApiError(409, f"Secret [{name}] already exists.")
        replication = body.get("replication")
        if not isinstance(replication, dict) or not (
            "automatic" in replication or "userManaged" in replication
        ):
            raise ApiError(400, "Secret.replication is required (automatic or userManaged).")
        self._secrets[name] = {
            "createTime": _now(),
            "labels": body.get("labels") or {},
            "replication": replication,
            "versions": [],
        }
        self._save()
        return self._secret_json(name)

    def _add_version(self, name: str, data: bytes, crc: int | None) -> dict[str, Any]:
        if len(data) > MAX_PAYLOAD:
            raise ApiError(400, f"Secret payload is larger than {MAX_PAYLOAD} bytes.")
        if crc is not None and crc != crc32c(data):
            raise ApiError(400, "Checksum mismatch: the payload's data_crc32c does not match its data.")
        versions = self._secrets[name]["versions"]
        number = len(versions) + 1
        versions.append(
            {
                "number": number,
                "createTime": _now(),
                "state": "ENABLED",
                "data": base64.b64encode(data).decode(),
                "crc32c": crc32c(data),
                "clientChecksum": crc is not None,
            }
        )
        self._save()
        return self._version_json(name, versions[-1])

    def _secret_json(self, name: str) -> dict[str, Any]:
        s = self._secrets[name]
        return {
            "name": name,
            "createTime": s["createTime"],
            "labels": s["labels"],
            "replication": s["replication"],
            "etag": f'"{len(s["versions"])}"',
        }

    @staticmethod
    def _version_json(secret: str, v: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": f"{secret}/versions/{v['number']}",
            "createTime": v["createTime"],
            "state": v["state"],
            "etag": f'"{v["state"].lower()}-{v["number"]}"',
            "clientSpecifiedPayloadChecksum": v["clientChecksum"],
        }
        if v.get("destroyTime"):
            out["destroyTime"] = v["destroyTime"]
        return out

    def _set_state(self, project: str, secret: str, version: str, action: str) -> dict[str, Any]:
        name, found = self._secret(project, secret)
        v = self._version(project, secret, version)
        stored = found["versions"][v["number"] - 1]
        if stored["state"] == "DESTROYED":
            raise ApiError(
                400,
                f"Secret Version [{name}/versions/{v['number']}] is in DESTROYED state.",
                "FAILED_PRECONDITION",
            )
        stored["state"] = {"disable": "DISABLED", "enable": "ENABLED", "destroy": "DESTROYED"}[action]
        if action == "destroy":
            stored["data"] = ""
            stored["destroyTime"] = _now()
        self._save()
        return self._version_json(name, stored)

    def _access(self, project: str, secret: str, version: str) -> dict[str, Any]:
        name, _ = self._secret(project, secret)
        v = self._version(project, secret, version)
        if v["state"] != "ENABLED":
            raise ApiError(
                400,
                f"Secret Version [{name}/versions/{v['number']}] is in {v['state']} state.",
                "FAILED_PRECONDITION",
            )
        return {
            "name": f"{name}/versions/{v['number']}",
            "payload": {"data": v["data"], "dataCrc32c": str(v["crc32c"])},
        }

    def _page(self, items: list[dict[str, Any]], query: dict[str, str], key: str) -> dict[str, Any]:
        try:
            size = int(query.get("pageSize") or 25000)
            start = int(query.get("pageToken") or 0)
        except ValueError:
            raise ApiError(400, "Invalid pageSize or pageToken.") from None
        size = max(1, min(size, 25000))
        out: dict[str, Any] = {key: items[start : start + size], "totalSize": len(items)}
        if start + size < len(items):
            out["nextPageToken"] = str(start + size)
        return out

    def dispatch(self, http_method: str, path: str, query: dict[str, str], body: Any) -> tuple[str, Any]:
        """(method name, JSON answer) for one request; raises ApiError for an error answer."""
        m = re.fullmatch(_VERSION + r"(?::(?P<verb>access|disable|enable|destroy))?", path)
        if m:
            p, s, v, verb = m["project"], m["secret"], m["version"], m["verb"]
            if verb == "access" and http_method == "GET":
                return "versions.access", self._access(p, s, v)
            if verb and verb != "access" and http_method == "POST":
                return f"versions.{verb}", self._set_state(p, s, v, verb)
            if verb is None and http_method == "GET":
                name, _ = self._secret(p, s)
                return "versions.get", self._version_json(name, self._version(p, s, v))
            raise ApiError(405, f"{http_method} is not allowed on {path}")
        m = re.fullmatch(_SECRET + r"/versions", path)
        if m and http_method == "GET":
            name, found = self._secret(m["project"], m["secret"])
            newest_first = [self._version_json(name, v) for v in reversed(found["versions"])]
            return "versions.list", self._page(newest_first, query, "versions")
        m = re.fullmatch(_SECRET + r":addVersion", path)
        if m and http_method == "POST":
            name, _ = self._secret(m["project"], m["secret"])
            payload = body.get("payload") if isinstance(body, dict) else None
            if not isinstance(payload, dict) or not isinstance(payload.get("data", ""), str):
                raise ApiError(400, "AddSecretVersionRequest.payload is required.")
            try:
                data = base64.b64decode(payload.get("data", ""), validate=True)
                crc = int(payload["dataCrc32c"]) if payload.get("dataCrc32c") is not None else None
            except (binascii.Error, ValueError):
                raise ApiError(400, "Invalid payload: data must be base64, dataCrc32c an integer.") from None
            return "secrets.addVersion", self._add_version(name, data, crc)
        m = re.fullmatch(_SECRET, path)
        if m and http_method == "GET":
            name, _ = self._secret(m["project"], m["secret"])
            return "secrets.get", self._secret_json(name)
        if m and http_method == "DELETE":
            name, _ = self._secret(m["project"], m["secret"])
            del self._secrets[name]
            self._save()
            return "secrets.delete", {}
        m = re.fullmatch(_SECRETS, path)
        if m and http_method == "POST":
            secret_id = query.get("secretId", "")
            return "secrets.create", self._create(
                m["project"], secret_id, body if isinstance(body, dict) else {}
            )
        if m and http_method == "GET":
            prefix = f"projects/{m['project']}/secrets/"
            names = sorted(n for n in self._secrets if n.startswith(prefix))
            return "secrets.list", self._page([self._secret_json(n) for n in names], query, "secrets")
        raise ApiError(404, f"no such method: {http_method} {path}")

    def _handle(self, req: BaseHTTPRequestHandler, http_method: str) -> None:
        url = urlsplit(req.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        bearer = req.headers.get("Authorization", "").startswith("Bearer ")
        method = "unknown"
        try:
            length = int(req.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                raise ApiError(400, "request body too large")
            raw = req.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise ApiError(400, "Invalid JSON payload received.") from None
            with self._lock:
                method, answer = self.dispatch(http_method, path, query, body)
            status = 200
        except ApiError as exc:
            status, answer = exc.code, exc.body()
        data = json.dumps(answer).encode()
        with self._lock:
            self._calls.append(Call(method, http_method, path, status, bearer))
        req.send_response(status)
        req.send_header("Content-Type", "application/json; charset=UTF-8")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.secretmanager_api", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    parser.add_argument("--state", type=Path, default=None, help="JSON file the secrets are kept in (0600)")
    args = parser.parse_args(argv)
    return serve_until_signal(
        parser,
        lambda: LocalSecretManager(port=args.port, host=args.host, state=args.state).start(),
        lambda api: f"secretmanager-api listening; export FLEET_SECRETMANAGER_ENDPOINT={api.url}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
