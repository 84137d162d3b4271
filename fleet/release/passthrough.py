"""Upstream Dify variables passed through to the services, checked against a catalog of known names.

compose/env.schema.yaml declares the variables the fleet manages (kinds, defaults, secrets); upstream Dify
reads some three hundred more (mail, CORS, Sentry, upload limits, storage vendors...). Rather than
declaring each, the inventory may set any name compose/upstream-env.yaml lists or matches, under
`data.dify.env_extra` (plain values) or `data.secrets` (secret references). Each goes to the services
that read it (`NAME: ${NAME}` entries the bundle writes at the compose file's `# fleet: pass-through
GROUP` comment, the value in .env), so a name meant for the api never reaches web. (Not env_file:
`docker compose config --hash` does not resolve env_file the way `up` does, so status would report
every such service as drifted.) Refused, each with a FleetError naming it: a name the catalog does not know
(typos), one the schema declares (use vars), one the compose file fixes for that service (compose would
silently override it), a secret-looking name outside data.secrets, and a malformed value.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import FleetError
from fleet.paths import COMPOSE_DIR
from fleet.release import envfile, yamlfile

CATALOG_FILE = "upstream-env.yaml"
# each group, its marker in the compose file, and the compose services that get its variables
GROUPS: dict[str, tuple[str, ...]] = {
    "app": ("api", "worker", "worker_beat"),
    "web": ("web",),
    "plugin_daemon": ("plugin_daemon",),
    "sandbox": ("sandbox",),
}
MAX_VALUE = 4096
_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")
_KINDS: dict[str, tuple[re.Pattern[str], str]] = {
    "text": (re.compile(r".*", re.S), "text"),
    "url": (re.compile(r"^(?:[a-z][a-z0-9+.-]*://\S+)?$"), "a URL (scheme://...), or empty"),
    "port": (
        re.compile(
            r"^(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])?$"
        ),
        "a TCP port (1-65535), or empty",
    ),
    "bool": (re.compile(r"^(?:true|false|True|False|TRUE|FALSE)?$"), "true or false"),
    "number": (re.compile(r"^(?:-?[0-9]+(?:\.[0-9]+)?)?$"), "a number"),
}


_MARKER_RE = re.compile(r"^(?P<indent>[ ]*)# fleet: pass-through (?P<group>[a-z_]+)[ ]*$", re.M)


@dataclass(frozen=True)
class Catalog:
    """compose/upstream-env.yaml: per group, upstream name -> the name the service reads."""

    names: Mapping[str, Mapping[str, str]]
    patterns: Mapping[str, tuple[re.Pattern[str], ...]]
    secret_names: frozenset[str]
    secret_pattern: re.Pattern[str]
    kinds: tuple[tuple[re.Pattern[str], str], ...]

    def targets(self, name: str) -> dict[str, str]:
        """group -> container variable name, for every group that reads `name`."""
        out: dict[str, str] = {}
        for group in GROUPS:
            if name in self.names.get(group, {}):
                out[group] = self.names[group][name]
            elif any(p.fullmatch(name) for p in self.patterns.get(group, ())):
                out[group] = name
        return out

    def is_secret(self, name: str) -> bool:
        return name in self.secret_names or bool(self.secret_pattern.fullmatch(name))

    def kind(self, name: str) -> str:
        return next((kind for pattern, kind in self.kinds if pattern.fullmatch(name)), "text")

    def known(self) -> list[str]:
        return sorted({n for names in self.names.values() for n in names})


def parse_catalog(text: str, where: str = CATALOG_FILE) -> Catalog:
    data = yamlfile.document(text, "groups", "`groups: {GROUP: {names: [...], patterns: [...]}}`", where)
    names: dict[str, dict[str, str]] = {}
    patterns: dict[str, tuple[re.Pattern[str], ...]] = {}
    for group, spec in data["groups"].items():
        at = f"{where}: {group}"
        if group not in GROUPS:
            raise FleetError(f"unknown group {group!r}", where=where, hint=f"one of {sorted(GROUPS)}")
        if not isinstance(spec, dict) or set(spec) - {"names", "patterns"}:
            raise FleetError("a group has `names` and `patterns` lists", where=at)
        entries: dict[str, str] = {}
        for item in spec.get("names") or []:
            env_name, _, container = str(item).partition("=")
            for n in (env_name, container or env_name):
                if not _NAME_RE.fullmatch(n):
                    raise FleetError(f"{n!r} is not a variable name", where=at)
            entries[env_name] = container or env_name
        names[group] = entries
        patterns[group] = tuple(_regex(p, at) for p in spec.get("patterns") or [])
    kinds = []
    for item in data.get("kinds") or []:
        if not (isinstance(item, list) and len(item) == 2 and item[1] in _KINDS):
            raise FleetError(f"kinds entry {item!r}: [REGEX, {'|'.join(_KINDS)}]", where=where)
        kinds.append((_regex(item[0], where), str(item[1])))
    return Catalog(
        names=names,
        patterns=patterns,
        secret_names=frozenset(str(n) for n in data.get("secret") or []),
        secret_pattern=_regex(data.get("secret_pattern") or "(?!)", where),
        kinds=tuple(kinds),
    )


def _regex(text: object, where: str) -> re.Pattern[str]:
    try:
        return re.compile(str(text))
    except re.error as exc:
        raise FleetError(f"bad regular expression {text!r}: {exc}", where=where) from None


def load_catalog(compose_dir: Path = COMPOSE_DIR) -> Catalog | None:
    path = compose_dir / CATALOG_FILE
    return parse_catalog(path.read_text(), str(path)) if path.is_file() else None


@dataclass(frozen=True)
class Extra:
    """What passes through. The values go into the release's `.env` (sealed and masked like every
    secret there); the compose file only refers to them (`AWS_REGION: ${PLUGIN_AWS_REGION}`), so no
    other file of a release ever holds a value."""

    values: Mapping[str, str] = field(default_factory=dict)  # upstream name -> value, sorted
    secret_names: frozenset[str] = frozenset()  # came from data.secrets
    files: Mapping[str, Mapping[str, str]] = field(
        default_factory=dict
    )  # group -> {service's name: upstream name}


def fixed_by_compose(compose: Mapping[str, object]) -> dict[str, set[str]]:
    """group -> the variable names the compose file's `environment` sets for its services (those win
    over env_file, so a pass-through of the same name would be silently ignored)."""
    services = compose.get("services")
    out: dict[str, set[str]] = {g: set() for g in GROUPS}
    if not isinstance(services, dict):
        return out
    for group, members in GROUPS.items():
        for svc in members:
            env = (services.get(svc) or {}).get("environment")
            if isinstance(env, dict):
                out[group].update(str(k) for k in env)
            elif isinstance(env, list):
                out[group].update(str(item).split("=", 1)[0] for item in env)
    return out


def _text(name: str, value: object, where: str | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise FleetError(f"value of {name} must be a string, number or boolean", where=where)


def build(
    catalog: Catalog,
    compose: Mapping[str, object],
    schema_names: Iterable[str],
    values: Mapping[str, object],
    secrets: Mapping[str, str],
    *,
    where: str | None = None,
) -> Extra:
    """Check every pass-through name and value; every problem is named in one FleetError."""
    schema = set(schema_names)
    fixed = fixed_by_compose(compose)
    problems: list[str] = []
    files: dict[str, dict[str, str]] = {}
    chosen: dict[str, str] = {}
    secret_names: set[str] = set()
    for name, raw, secret in [
        *((n, v, False) for n, v in values.items()),
        *((n, v, True) for n, v in secrets.items()),
    ]:
        if name in schema:
            problems.append(
                f"{name} is declared in compose/env.schema.yaml: set it under "
                + ("data.secrets" if secret else "data.vars")
            )
            continue
        targets = catalog.targets(name) if _NAME_RE.fullmatch(name) else {}
        if not targets:
            close = difflib.get_close_matches(name, [*catalog.known(), *schema], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{name} is not an upstream Dify variable of this stack's services{hint}")
            continue
        clash = [f"{g}: {c}" for g, c in targets.items() if c in fixed[g]]
        if clash:
            problems.append(f"{name} is fixed by compose/docker-compose.yaml ({', '.join(clash)})")
            continue
        if not secret and catalog.is_secret(name):
            problems.append(
                f"{name} is a secret: set it under data.secrets as {{env: VAR}}, {{file: PATH}} "
                "or {secret_manager: NAME}, not in dify.env_extra"
            )
            continue
        value = _text(name, raw, where)
        envfile.check_value(name, value, where)
        kind = catalog.kind(name)
        pattern, rule = _KINDS[kind]
        if len(value) > MAX_VALUE or not pattern.fullmatch(value):
            shown = "******" if secret else repr(value[:80])
            problems.append(f"{name}={shown} is not {rule if len(value) <= MAX_VALUE else 'short enough'}")
            continue
        chosen[name] = value
        if secret:
            secret_names.add(name)
        for group, container in targets.items():
            files.setdefault(group, {})[container] = name
    if problems:
        raise FleetError(
            "pass-through variables refused:\n    " + "\n    ".join(problems),
            where=where,
            hint="names come from compose/upstream-env.yaml (upstream Dify's .env.example); "
            "see docs/compose.md",
        )
    ordered = {g: dict(sorted(files[g].items())) for g in GROUPS if g in files}
    return Extra(dict(sorted(chosen.items())), frozenset(secret_names), ordered)


def render_compose(text: str, extra: Extra, where: str | None = None) -> str:
    """The compose file with each group's `NAME: ${UPSTREAM_NAME}` entries at its marker comment."""
    seen: set[str] = set()

    def entries(match: re.Match[str]) -> str:
        group, indent = match.group("group"), match.group("indent")
        seen.add(group)
        lines = [match.group(0)]
        lines.extend(f"{indent}{c}: ${{{n}}}" for c, n in extra.files.get(group, {}).items())
        return "\n".join(lines)

    out = _MARKER_RE.sub(entries, text)
    missing = sorted(g for g in extra.files if extra.files[g] and g not in seen)
    if missing:
        raise FleetError(
            f"the compose file has no `# fleet: pass-through {missing[0]}` line for pass-through variables",
            where=where,
            hint="put it at the end of that group's environment mapping, indented like its keys",
        )
    return out
