"""The release manifest: which sandbox and plugin-daemon tags go with each DIFY_VERSION.

Dify's api and its plugin daemon speak a protocol that changes between releases; an api paired with a
daemon tagged months later fails at run time, not at deploy time. So the pairing is data
(compose/releases.yaml), the unset tags default to it, and a pairing it does not know is refused before
anything is rendered, unless the inventory overrides it (`dify.allow_unpaired_images`).

    manifest = load_manifest()
    variables.update(resolve(manifest, variables, allow=False, where=host))
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fleet.commands import base
from fleet.errors import FleetError
from fleet.paths import COMPOSE_DIR
from fleet.release import yamlfile

MANIFEST_FILE = "releases.yaml"
TAGS = {"sandbox": "SANDBOX_VERSION", "plugin_daemon": "PLUGIN_DAEMON_VERSION"}
OVERRIDE = "data.dify.allow_unpaired_images: true"
# a release's database schema revision (Dify's alembic head at that tag): an opaque label compared for
# equality only; two releases with the same one need no migration between them
SCHEMA_KEY = "schema"
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Pair:
    sandbox: str
    plugin_daemon: str
    schema: str | None = None  # the schema revision; None = not recorded (no migration phase)

    def tag(self, component: str) -> str:
        return self.sandbox if component == "sandbox" else self.plugin_daemon


@dataclass(frozen=True)
class Manifest:
    releases: Mapping[str, Pair]
    any_version: frozenset[str]  # tags that pair with every release (the local stand-ins)

    def revision(self, version: str | None) -> str | None:
        """The schema revision of DIFY_VERSION `version`; None when the manifest does not record it."""
        pair = self.releases.get(version or "")
        return pair.schema if pair is not None else None


def parse_manifest(text: str, where: str = MANIFEST_FILE) -> Manifest:
    """compose/releases.yaml, every tag checked as a Docker tag."""
    data = yamlfile.document(
        text, "releases", "`releases: {DIFY_VERSION: {sandbox: TAG, plugin_daemon: TAG}}`", where
    )
    unknown = set(data) - {"releases", "any_version"}
    if unknown:
        raise FleetError(f"unknown keys {sorted(unknown)}", where=where, hint="releases, any_version")
    releases: dict[str, Pair] = {}
    for version, spec in data["releases"].items():
        at = f"{where}: {version}"
        if not isinstance(spec, dict) or set(spec) - {SCHEMA_KEY} != set(TAGS):
            raise FleetError(
                "each release needs exactly `sandbox` and `plugin_daemon` tags (and may give `schema`)",
                where=at,
            )
        tags = {k: _tag(v, at) for k, v in spec.items() if k in TAGS}
        schema = spec.get(SCHEMA_KEY)
        if schema is not None and (not isinstance(schema, str) or not _REVISION_RE.fullmatch(schema)):
            raise FleetError(
                f"schema revision {schema!r} must be a quoted string of letters, digits, '.', '_', '-'",
                where=at,
            )
        releases[_tag(version, where)] = Pair(tags["sandbox"], tags["plugin_daemon"], schema)
    any_version = data.get("any_version") or []
    if not isinstance(any_version, list):
        raise FleetError("any_version must be a list of tags", where=where)
    return Manifest(releases, frozenset(_tag(t, where) for t in any_version))


def _tag(value: object, where: str) -> str:
    if not isinstance(value, str):  # 1.10 read as a float would silently become "1.1"
        raise FleetError(f"tag {value!r} must be a quoted string", where=where)
    try:
        return base.version(value)
    except FleetError:
        raise FleetError(f"{value!r} is not a Docker tag", where=where) from None


def load_manifest(compose_dir: Path = COMPOSE_DIR) -> Manifest | None:
    """The manifest next to the compose file; None when there is none (a bare compose directory)."""
    path = compose_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    return parse_manifest(path.read_text(), str(path))


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def resolve(
    manifest: Manifest, variables: Mapping[str, object], *, allow: bool = False, where: str | None = None
) -> dict[str, str]:
    """The tags to render for this DIFY_VERSION: the manifest's for those the inventory leaves unset.

    Refuses (FleetError naming the versions and the override) a DIFY_VERSION the manifest does not
    list, or a tag set in the inventory that differs from the manifest's pair, unless `allow`."""
    version = _text(variables.get("DIFY_VERSION"))
    if version is None:
        return {}  # the bundle reports the missing DIFY_VERSION itself
    given = {c: _text(variables.get(name)) for c, name in TAGS.items()}
    if all(tag is not None and tag in manifest.any_version for tag in given.values()):
        return {}
    pair = manifest.releases.get(version)
    if pair is None:
        if allow:
            return {}
        known = ", ".join(sorted(manifest.releases)) or "none"
        raise FleetError(
            f"DIFY_VERSION {version} has no sandbox / plugin-daemon pairing in compose/{MANIFEST_FILE} "
            f"(it knows {known})",
            where=where,
            hint=f'add "{version}": {{sandbox: TAG, plugin_daemon: TAG}} to compose/{MANIFEST_FILE} from '
            f"upstream's docker/docker-compose.yaml at tag {version}, or set {OVERRIDE} and give "
            "SANDBOX_VERSION and PLUGIN_DAEMON_VERSION under vars",
        )
    wrong = [
        f"{TAGS[c]} {tag} (paired: {pair.tag(c)})"
        for c, tag in given.items()
        if tag is not None and tag not in manifest.any_version and tag != pair.tag(c)
    ]
    if wrong and not allow:
        raise FleetError(
            f"DIFY_VERSION {version} is paired with sandbox {pair.sandbox} and plugin daemon "
            f"{pair.plugin_daemon} in compose/{MANIFEST_FILE}; the inventory sets {', '.join(wrong)}",
            where=where,
            hint=f"remove those tags from vars (the pair applies), or set {OVERRIDE} to run this pairing",
        )
    return {TAGS[c]: pair.tag(c) for c, tag in given.items() if tag is None}
