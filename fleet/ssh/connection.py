"""SSH transport: a Nornir connection plugin around paramiko's client with pinned host keys.

Fabric's Connection accepts unknown host keys by default (paramiko AutoAddPolicy) and reads
~/.ssh/known_hosts; here the only trusted keys are the inventory's `known_hosts`, an unknown or
changed key is refused with the fingerprint and how to pin it, and connect failures (never commands)
are retried. Commands run through fleet.ssh.session (Fabric stays the command line: `fab`'s tasks).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fleet.errors import FleetError, HostKeyError
from fleet.ssh.session import HostConnection

if TYPE_CHECKING:
    import paramiko

    from fleet.inventory import FleetHost, Inventory
    from fleet.ssh.hostkeys import GuestKeySource, HostTrust

CONNECTION_NAME = "ssh"


class UnreachableError(FleetError):
    """The host could not be connected to (network, auth, proxy) after the configured retries."""


@dataclass(frozen=True)
class SSHParams:
    """Everything needed to open one SSH connection, derived purely from the inventory."""

    host: str  # the name paramiko connects to and looks up in known_hosts (may be an alias)
    address: str  # where a direct TCP connection goes
    port: int
    user: str
    key_file: str | None
    proxy_command: str | None
    known_hosts: str
    connect_timeout: float
    keepalive: int
    retries: int
    guest_keys: GuestKeySource | None = None  # host keys also from the instance's guest attributes

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH and paramiko name this host in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


# what the inventory memo keeps of SSHParams (guest_keys: never memoized)
MEMO_FIELDS = tuple(f for f in SSHParams.__dataclass_fields__ if f != "guest_keys")
IAP_COMMAND = ("gcloud", "compute", "start-iap-tunnel")


def _argv_value(value: object, what: str) -> str:
    """A value placed in an ssh/gcloud argv: one that starts with '-' would be read as an option
    whatever the quoting (and a newline has no business there); the inventory refuses these already."""
    text = str(value)
    if not text or text.startswith("-") or any(ord(ch) < 32 for ch in text):
        raise FleetError(
            f"invalid {what} {text!r}: it would be read as an option",
            hint="check the inventory (docs/inventory.md): names and addresses never start with '-'",
        )
    return text


def iap_proxy_command(
    instance: str, zone: str, project: str, port: int = 22, program: Sequence[str] = IAP_COMMAND
) -> str:
    """The ProxyCommand that tunnels SSH through Identity-Aware Proxy (every value quoted).

    `program` replaces `gcloud compute start-iap-tunnel` (ssh.iap_command: the local fleet's
    stand-in takes the same arguments)."""
    return shlex.join(
        [
            *program,
            _argv_value(instance, "instance name"),
            str(port),
            "--listen-on-stdin",
            f"--zone={_argv_value(zone, 'zone')}",  # flag=value: a value cannot become a flag of its own
            f"--project={_argv_value(project, 'project')}",
            "--verbosity=warning",
        ]
    )


def jump_proxy_command(jump: str, target: str, port: int) -> str:
    """`ssh -W` through a jump host; the jump host's own key is checked by OpenSSH as usual. The
    destination comes after `--`, so it can never be read as an option."""
    userhost, _, jport = _argv_value(jump, "jump host").partition(":")
    _argv_value(userhost.rpartition("@")[2], "jump host")
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    argv += ["-W", f"{_argv_value(target, 'host name')}:{int(port)}"]
    if jport:
        argv += ["-p", str(int(jport))]
    return shlex.join([*argv, "--", userhost])


def ssh_params(host: FleetHost, inv: Inventory) -> SSHParams:
    """Pure mapping from an inventory host to connection parameters (for an inventory from the memo:
    the ones this function gave when the memo was written, see memo_connections)."""
    memo = inv.connections.get(host.name)
    if memo is not None and inv.hosts.get(host.name) is host:  # the memo's own host, not a changed copy
        return SSHParams(**memo)
    from fleet.inventory.schema import CommandProxy, JumpProxy

    ssh, gce = host.settings.ssh, host.settings.gce
    # with ssh.proxy iap or guest-attribute host keys the loader has checked that the gce.* names are set
    instance, zone, project = cast(str, gce.instance), cast(str, gce.zone), cast(str, gce.project)
    proxy = ssh.proxy
    alias = ssh.host_key_alias
    port = host.port
    proxy_command: str | None = None
    name = host.hostname
    if proxy == "iap":
        name = alias or f"compute.{gce.instance_id}"
        proxy_command = iap_proxy_command(instance, zone, project, port, ssh.iap_command or IAP_COMMAND)
    elif isinstance(proxy, JumpProxy):
        proxy_command = jump_proxy_command(proxy.jump, host.hostname, port)
        name = alias or host.hostname
    elif isinstance(proxy, CommandProxy):
        proxy_command = proxy.command.replace("%h", shlex.quote(host.hostname)).replace("%p", str(port))
        name = alias or host.hostname
    elif alias:
        name = alias
    guest_keys = None
    if host_keys_mode(host) == "guest_attributes":
        from fleet.gcp.compute import endpoint_for
        from fleet.ssh.hostkeys import GuestKeySource

        guest_keys = GuestKeySource(
            endpoint_for(gce.api_endpoint), project, zone, instance, cast(str, gce.instance_id)
        )
        name = alias or guest_keys.alias
    key_file = ssh.key_file
    return SSHParams(
        host=name,
        address=host.hostname,
        port=port,
        user=host.username,
        key_file=str(inv.resolve_path(key_file)) if key_file else None,
        proxy_command=proxy_command,
        known_hosts=str(inv.known_hosts),
        connect_timeout=float(ssh.connect_timeout),
        keepalive=ssh.keepalive,
        retries=ssh.connect_retries,
        guest_keys=guest_keys,
    )


def memo_connections(inv: Inventory) -> dict[str, dict[str, Any]] | None:
    """Every host's ssh_params as JSON-able mappings, for the inventory memo (fleet/inventory/memo.py);
    None when one depends on more than the inventory's files (host keys from guest attributes)."""
    out: dict[str, dict[str, Any]] = {}
    for host in inv.hosts.values():
        params = ssh_params(host, inv)
        if params.guest_keys is not None:
            return None
        out[host.name] = {f: getattr(params, f) for f in MEMO_FIELDS}
    return out


