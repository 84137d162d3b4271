"""A release as the store keeps it: every file but the secret values, which stay in Secret Manager.

The operator renders a host's bundle as always (fleet/release/bundle.py), then `seal`s it: the files
without `.env` go into one tar, and the manifest keeps `.env` line by line, a secret line replaced by
where its value lives (a pinned Secret Manager version) or how it is derived from other values. A VM's
agent `unseal`s it with the values it read with its own service account and gets back the very same
files: the manifest's sha256 of every file (the same checksums the stage step verifies) proves it, so
a secret version that changed or was destroyed is an error, never a different release under the old id.

Standard library only: the on-VM agent imports this module.

    sealed = seal(files, env, secret_keys, refs, release_id=..., version=..., disabled_services=...)
    manifest, archive = sealed.manifest, sealed.archive            # what the store holds
    needed = secret_refs(manifest)                                  # KEY -> projects/.../versions/N
    files = unseal(manifest, archive, {key: value_of(ref) ...})     # path -> (bytes, mode)
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from fleet.commands import base
from fleet.commands.base import env_key
from fleet.commands.release import ENV_FILE
from fleet.errors import FleetError
from fleet.release import derived, envfile

FORMAT = 1
ENV_MODE = 0o600
DIR_MODE = 0o755

Files = Mapping[str, tuple[bytes, int]]  # path in the release -> (content, mode)


def pack(files: Files, mtime: int = 0) -> bytes:
    """The files as one deterministic uncompressed tar (directories first, then files by path)."""
    buf = io.BytesIO()
    dirs = sorted({str(p) for rel in files for p in PurePosixPath(rel).parents if str(p) != "."})
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = DIR_MODE
            info.mtime = mtime
            tar.addfile(info)
        for rel in sorted(files):
            data, mode = files[rel]
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = mode
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack(archive: bytes, where: str = "release archive") -> dict[str, tuple[bytes, int]]:
    """Regular files of a tar `pack` wrote; anything else (links, absolute or `..` paths) is refused."""
    files: dict[str, tuple[bytes, int]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for info in tar:
                path = PurePosixPath(info.name)
                if path.is_absolute() or ".." in path.parts:
                    raise FleetError(f"unsafe path {info.name!r} in the archive", where=where)
                if info.isdir():
                    continue
                if not info.isfile():
                    raise FleetError(f"{info.name!r} is not a regular file", where=where)
                extracted = tar.extractfile(info)
                assert extracted is not None
                files[str(path)] = (extracted.read(), info.mode & 0o777)
    except tarfile.TarError as exc:
        raise FleetError(f"not a release archive: {exc}", where=where) from None
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Sealed:
    """What the store holds for one release: a JSON manifest and a tar without secret values."""

    manifest: dict[str, Any]
    archive: bytes

    @property
    def release_id(self) -> str:
        return str(self.manifest["release_id"])

    def manifest_bytes(self) -> bytes:
        return (json.dumps(self.manifest, indent=2, sort_keys=True) + "\n").encode()


def seal(
    files: Files,
    env: Mapping[str, str],
    secret_keys: frozenset[str] | set[str],
    refs: Mapping[str, str],
    *,
    release_id: str,
    version: str,
    services: Sequence[str] = (),
    disabled_services: Sequence[str] = (),
    roles: Sequence[str] = (),
) -> Sealed:
    """Seal one rendered release. `env` is its .env in order, `refs` the pinned Secret Manager version
    of each secret that has a value. A secret with a value and no ref cannot reach a VM: refused."""
    if ENV_FILE not in files:
        raise FleetError(f"the release has no {ENV_FILE}", where=release_id)
    env_text, env_mode = files[ENV_FILE]
    lines: list[str | dict[str, str]] = []
    missing: list[str] = []
    for line in env_text.decode().splitlines():
        key = line.partition("=")[0] if not line.startswith("#") else ""
        if key in secret_keys and env.get(key):
            if key in refs:
                lines.append({"secret": key, "ref": refs[key]})
            elif key in derived.DERIVED:
                lines.append({"derived": key})
            else:
                missing.append(key)
            continue
        lines.append(line)
    if missing:
        raise FleetError(
            f"secrets {', '.join(sorted(missing))} are not in Secret Manager, so a VM cannot read them",
            where=release_id,
            hint="`fab secrets.push` them and refer to them as {secret_manager: NAME} under data.secrets",
        )
    rest = {path: content for path, content in files.items() if path != ENV_FILE}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "release_id": release_id,
        "version": version,
        "roles": sorted(roles),
        "services": list(services),
        "disabled_services": list(disabled_services),
        "checksums": {path: sha256(data) for path, (data, _) in sorted(files.items())},
        "env": {"mode": env_mode, "lines": lines},
    }
    return Sealed(manifest, pack(rest))


def check_manifest(manifest: object, where: str = "release manifest") -> dict[str, Any]:
    """The manifest's shape, before anything trusts it."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FleetError(f"not a format-{FORMAT} release manifest", where=where)
    base.release_id(manifest.get("release_id"))
    base.version(manifest.get("version"))
    checksums = manifest.get("checksums")
    env = manifest.get("env")
    if not isinstance(checksums, dict) or not isinstance(env, dict) or not isinstance(env.get("lines"), list):
        raise FleetError("manifest without checksums or env lines", where=where)
    return manifest


