"""Host keys from Compute guest attributes, pinned under `compute.<instance-id>`. Never trust on first use.

A GCE guest environment publishes the instance's SSH host keys as guest attributes in the
`hostkeys/` namespace (key = key type, value = base64 of the public key). Reading them through the
Compute API is an authenticated channel, independent of the SSH connection it protects; a MIG that
recreates an instance therefore needs no one to re-pin its new key.

The inventory's `known_hosts` still wins where it speaks: a key pinned there under
`compute.<instance-id>` must agree with what the instance publishes (a disagreement is refused: it
is either a stale pin or somebody in the middle), and with nothing published, an explicit pin is
the only way in. With neither, the connection is refused with how to fix it.
"""

from __future__ import annotations

import base64
import binascii
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import HostKeyError

if TYPE_CHECKING:
    from fleet.gce import Compute

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
    from fleet.gce import Compute

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