def host_keys_mode(host: FleetHost) -> str:
    """`ssh.host_keys`: known_hosts only, or guest attributes too (the default for MIG members)."""
    return str(host.settings.ssh.host_keys or ("guest_attributes" if host.get("gce.mig") else "known_hosts"))


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _pin_hint(params: SSHParams, key: paramiko.PKey) -> str:
    line = f"{params.known_hosts_name} {key.get_name()} {key.get_base64()}"
    return (
        f"verify the fingerprint out of band (the instance's console or guest attributes), then pin it "
        f"by adding this line to {params.known_hosts}:\n    {line}"
    )


def _reject_policy() -> Any:
    import paramiko

    class RejectUnknown(paramiko.MissingHostKeyPolicy):
        """Never trust on first use; a revoked key, or one only a CA line vouches for, says so."""

        def __init__(self, params: SSHParams, trust: HostTrust) -> None:
            self.params = params
            self.trust = trust

        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            revoked = self.trust.revoked_by(key.get_base64())
            if revoked is not None:
                raise self.trust.revoked_error(revoked, key.get_name(), fingerprint(key))
            if self.trust.authorities:
                hint = _pin_hint(self.params, key)
                raise self.trust.authority_error(key.get_name(), fingerprint(key), hint)
            raise HostKeyError(
                f"unknown host key {key.get_name()} {fingerprint(key)} (not in {self.params.known_hosts})",
                where=hostname,
                hint=_pin_hint(self.params, key),
            )

    return RejectUnknown


_KEYS_LOCK = threading.Lock()
_KEYS: dict[tuple[str, int, int], Any] = {}


def _private_key(path: str) -> paramiko.PKey | None:
    """The private key at `path`, parsed once per process (per file version); None when paramiko cannot
    read it unaided (missing, encrypted, unknown format): then it is given the path and says why.

    Given only `key_filename`, paramiko parses the file once per connection and per key class it tries
    (RSA, then ECDSA, then Ed25519 for an Ed25519 key): three parses per host."""
    import paramiko

    if os.path.exists(f"{path}-cert.pub"):
        return None  # paramiko loads the certificate beside the key only when given the path
    try:
        st = os.stat(path)
    except OSError:
        return None
    cache_key = (path, st.st_mtime_ns, st.st_size)
    with _KEYS_LOCK:
        if cache_key in _KEYS:
            return _KEYS[cache_key]
    try:
        key: paramiko.PKey | None = paramiko.PKey.from_path(path)
    except (paramiko.SSHException, OSError, ValueError, TypeError):
        key = None
    with _KEYS_LOCK:
        _KEYS[cache_key] = key
    return key


# AES-GCM first (then paramiko's own order): an AEAD cipher needs no separate MAC, and paramiko checks
# MACs with a byte-by-byte Python loop (util.constant_time_bytes_eq), a tenth of a handshake's client
# CPU. Every OpenSSH since 6.2 offers these; a server that does not falls through to the rest.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _transport_factory(sock: Any, **kwargs: Any) -> paramiko.Transport:
    import paramiko

    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        # a command is several small packets in a row (open, exec, EOF): with Nagle on, each waits for
        # the server's delayed ACK of the one before, ~40 ms a command; OpenSSH sets this too
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    available = tuple(options.ciphers)
    first = tuple(c for c in PREFERRED_CIPHERS if c in available)
    options.ciphers = first + tuple(c for c in available if c not in first)
    return transport


