"""Host keys from Compute guest attributes, pinned under `compute.<instance-id>`. Never trust on first use.

A GCE guest environment publishes the instance's SSH host keys as guest attributes in the
`hostkeys/` namespace (key = key type, value = base64 of the public key). Reading them through the
Compute API is an authenticated channel, independent of the SSH connection it protects; a MIG that
recreates an instance therefore needs no one to re-pin its new key.

The inventory's `known_hosts` still wins where it speaks: a key pinned there under
`compute.<instance-id>` must agree with what the instance publishes (a disagreement is refused: it
is either a stale pin or somebody in the middle), and with nothing published, an explicit pin is
the only way in. With neither, the connection is refused with how to fix it.

OpenSSH's markers are read here too (paramiko's own parser fails on them, for every host): a key on an
`@revoked` line is never trusted, and a host offering it is refused naming the line. `@cert-authority`
lines are not supported (paramiko cannot verify host certificates): they are ignored, and a host that
only such a line could vouch for is refused with how to pin its own key instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import HostKeyError

if TYPE_CHECKING:
    from fleet.gcp.compute import Compute

NAMESPACE = "hostkeys"
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
ENABLE_HINT = (
    "enable guest attributes so the guest environment publishes the instance's host keys: metadata "
    "`enable-guest-attributes=TRUE` on the instance template (or the project), then recreate the "
    "instance; or pin the key explicitly: read it from the serial console "
    "(`gcloud compute instances get-serial-port-output`), and add `{name} <type> <base64>` to {known_hosts}"
)


@dataclass(frozen=True)
class GuestKeySource:
    """Where an instance's published host keys are read from (one Compute endpoint, one instance)."""

    endpoint: str | None
    project: str
    zone: str
    instance: str
    instance_id: str

    @property
    def alias(self) -> str:
        return f"compute.{self.instance_id}"


def _blob_type(blob: bytes) -> str | None:
    """The key type an SSH public key blob names in its first field."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length > 64 or len(blob) < 4 + length:
        return None
    try:
        return blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def parse_published(items: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """{key type: base64} from guest attribute items (namespace, key, value). Values may be the
    base64 alone (what the guest agent writes) or `type base64`; a value whose blob names another
    type, or that is not base64, is dropped."""
    keys: dict[str, str] = {}
    for namespace, key, value in items:
        if namespace != NAMESPACE or key not in KEY_TYPES:
            continue
        words = value.split()
        b64 = words[1] if len(words) >= 2 and words[0] == key else (words[0] if words else "")
        try:
            blob = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            continue
        if _blob_type(blob) == key:
            keys[key] = b64
    return keys


def parse_known_hosts(text: str, name: str) -> dict[str, str]:
    """{key type: base64} pinned for `name` (plain host patterns; hashed and negated entries are
    not ours to interpret and are ignored)."""
    keys: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0].startswith(("#", "|", "@")):
            continue
        if name in words[0].split(","):
            keys[words[1]] = words[2]
    return keys


def pinned(known_hosts: str | Path, name: str) -> dict[str, str]:
    try:
        return parse_known_hosts(Path(known_hosts).read_text(), name)
    except FileNotFoundError:
        return {}


# --------------------------------------------------------------------------- known_hosts markers


@dataclass(frozen=True)
class KnownHostsLine:
    """One key line of a known_hosts file, with its marker (`revoked`, `cert-authority`) if any."""

    lineno: int
    marker: str | None
    hosts: str
    key_type: str
    b64: str


def parse_lines(text: str) -> list[KnownHostsLine]:
    """Every key line (comments, blank and short lines skipped), markers included."""
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        marker = None
        if words[0].startswith("@"):
            marker, words = words[0][1:], words[1:]
        if len(words) >= 3:
            lines.append(KnownHostsLine(n, marker, words[0], words[1], words[2]))
    return lines


def _hashed_matches(entry: str, name: str) -> bool:
    """`|1|salt|hmac`: OpenSSH's HashKnownHosts form (HMAC-SHA1 of the name keyed by the salt)."""
    parts = entry.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt, digest = base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH host patterns: `*` and `?` only (`[` is literal: `[host]:port`), case-insensitive."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.fullmatch(regex, name.lower(), flags=re.DOTALL) is not None


def host_matches(hosts: str, name: str, *, patterns: bool) -> bool:
    """Does a line's host field name `name`? Exact names and hashed entries always; with `patterns`,
    OpenSSH wildcards and `!` negation too (used for the marker lines, which are usually wildcards)."""
    if hosts.startswith("|"):
        return _hashed_matches(hosts, name)
    hit = False
    for pattern in hosts.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if pattern == name or (patterns and _glob(pattern, name)):
            if negated:
                return False
            hit = True
    return hit


def _blob(b64: str) -> bytes | None:
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class HostTrust:
    """What known_hosts says about one host: the keys to trust, revoked keys, certificate authorities."""

    name: str
    known_hosts: str
    keys: dict[str, str]  # {key type: base64}, revoked ones removed
    revoked: tuple[KnownHostsLine, ...] = ()
    authorities: tuple[KnownHostsLine, ...] = ()

    def revoked_by(self, b64: str) -> KnownHostsLine | None:
        """The @revoked line naming this key, if any."""
        blob = _blob(b64)
        return next((r for r in self.revoked if blob is not None and _blob(r.b64) == blob), None)

    def revoked_error(self, line: KnownHostsLine, key_type: str, fingerprint: str) -> HostKeyError:
        return HostKeyError(
            f"host key {key_type} {fingerprint} is REVOKED by {self.known_hosts}:{line.lineno} "
            "(@revoked): refusing to connect",
            where=self.name,
            hint="the host still offers a key that was revoked: give it a new host key and pin that one; "
            f"if the revocation is a mistake, remove line {line.lineno} from {self.known_hosts}",
        )

    def authority_error(self, key_type: str, fingerprint: str, pin_hint: str) -> HostKeyError:
        line = self.authorities[0]
        return HostKeyError(
            f"host key {key_type} {fingerprint} is not pinned; the @cert-authority line at "
            f"{self.known_hosts}:{line.lineno} matches this host, but host certificates are not supported "
            "(@cert-authority lines are ignored)",
            where=self.name,
            hint=pin_hint,
        )


