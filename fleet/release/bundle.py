"""The release bundle: compose/ + one host's variables + secrets, rendered into the files of a release.

Rendering is pure: the same source, variables and secrets always give the same files and the same
release id (a content hash), whatever the time or the operator; those go only into `release.json`.
Per-host variables (COMPOSE_PROFILES on the beat host, EXPOSE_NGINX_PORT...) are part of the
content, so two hosts may get different ids for the same version. That is intended: the id says
exactly what runs on that host.

    source = load_source(Path("compose"))
    values = {**merged_inventory_vars, **host_variables(app_dir, roles, http_port)}
    bundle = render(source, values, secrets.resolve(refs, base_dir=inv_dir), local_meta(), where=host)
    bundle.release_id, bundle.tar_bytes(), bundle.masked_env(), diff(host_files, bundle).render()

See docs/bundle.md.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path, PurePosixPath

import yaml

from fleet import settings
from fleet.commands import base
from fleet.commands.release import COMPOSE_FILE, CONFIG_DIR_RE, CONFIG_DIRS_FILE, ENV_FILE, RELEASE_FILE
from fleet.errors import FleetError
from fleet.paths import COMPOSE_DIR, PROJECT_ROOT
from fleet.release import derived, envfile, pairing, passthrough, sealed, tls, yamlfile
from fleet.release import secrets as secret_store

SCHEMA_FILE = "env.schema.yaml"
FORMAT = 1
ID_LENGTH = 16
MASK = "******"
FILE_MODE = 0o644
EXEC_MODE = 0o755
ENV_MODE = 0o600
# names that are masked in diffs even when no schema says they are secret (old releases, typos)
_SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY$|_KEY_|BROKER_URL|JSON_BASE64")
_REF_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)|\$([A-Za-z_][A-Za-z0-9_]*)")
# configuration of the tool itself, next to the compose file but never copied into a release
_SOURCE_SKIP = (SCHEMA_FILE, pairing.MANIFEST_FILE, passthrough.CATALOG_FILE)


# --------------------------------------------------------------------------- schema


def _pattern(regex: str, rule: str) -> Callable[[str], str | None]:
    compiled = re.compile(regex)
    return lambda value: None if compiled.fullmatch(value) else rule


def _port(value: str) -> str | None:
    return None if value.isdigit() and 1 <= int(value) <= 65535 else "a TCP port, 1-65535"


def _version(value: str) -> str | None:
    return None if base.VERSION_RE.fullmatch(value) else "a Docker tag: letters, digits, '.', '_', '-', '+'"


def _path(value: str) -> str | None:
    try:
        base.abs_path(value)
    except FleetError:
        return "an absolute, normalised path without '..'"
    return None


KINDS: dict[str, Callable[[str], str | None]] = {
    "text": lambda value: None,
    "version": _version,
    "image": _pattern(
        r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$",
        "an image repository such as langgenius/dify-api or registry:5000/dify-api (no tag)",
    ),
    "path": _path,
    "port": _port,
    "int": _pattern(r"^[0-9]+$", "a whole number"),
    "bool": _pattern(r"^(true|false)$", "true or false"),
    "duration": _pattern(
        r"^(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|ms|s|m|h))+$", "a duration such as 30s, 1m30s, 500ms"
    ),
    "size": _pattern(r"^[0-9]+[kmg]?$", "a size such as 50m, 10k, 1g"),
    "log_driver": _pattern(r"^(json-file|gcplogs)$", "a logging driver: json-file or gcplogs"),
    "profiles": _pattern(
        r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*(?:,[A-Za-z0-9][A-Za-z0-9_.-]*)*)?$", "profile names, comma separated"
    ),
    "url": _pattern(r"^(?:https?://[^\s'\"]+)?$", "an http(s) URL, or empty"),
    "sslmode": _pattern(
        r"^(disable|allow|prefer|require|verify-ca|verify-full)$",
        "a libpq sslmode: disable, allow, prefer, require, verify-ca or verify-full",
    ),
    "cert_reqs": _pattern(
        r"^(CERT_NONE|CERT_OPTIONAL|CERT_REQUIRED)$", "CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED"
    ),
    "path_or_empty": lambda value: None if value == "" else _path(value),
    # what upstream's plugin daemon accepts (dify-cloud-kit's storage types)
    "plugin_storage": _pattern(
        r"^(local|gcs|aws_s3|azure_blob|tencent_cos|aliyun_oss|huawei_obs|volcengine_tos)$",
        "a plugin storage type: gcs, local, aws_s3, azure_blob, tencent_cos, aliyun_oss, huawei_obs "
        "or volcengine_tos",
    ),
}
# Cloud Storage bucket names: 3-63 characters (222 with dots), lowercase letters, digits, '-', '_', '.'
_BUCKET_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{1,220})[a-z0-9]$")


def check_plugin_storage(values: Mapping[str, str], where: str | None = None) -> None:
    """A gcs plugin storage needs a bucket (the fleet's file bucket by default)."""
    if values.get("PLUGIN_STORAGE_TYPE") != "gcs":
        return
    bucket = values.get("PLUGIN_STORAGE_OSS_BUCKET", "")
    if not bucket:
        raise FleetError(
            "PLUGIN_STORAGE_TYPE is gcs but PLUGIN_STORAGE_OSS_BUCKET is empty: the plugin daemon would "
            "have nowhere to keep plugins",
            where=where,
            hint="leave PLUGIN_STORAGE_OSS_BUCKET unset (it is GOOGLE_STORAGE_BUCKET_NAME, the fleet's "
            "bucket) or name a bucket under data.vars",
        )
    longest = 222 if "." in bucket else 63
    if not _BUCKET_RE.fullmatch(bucket) or len(bucket) > longest or ".." in bucket:
        raise FleetError(
            f"PLUGIN_STORAGE_OSS_BUCKET={bucket!r} is not a Cloud Storage bucket name",
            where=where,
            hint="3-63 lowercase letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        )


@dataclass(frozen=True)
class Variable:
    """One entry of compose/env.schema.yaml."""

    name: str
    description: str
    default: str | None = None
    secret: bool = False
    kind: str = "text"
    derived: bool = False
    host: bool = False

    @property
    def required(self) -> bool:
        return self.default is None and not self.derived


_SCHEMA_KEYS = {"description", "default", "secret", "kind", "derived", "host"}


def parse_schema(text: str, where: str = SCHEMA_FILE) -> tuple[Variable, ...]:
    """Read the schema, refusing anything the bundle would silently misread."""
    data = yamlfile.document(text, "variables", "a mapping `variables: {NAME: {...}}`", where)
    out: list[Variable] = []
    for name, spec in data["variables"].items():
        at = f"{where}: {name}"
        base.env_key(name)
        if not isinstance(spec, dict) or not isinstance(spec.get("description"), str):
            raise FleetError("each variable needs a mapping with a description", where=at)
        unknown = set(spec) - _SCHEMA_KEYS
        if unknown:
            raise FleetError(
                f"unknown keys {sorted(unknown)}", where=at, hint=f"allowed: {sorted(_SCHEMA_KEYS)}"
            )
        kind = spec.get("kind", "text")
        if kind not in KINDS:
            raise FleetError(f"unknown kind {kind!r}", where=at, hint=f"one of {sorted(KINDS)}")
        default = spec.get("default")
        if default is not None:
            default = _stringify(name, default, at)
            problem = KINDS[kind](default) if default else None
            if problem:
                raise FleetError(f"default {default!r} is not {problem}", where=at)
        out.append(
            Variable(
                name=name,
                description=spec["description"],
                default=default,
                secret=bool(spec.get("secret", False)),
                kind=kind,
                derived=bool(spec.get("derived", False)),
                host=bool(spec.get("host", False)),
            )
        )
    return tuple(out)


def _stringify(name: str, value: object, where: str | None) -> str:
    """YAML scalars to the string compose sees; anything else is refused rather than str()-ed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    raise FleetError(
        f"value of {name} must be a string, number or boolean, not {type(value).__name__}",
        where=where,
    )


# --------------------------------------------------------------------------- source


@dataclass(frozen=True)
class SourceFile:
    data: bytes
    mode: int


@dataclass(frozen=True)
class Source:
    """compose/ as read from disk: the files that go into every release, and the variable schema."""

    files: Mapping[str, SourceFile]
    schema: tuple[Variable, ...]
    compose: Mapping[str, object]
    manifest: pairing.Manifest | None = None  # releases.yaml: DIFY_VERSION -> sandbox/plugin-daemon tags
    catalog: passthrough.Catalog | None = None  # upstream-env.yaml: what may pass through

    @cached_property
    def variables(self) -> dict[str, Variable]:
        return {v.name: v for v in self.schema}

    @cached_property
    def references(self) -> frozenset[str]:
        """Every variable the compose file interpolates."""
        return compose_references(self.compose)


def compose_references(data: object) -> frozenset[str]:
    """Names in ${VAR...} and $VAR in every string of the parsed compose file (not its comments)."""
    found: set[str] = set()
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            for match in _REF_RE.finditer(item):
                name = match.group(1) or match.group(2)
                if name:
                    found.add(name)
    return frozenset(found)


def parse_compose(text: str, where: str = COMPOSE_FILE) -> dict[str, object]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FleetError(f"not valid YAML: {exc}", where=where, hint="fix the compose file") from None
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict) or not services:
        raise FleetError("no `services` mapping", where=where, hint="a compose file lists its services")
    for svc_name, svc in services.items():
        base.name(svc_name, "service name")
        if not isinstance(svc, dict):
            raise FleetError(f"service {svc_name} is not a mapping", where=where)
    return data


def make_source(files: Mapping[str, SourceFile], schema_text: str, where: str = "compose") -> Source:
    """A Source from in-memory files (what load_source reads), checked for consistency."""
    if COMPOSE_FILE not in files:
        raise FleetError(f"{COMPOSE_FILE} is missing", where=where)
    for rel in files:
        _check_relpath(rel, where)
    compose = parse_compose(files[COMPOSE_FILE].data.decode(), f"{where}/{COMPOSE_FILE}")
    schema = parse_schema(schema_text, f"{where}/{SCHEMA_FILE}")
    source = Source(files=dict(files), schema=schema, compose=compose)
    undeclared = sorted(source.references - set(source.variables))
    if undeclared:
        raise FleetError(
            f"{COMPOSE_FILE} uses {', '.join(undeclared)}, not declared in {SCHEMA_FILE}",
            where=where,
            hint=f"add them to {SCHEMA_FILE} with a description, default and secret flag",
        )
    return source


def load_source(compose_dir: Path = COMPOSE_DIR) -> Source:
    """Read compose/: every regular file except the schema and dotfiles goes into the release."""
    if not compose_dir.is_dir():
        raise FleetError(f"{compose_dir} is not a directory", where="bundle")
    files: dict[str, SourceFile] = {}
    for path in sorted(compose_dir.rglob("*")):
        rel = path.relative_to(compose_dir).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or rel in _SOURCE_SKIP:
            continue
        if path.is_symlink():
            raise FleetError(
                f"{rel} is a symlink", where=str(compose_dir), hint="bundles hold regular files only"
            )
        if path.is_file():
            mode = EXEC_MODE if path.stat().st_mode & 0o111 else FILE_MODE
            files[rel] = SourceFile(path.read_bytes(), mode)
    schema_path = compose_dir / SCHEMA_FILE
    if not schema_path.is_file():
        raise FleetError(f"{SCHEMA_FILE} is missing", where=str(compose_dir))
    source = make_source(files, schema_path.read_text(), str(compose_dir))
    return replace(
        source,
        manifest=pairing.load_manifest(compose_dir),
        catalog=passthrough.load_catalog(compose_dir),
    )


def _check_relpath(rel: str, where: str) -> None:
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or ".." in parts or not parts or any(ord(c) < 32 for c in rel) or len(rel) > 100:
        raise FleetError(f"bad file name {rel!r} in the bundle", where=where)
    if rel in (ENV_FILE, RELEASE_FILE, CONFIG_DIRS_FILE):
        raise FleetError(f"{rel} is generated by the bundle; remove it from the source", where=where)


# --------------------------------------------------------------------------- render


@dataclass(frozen=True)
class ReleaseMeta:
    """Who made the release, when, from which commit: recorded, never hashed."""

    operator: str
    source_commit: str
    created: str  # ISO 8601 UTC, e.g. 2026-11-26T07:00:00Z

    def __post_init__(self) -> None:
        for label, value in (("operator", self.operator), ("source commit", self.source_commit)):
            if not value or len(value) > 200 or any(ord(c) < 32 for c in value):
                raise FleetError(
                    f"invalid {label} {value!r}", where="release metadata", hint="one short line"
                )
        try:
            datetime.strptime(self.created, "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise FleetError(
                f"invalid created time {self.created!r}",
                where="release metadata",
                hint="YYYY-MM-DDTHH:MM:SSZ (UTC)",
            ) from None


def host_variables(app_dir: str, roles: Sequence[str] = (), http_port: int | None = None) -> dict[str, str]:
    """The per-host variables that follow from the inventory's app.dir, roles and app.http_port."""
    root = base.abs_path(app_dir, "app dir").rstrip("/")
    out = {
        "FLEET_VOLUMES_DIR": f"{root}/volumes",
        "FLEET_STATE_DIR": f"{root}/state",
        "COMPOSE_PROFILES": "beat" if "beat" in roles else "",
    }
    if http_port is not None:
        out["EXPOSE_NGINX_PORT"] = str(http_port)
    return out


@dataclass(frozen=True)
class Bundle:
    """One rendered release. `env` and `.env` hold secret values: print `masked_env()` instead."""

    release_id: str
    version: str
    files: Mapping[str, SourceFile]
    env: Mapping[str, str] = field(repr=False)
    secret_keys: frozenset[str]
    services: tuple[str, ...]  # enabled on this host (profiles applied)
    disabled_services: tuple[str, ...]  # defined but not enabled here (e.g. worker_beat off the beat host)
    healthchecked: tuple[str, ...]  # enabled services with a healthcheck
    meta: ReleaseMeta

    def __repr__(self) -> str:
        return f"Bundle(release_id={self.release_id!r}, version={self.version!r}, files={sorted(self.files)})"

    def masked_env(self) -> dict[str, str]:
        """The .env values for plans and logs: secret values replaced by ******, and any secret inside a
        plain value (in any form `base.secret_forms` knows) masked too."""
        hidden = self.secret_values()
        return {
            k: (MASK if k in self.secret_keys and v else base.mask(v, hidden)) for k, v in self.env.items()
        }

    def secret_values(self) -> tuple[str, ...]:
        """For `Command(secrets=...)` and `base.mask`: the values that must never be printed."""
        return tuple(sorted({v for k, v in self.env.items() if k in self.secret_keys and v}))

    def checksums(self) -> dict[str, str]:
        """sha256 of every file, for `fleet.commands.release.stage` to verify the upload on the host."""
        return {path: hashlib.sha256(f.data).hexdigest() for path, f in sorted(self.files.items())}

    def file_bytes(self) -> dict[str, bytes]:
        return {path: f.data for path, f in self.files.items()}

    def tar_bytes(self) -> bytes:
        """The release as one deterministic uncompressed tar: unpack into releases/<id>/."""
        return _tar(self.files, _epoch(self.meta.created))

    @cached_property
    def size(self) -> int:
        """Bytes the deploy sends to a host that does not have this release yet."""
        return len(self.tar_bytes())


def _epoch(created: str) -> int:
    return int(datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def _value_for(
    var: Variable, variables: Mapping[str, object], secrets: Mapping[str, str], where: str | None
) -> str | None:
    if var.secret:
        raw: object = secrets.get(var.name)
    else:
        raw = variables.get(var.name)
    if raw is None:
        return var.default
    return _stringify(var.name, raw, where)


DERIVED = derived.DERIVED


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_inputs(
    source: Source, variables: Mapping[str, object], secrets: Mapping[str, str], where: str | None
) -> None:
    known = list(source.variables)
    for name in variables:
        var = source.variables.get(name)
        if var is None:
            raise FleetError(
                f"unknown variable {name}{_suggest(name, known)}",
                where=where,
                hint=f"vars must be declared in compose/{SCHEMA_FILE} (and used by the compose file)",
            )
        if var.secret:
            raise FleetError(
                f"{name} is a secret and cannot be set under vars",
                where=where,
                hint=f"set it under data.secrets: {{{name}: {{env: VARIABLE}}}}, {{file: PATH}} "
                "or {secret_manager: NAME}",
            )
    for name in secrets:
        var = source.variables.get(name)
        if var is None:
            raise FleetError(
                f"unknown secret {name}{_suggest(name, known)}",
                where=where,
                hint=f"see compose/{SCHEMA_FILE}",
            )
        if not var.secret:
            raise FleetError(
                f"{name} is not a secret variable", where=where, hint="set it under data.vars instead"
            )


def _compose_services(
    compose: Mapping[str, object], profiles: set[str]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    services = compose["services"]
    assert isinstance(services, dict)
    enabled, disabled, checked = [], [], []
    for svc_name, svc in services.items():
        svc_profiles = set(svc.get("profiles") or ())
        if svc_profiles and not svc_profiles & profiles:
            disabled.append(svc_name)
            continue
        enabled.append(svc_name)
        hc = svc.get("healthcheck")
        if isinstance(hc, dict) and hc.get("test") and hc.get("disable") not in (True, "true"):
            checked.append(svc_name)
    return tuple(enabled), tuple(disabled), tuple(checked)


# --------------------------------------------------------------------------- content-addressed config

CONFIG_HASH_LENGTH = 16
# a relative bind-mount source in the compose text: `- ./nginx/...:` (short syntax) or `source: ./nginx`
_MOUNT_RE = re.compile(
    r"""^(?P<lead>\s*(?:-|source:)\s*["']?)\./(?P<dir>[A-Za-z0-9_][A-Za-z0-9_.-]*)(?=[/:"'\s]|$)"""
)


def _relative_mount_dirs(compose: Mapping[str, object]) -> set[str]:
    """First path components of every service's relative bind-mount source (`./nginx/x` -> nginx)."""
    found = set()
    services = compose.get("services")
    for svc in (services or {}).values() if isinstance(services, dict) else ():
        volumes = svc.get("volumes") if isinstance(svc, dict) else None
        for vol in volumes if isinstance(volumes, list) else ():
            if isinstance(vol, str):
                src = vol.split(":", 1)[0]
            elif isinstance(vol, dict) and vol.get("type", "bind") == "bind":
                src = str(vol.get("source", ""))
            else:
                continue
            if src.startswith("./") and len(src) > 2:
                found.add(src[2:].split("/", 1)[0])
    return found


def config_dir_name(directory: str, files: Mapping[str, SourceFile]) -> str:
    """`<dir>-<hash>`: the content address of one config dir (its files' paths, modes and bytes)."""
    digest = hashlib.sha256(f"compose-fleet config dir v{FORMAT}\n".encode())
    prefix = directory + "/"
    for path in sorted(p for p in files if p.startswith(prefix)):
        data = files[path].data
        digest.update(f"{path[len(prefix) :]}\0{files[path].mode:o}\0{len(data)}\0".encode())
        digest.update(data)
    return f"{directory}-{digest.hexdigest()[:CONFIG_HASH_LENGTH]}"


def content_addressed(files: Mapping[str, SourceFile], where: str | None = None) -> dict[str, SourceFile]:
    """Mount the release's config dirs (relative bind mounts of a directory it carries: nginx/,
    ssrf_proxy/, certs/) from the host's config/<dir>-<hash> instead of from the release directory:
    the same content gets the same path in every release, so Compose recreates a service on a switch
    only when its config really changed (a new path is a new config hash: nginx was recreated on
    every switch). The compose text is rewritten (`./nginx/...` -> `../../config/nginx-<hash>/...`,
    which Compose resolves against the release directory to <app dir>/config/...), and
    `config-dirs` lists `<dir> <dir>-<hash>` for `compose_up` to copy each one there once.

    Every host of a rollout carries the same compose file and config dirs (only its .env differs), so
    the rewrite is worked out once per distinct content, not once per host (two YAML parses a host
    were a fifth of the operator's CPU at 200 hosts: issue 17's profile)."""
    compose_text = files[COMPOSE_FILE].data.decode()
    nested = tuple(sorted((p, f.mode, f.data) for p, f in files.items() if "/" in p))
    plan = _address_plan(compose_text, nested)
    if isinstance(plan, str):
        raise FleetError(
            plan,
            where=where,
            hint="one mount per line: `- ./nginx/nginx.conf:/etc/nginx/nginx.conf:ro` or `source: ./nginx`",
        )
    if plan is None:
        return dict(files)
    text, manifest = plan
    out = dict(files)
    out[COMPOSE_FILE] = SourceFile(text.encode(), files[COMPOSE_FILE].mode)
    out[CONFIG_DIRS_FILE] = SourceFile(manifest.encode(), FILE_MODE)
    return out


@functools.lru_cache(maxsize=8)
def _address_plan(
    compose_text: str, nested: tuple[tuple[str, int, bytes], ...]
) -> tuple[str, str] | str | None:
    """(rewritten compose text, config-dirs manifest) for `content_addressed`; None when no config
    dir is mounted; a str says why the mounts cannot be rewritten. `nested`: (path, mode, data) of
    every file inside a directory of the release."""
    files = {p: SourceFile(data, mode) for p, mode, data in nested}
    compose = parse_compose(compose_text, COMPOSE_FILE)
    carried = {p.split("/", 1)[0] for p in files}
    dirs = sorted(d for d in _relative_mount_dirs(compose) & carried if CONFIG_DIR_RE.fullmatch(d))
    if not dirs:
        return None
    names = {d: config_dir_name(d, files) for d in dirs}

    def rewrite(line: str) -> str:
        match = _MOUNT_RE.match(line)
        if not match or match.group("dir") not in names:
            return line
        return f"{match.group('lead')}../../config/{names[match.group('dir')]}{line[match.end() :]}"

    text = "".join(rewrite(line) for line in compose_text.splitlines(keepends=True))
    left = _relative_mount_dirs(parse_compose(text, COMPOSE_FILE)) & set(dirs)
    if left:
        return f"cannot rewrite the bind mounts of {', '.join(sorted(left))} to content-addressed paths"
    return text, "".join(f"{d} {names[d]}\n" for d in dirs)


def release_id_of(files: Mapping[str, SourceFile]) -> str:
    """Content hash of every file that defines the release (release.json itself excluded)."""
    digest = hashlib.sha256(f"compose-fleet release v{FORMAT}\n".encode())
    for path in sorted(files):
        if path == RELEASE_FILE:
            continue
        data = files[path].data
        digest.update(f"{path}\0{files[path].mode:o}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:ID_LENGTH]


def render(
    source: Source,
    variables: Mapping[str, object],
    secrets: Mapping[str, str],
    meta: ReleaseMeta,
    *,
    where: str | None = None,
    extra: passthrough.Extra | None = None,
) -> Bundle:
    """Render one host's release. Refuses unknown, misplaced, missing or malformed values, naming them all.
    `extra`: upstream variables passed through (passthrough.build checked them): values appended to .env,
    references written into the compose file."""
    _check_inputs(source, variables, secrets, where)
    extra = extra or passthrough.Extra()
    values: dict[str, str] = {}
    missing_vars: list[str] = []
    missing_secrets: list[str] = []
    for var in source.schema:
        value = _value_for(var, variables, secrets, where)
        if value is None and var.derived:
            continue  # computed below, once its inputs are known
        if value is None or (value == "" and var.required):
            (missing_secrets if var.secret else missing_vars).append(var.name)
            continue
        envfile.check_value(var.name, value, where)
        problem = KINDS[var.kind](value) if value or var.required else None
        if problem:
            shown = MASK if var.secret else repr(value)
            raise FleetError(f"{var.name}={shown} is not {problem}", where=where, hint=var.description)
        values[var.name] = value
    if missing_vars or missing_secrets:
        parts = []
        if missing_vars:
            parts.append(f"variables {', '.join(missing_vars)} (set under data.vars)")
        if missing_secrets:
            forms = "{env: VAR}, {file: PATH} or {secret_manager: NAME}"
            parts.append(f"secrets {', '.join(missing_secrets)} (set under data.secrets as {forms})")
        raise FleetError(
            "missing required " + " and ".join(parts), where=where, hint=f"see compose/{SCHEMA_FILE}"
        )
    for var in source.schema:
        if var.derived and var.name not in values:
            values[var.name] = envfile.check_value(var.name, DERIVED[var.name](values), where)
    ordered = {var.name: values[var.name] for var in source.schema}
    tls.check(ordered, source.files, where)
    check_plugin_storage(ordered, where)
    clash = sorted(set(extra.values) & set(ordered))
    if clash:
        raise FleetError(f"pass-through variables {', '.join(clash)} are declared in the schema", where=where)
    ordered.update(extra.values)

    secret_keys = frozenset(v.name for v in source.schema if v.secret) | extra.secret_names
    secret_store.remember(ordered[k] for k in secret_keys)
    header = (
        "Rendered by compose-fleet (fleet/release/bundle.py) from compose/env.schema.yaml and the "
        "inventory.\n"
        "Do not edit on the host: the next deploy replaces the whole release directory."
    )
    files: dict[str, SourceFile] = dict(source.files)
    files[ENV_FILE] = SourceFile(envfile.render(ordered, header, where), ENV_MODE)
    if extra.files:
        compose_text = passthrough.render_compose(files[COMPOSE_FILE].data.decode(), extra, where)
        files[COMPOSE_FILE] = SourceFile(compose_text.encode(), files[COMPOSE_FILE].mode)
    files = content_addressed(files, where)
    rid = release_id_of(files)
    version = base.version(ordered["DIFY_VERSION"])
    profiles = {p for p in ordered.get("COMPOSE_PROFILES", "").split(",") if p}
    enabled, disabled, checked = _compose_services(source.compose, profiles)
    record = {
        "format": FORMAT,
        "id": rid,
        "version": version,
        "created": meta.created,
        "operator": meta.operator,
        "source_commit": meta.source_commit,
        "profiles": sorted(profiles),
        "services": list(enabled),
        "disabled_services": list(disabled),
        "secret_keys": sorted(secret_keys),
        "files": {p: "sha256:" + hashlib.sha256(f.data).hexdigest() for p, f in sorted(files.items())},
    }
    files[RELEASE_FILE] = SourceFile(
        (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), FILE_MODE
    )
    return Bundle(
        release_id=rid,
        version=version,
        files=files,
        env=ordered,
        secret_keys=secret_keys,
        services=enabled,
        disabled_services=disabled,
        healthchecked=checked,
        meta=meta,
    )


def local_meta(
    operator: str | None = None, repo: Path = PROJECT_ROOT, now: datetime | None = None
) -> ReleaseMeta:
    """Metadata from this machine: operator (FLEET_OPERATOR or user@host), git commit of compose/."""
    who = settings.load().operator_for(operator)
    commit = "unknown"
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if head.returncode == 0:
            commit = head.stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--", "compose"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if dirty.stdout.strip():
                commit += "-dirty"
    except (OSError, subprocess.TimeoutExpired):
        pass
    when = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ReleaseMeta(operator=who, source_commit=commit, created=when)


# --------------------------------------------------------------------------- tar


def _tar(files: Mapping[str, SourceFile], mtime: int) -> bytes:
    return sealed.pack({rel: (f.data, f.mode) for rel, f in files.items()}, mtime)


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class EnvChange:
    key: str
    change: str  # added | removed | changed
    old: str | None  # masked when secret
    new: str | None


@dataclass(frozen=True)
class ReleaseDiff:
    """What changes on a host when it moves from its current release to a new one (secrets masked)."""

    old_id: str | None
    new_id: str
    old_version: str | None
    new_version: str
    env: tuple[EnvChange, ...]
    files: tuple[tuple[str, str], ...]  # (path, unified diff) of changed, added or removed files

    @property
    def empty(self) -> bool:
        return self.old_id == self.new_id or (not self.env and not self.files)

    def render(self) -> str:
        head = f"{self.old_id or '(none)'} ({self.old_version or '-'}) -> {self.new_id} ({self.new_version})"
        if self.empty:
            return head + ": no changes"
        lines = [head]
        if self.env:
            lines.append(f"  {ENV_FILE}:")
            width = max(len(c.key) for c in self.env)
            for c in self.env:
                if c.change == "added":
                    lines.append(f"    + {c.key:<{width}} = {c.new}")
                elif c.change == "removed":
                    lines.append(f"    - {c.key:<{width}} (was {c.old})")
                else:
                    lines.append(f"    ~ {c.key:<{width}} : {c.old} -> {c.new}")
        for path, text in self.files:
            lines.append(f"  {path}:")
            lines.extend("    " + line for line in text.rstrip("\n").splitlines())
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "old_id": self.old_id,
            "new_id": self.new_id,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "env": [c.__dict__ for c in self.env],
            "files": [{"path": p, "diff": d} for p, d in self.files],
        }


def _is_secret(key: str, secret_keys: frozenset[str], schema_keys: frozenset[str]) -> bool:
    """Secret when the schema (or the old release's record) says so, when the name looks secret, and
    when the schema does not know the key at all: an old .env's retired keys (SENTRY_DSN, SMTP_PASS,
    DATABASE_URL...) are masked by default. Only keys the schema declares `secret: false` are shown."""
    return key in secret_keys or key not in schema_keys or bool(_SECRETISH.search(key))


def _shown(key: str, value: str, secret_keys: frozenset[str], schema_keys: frozenset[str]) -> str:
    if _is_secret(key, secret_keys, schema_keys) and value:
        return MASK
    return repr(value)


def diff(old: Bundle | Mapping[str, bytes] | None, new: Bundle) -> ReleaseDiff:
    """Compose and env differences from `old` (a bundle, a host's current files, or None) to `new`."""
    old_files: Mapping[str, bytes] = (old.file_bytes() if isinstance(old, Bundle) else old) or {}
    new_files = new.file_bytes()
    old_record: dict[str, object] = {}
    if RELEASE_FILE in old_files:
        try:
            old_record = json.loads(old_files[RELEASE_FILE])
        except ValueError:
            old_record = {}
    old_secret_keys = old_record.get("secret_keys")
    secret_keys = new.secret_keys | frozenset(old_secret_keys if isinstance(old_secret_keys, list) else ())
    old_env = envfile.parse(old_files[ENV_FILE], where=f"current {ENV_FILE}") if ENV_FILE in old_files else {}
    new_env = dict(new.env)
    schema_keys = frozenset(new_env)  # a bundle's env holds every variable of its schema
    secret_values = [
        v for k, v in (*old_env.items(), *new_env.items()) if _is_secret(k, secret_keys, schema_keys) and v
    ]
    secret_store.remember(secret_values)  # so later step errors on this host mask the old values too

    env_changes: list[EnvChange] = []
    for key in [*new_env, *(k for k in old_env if k not in new_env)]:
        before, after = old_env.get(key), new_env.get(key)
        if before == after:
            continue
        change = "added" if before is None else "removed" if after is None else "changed"
        if change == "changed" and _is_secret(key, secret_keys, schema_keys):
            env_changes.append(EnvChange(key, change, MASK, MASK + " (changed)"))
            continue
        env_changes.append(
            EnvChange(
                key,
                change,
                None if before is None else _shown(key, before, secret_keys, schema_keys),
                None if after is None else _shown(key, after, secret_keys, schema_keys),
            )
        )

    file_changes: list[tuple[str, str]] = []
    for path in sorted(set(old_files) | set(new_files)):
        if path in (ENV_FILE, RELEASE_FILE) or old_files.get(path) == new_files.get(path):
            continue
        before_text = _text(old_files.get(path))
        after_text = _text(new_files.get(path))
        text = "".join(
            difflib.unified_diff(
                before_text.splitlines(keepends=True),
                after_text.splitlines(keepends=True),
                fromfile=f"current/{path}" if path in old_files else "/dev/null",
                tofile=f"new/{path}" if path in new_files else "/dev/null",
                n=2,
            )
        )
        file_changes.append((path, base.mask(text, secret_values)))

    recorded_version, recorded_id = old_record.get("version"), old_record.get("id")
    old_version = recorded_version if isinstance(recorded_version, str) else old_env.get("DIFY_VERSION")
    old_id = recorded_id if isinstance(recorded_id, str) else None
    if isinstance(old, Bundle):
        old_id, old_version = old.release_id, old.version
    return ReleaseDiff(
        old_id=old_id,
        new_id=new.release_id,
        old_version=old_version,
        new_version=new.version,
        env=tuple(env_changes),
        files=tuple(file_changes),
    )


def _text(data: bytes | None) -> str:
    if data is None:
        return ""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return f"<binary, {len(data)} bytes>\n"