def _proxy_socket(params: SSHParams) -> Any:
    """The socket-like object the SSH connection runs over: the proxy command's pipes (tokens such
    as %h expanded as OpenSSH and Fabric do), a TCP socket we open when the key is pinned under an
    alias (so paramiko looks the alias up), or None for paramiko's own socket to `host`."""
    import io

    import paramiko

    if params.proxy_command is not None:
        config = paramiko.SSHConfig()
        config.parse(io.StringIO(f"Host {params.host}\n    ProxyCommand {params.proxy_command}"))
        return paramiko.ProxyCommand(config.lookup(params.host)["proxycommand"])
    if params.host != params.address:
        return socket.create_connection((params.address, params.port), timeout=params.connect_timeout)
    return None


def open_connection(params: SSHParams, *, sleep: Any = time.sleep) -> HostConnection:
    """Open (with bounded retries on connect failures only) an SSH connection with pinned keys."""
    import paramiko

    from fleet.ssh import hostkeys

    resolved: dict[str, str] | None = None
    if params.guest_keys is not None:
        resolved = hostkeys.resolve(params.guest_keys, params.known_hosts, params.known_hosts_name)
    elif not Path(params.known_hosts).exists():
        raise HostKeyError(
            f"no known_hosts file at {params.known_hosts}",
            where=params.known_hosts_name,
            hint="pin the fleet's host keys there (the local fleet writes it for you: `fab local.up`)",
        )
    # read known_hosts ourselves: paramiko's parser fails on @revoked / @cert-authority lines
    trust = hostkeys.host_trust(params.known_hosts, params.known_hosts_name, resolved)
    policy_cls = _reject_policy()
    pkey = _private_key(params.key_file) if params.key_file else None
    attempts = params.retries + 1
    last: Exception | None = None
    for attempt in range(attempts):
        connect_kwargs: dict[str, Any] = {
            "hostname": params.host,
            "port": params.port,
            "username": params.user,
            "timeout": params.connect_timeout,
            "allow_agent": False,
            "look_for_keys": False,
            "banner_timeout": params.connect_timeout,
            "auth_timeout": params.connect_timeout,
            "transport_factory": _transport_factory,
        }
        if pkey is not None:
            connect_kwargs["pkey"] = pkey
        elif params.key_file:  # let paramiko read it and report why it cannot
            connect_kwargs["key_filename"] = [params.key_file]
        # a clean client: no ~/.ssh/known_hosts, no agent; the inventory's pinned keys and nothing else
        client = paramiko.SSHClient()
        # the pinned keys (with guest keys: the published ones plus explicit pins, checked against them)
        for key_type, b64 in trust.keys.items():
            try:
                key = paramiko.PKey.from_type_string(key_type, base64.b64decode(b64))
            except (paramiko.SSHException, ValueError):
                continue  # a key type paramiko cannot use (as its own known_hosts parser skips them)
            client.get_host_keys().add(params.known_hosts_name, key_type, key)
        client.set_missing_host_key_policy(policy_cls(params, trust))
        try:
            sock = _proxy_socket(params)
            if sock is not None:
                connect_kwargs["sock"] = sock
            client.connect(**connect_kwargs)
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            revoked = trust.revoked_by(exc.key.get_base64())
            if revoked is not None:
                raise trust.revoked_error(revoked, exc.key.get_name(), fingerprint(exc.key)) from None
            raise HostKeyError(
                f"host key MISMATCH: offered {exc.key.get_name()} {fingerprint(exc.key)}, "
                f"pinned {exc.expected_key.get_name()} {fingerprint(exc.expected_key)}",
                where=params.known_hosts_name,
                hint="the host was rebuilt, or someone is in the middle: verify the new key out of band, "
                f"then replace the line for {params.known_hosts_name} in {params.known_hosts}",
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise UnreachableError(
                f"authentication failed for user {params.user}: {exc}",
                where=params.known_hosts_name,
                hint=f"check ssh.key_file ({params.key_file}) and that its public key is authorized",
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            last = exc
            if attempt + 1 < attempts:
                sleep(min(0.5 * 2**attempt, 5.0))
            continue
        if params.keepalive:
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(params.keepalive)
        return HostConnection(client)
    raise UnreachableError(
        f"cannot connect to {params.address}:{params.port} after {attempts} attempt(s): "
        f"{type(last).__name__}: {last}",
        where=params.known_hosts_name,
        hint="check that the host is up and reachable (proxy, firewall, sshd), or leave it out with --hosts",
    )


class SshConnectionPlugin:
    """Nornir connection plugin: one SSH connection per host, reused by every task of a run."""

    def __init__(self) -> None:
        self.connection: HostConnection | None = None

    def open(
        self,
        hostname: str | None,
        username: str | None,
        password: str | None,
        port: int | None,
        platform: str | None,
        extras: dict[str, Any] | None = None,
        configuration: Any = None,
    ) -> None:
        params: SSHParams = (extras or {})["params"]
        self.connection = open_connection(params)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def register() -> None:
    from nornir.core.plugins.connections import ConnectionPluginRegister

    if CONNECTION_NAME not in ConnectionPluginRegister.available:
        ConnectionPluginRegister.register(CONNECTION_NAME, SshConnectionPlugin)