RACY_NS = 2_000_000_000
_parsed: dict[str, tuple[tuple[int, int, int], list[KnownHostsLine]]] = {}
_parsed_lock = threading.Lock()


def known_hosts_file_lines(known_hosts: str | Path) -> list[KnownHostsLine]:
    """`parse_lines` of the file, parsed once per process while its inode, size and mtime stay the same
    (a fan-out to N hosts reads the same file N times); a missing file has no lines.

    File times have the kernel's tick granularity, so a file changed within the last RACY_NS could be
    changed again without its stamp moving: such a file is parsed every time, never cached."""
    path = str(known_hosts)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _parsed_lock:
        cached = _parsed.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    try:
        lines = parse_lines(Path(path).read_text())
    except FileNotFoundError:
        return []
    if time.time_ns() - st.st_mtime_ns > RACY_NS:
        with _parsed_lock:
            _parsed[path] = (stamp, lines)
    return lines


def host_trust(known_hosts: str | Path, name: str, keys: Mapping[str, str] | None = None) -> HostTrust:
    """Keys to trust for `name` from known_hosts (or `keys` already resolved, e.g. from guest
    attributes), minus any an @revoked line names. A malformed pin for this host is an error naming
    its line; lines for other hosts are not this host's business."""
    path = str(known_hosts)
    lines = known_hosts_file_lines(path)
    revoked = tuple(x for x in lines if x.marker == "revoked" and host_matches(x.hosts, name, patterns=True))
    authorities = tuple(
        x for x in lines if x.marker == "cert-authority" and host_matches(x.hosts, name, patterns=True)
    )
    if keys is None:
        keys = {}
        for x in lines:
            if x.marker is None and host_matches(x.hosts, name, patterns=False):
                if _blob(x.b64) is None:
                    raise HostKeyError(
                        f"the {x.key_type} key pinned at {path}:{x.lineno} is not valid base64",
                        where=name,
                        hint=f"fix or remove line {x.lineno} of {path}",
                    )
                keys.setdefault(x.key_type, x.b64)
    trust = HostTrust(name, path, {}, revoked, authorities)
    kept = {t: b for t, b in keys.items() if trust.revoked_by(b) is None}
    return HostTrust(name, path, kept, revoked, authorities)


def trusted(
    name: str, pins: Mapping[str, str], published: Mapping[str, str], known_hosts: str | Path
) -> dict[str, str]:
    """The keys to accept for `name`: the published ones plus explicit pins, when they agree."""
    stale = sorted(t for t in pins.keys() & published.keys() if pins[t] != published[t])
    if stale:
        raise HostKeyError(
            f"the {', '.join(stale)} key pinned in {known_hosts} is not the one the instance publishes "
            "in its guest attributes: refusing to connect",
            where=name,
            hint=f"a stale pin (the instance was rebuilt) or a machine in the middle; if the instance was "
            f"rebuilt, delete the line for {name} from {known_hosts}",
        )
    if not pins and not published:
        raise HostKeyError(
            "the instance publishes no SSH host keys in its guest attributes (hostkeys/), and none is "
            "pinned: refusing to trust a key on first use",
            where=name,
            hint=ENABLE_HINT.format(name=name, known_hosts=known_hosts),
        )
    merged = {**pins, **published}
    # paramiko negotiates the first key type it holds for a host: offer the strongest first
    order = {t: n for n, t in enumerate(KEY_TYPES)}
    return dict(sorted(merged.items(), key=lambda kv: order.get(kv[0], len(order))))


_clients: dict[str | None, Compute] = {}
_clients_lock = threading.Lock()


def _compute(endpoint: str | None) -> Compute:
    """One Compute per endpoint for the whole process (connections to many hosts share it)."""
    from fleet.gcp.compute import Compute

    with _clients_lock:
        if endpoint not in _clients:
            _clients[endpoint] = Compute(endpoint)
        return _clients[endpoint]


def published(source: GuestKeySource, compute: Compute | None = None) -> dict[str, str]:
    from fleet.errors import FleetError

    api = compute or _compute(source.endpoint)
    try:
        items = api.guest_attributes(source.project, source.zone, source.instance, f"{NAMESPACE}/")
    except FleetError as exc:
        raise HostKeyError(
            f"cannot read the instance's host keys from guest attributes: {exc.what}",
            where=source.alias,
            hint=exc.hint or "check the Compute endpoint and credentials (gce.api_endpoint)",
        ) from None
    return parse_published(items)


def resolve(
    source: GuestKeySource, known_hosts: str | Path, name: str | None = None, compute: Compute | None = None
) -> dict[str, str]:
    """Keys to trust for the instance, known under `name` (default compute.<instance-id>)."""
    name = name or source.alias
    return trusted(name, pinned(known_hosts, name), published(source, compute), known_hosts)


def known_hosts_lines(name: str, keys: Mapping[str, str]) -> list[str]:
    """Lines for an explicit pin (what an operator adds to known_hosts after checking them)."""
    return [f"{name} {ktype} {b64}" for ktype, b64 in sorted(keys.items())]