def secret_refs(manifest: Mapping[str, Any]) -> dict[str, str]:
    """KEY -> the Secret Manager version the VM must read for it."""
    refs: dict[str, str] = {}
    for line in manifest["env"]["lines"]:
        if isinstance(line, dict) and "secret" in line:
            refs[env_key(line["secret"])] = str(line["ref"])
    return refs


def unseal(
    manifest: Mapping[str, Any], archive: bytes, secrets: Mapping[str, str], where: str = "release"
) -> dict[str, tuple[bytes, int]]:
    """The release's files with `.env` rebuilt from `secrets` (KEY -> value), checked against the
    manifest's checksums. Raises naming what is missing or differs."""
    rid = str(manifest.get("release_id"))
    files = unpack(archive, where=f"{where} {rid}")
    needed = secret_refs(manifest)
    absent = sorted(set(needed) - set(secrets))
    if absent:
        raise FleetError(f"no value for secrets {', '.join(absent)}", where=f"{where} {rid}")
    plain = envfile.parse("\n".join(x for x in manifest["env"]["lines"] if isinstance(x, str)))
    values = {**plain, **{k: secrets[k] for k in needed}}
    out: list[str] = []
    for line in manifest["env"]["lines"]:
        if isinstance(line, str):
            out.append(line)
        elif "secret" in line:
            key = env_key(line["secret"])
            out.append(f"{key}={envfile.quote(key, secrets[key], where)}")
        else:
            key = env_key(line["derived"])
            if key not in derived.DERIVED:
                raise FleetError(f"unknown derived variable {key}", where=f"{where} {rid}")
            value = derived.DERIVED[key](values)
            values[key] = value
            out.append(f"{key}={envfile.quote(key, value, where)}")
    files[ENV_FILE] = (("\n".join(out) + "\n").encode(), int(manifest["env"].get("mode", ENV_MODE)))
    want = manifest["checksums"]
    wrong = sorted(p for p in set(want) | set(files) if want.get(p) != sha256(files.get(p, (b"", 0))[0]))
    if wrong:
        hint = (
            "a secret version now holds a different value than when the release was published: "
            "publish again (deploy/rollout) or restore that version"
            if wrong == [ENV_FILE]
            else "the stored release is damaged: publish it again"
        )
        raise FleetError(
            f"files differ from the manifest: {', '.join(wrong)}", where=f"{where} {rid}", hint=hint
        )
    return files
