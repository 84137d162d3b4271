"""known_hosts as the connection reads it: pins (exact and hashed names), @revoked keys removed from
trust and named by line, @cert-authority lines recognised (and ignored) by host pattern."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time
from pathlib import Path

import pytest

from fleet.errors import HostKeyError
from fleet.ssh.hostkeys import host_matches, host_trust, parse_lines


def blob(key_type: str, fill: int) -> str:
    raw = struct.pack(">I", len(key_type)) + key_type.encode() + struct.pack(">I", 32) + bytes([fill]) * 32
    return base64.b64encode(raw).decode()


ED1, ED2, ECDSA = blob("ssh-ed25519", 1), blob("ssh-ed25519", 2), blob("ecdsa-sha2-nistp256", 3)
NAME = "[127.0.0.1]:2201"


def hashed(name: str, salt: bytes = b"s" * 20) -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def write(tmp_path: Path, *lines: str) -> Path:
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(f"{line}\n" for line in lines))
    return kh


def test_parse_lines_keeps_markers_and_line_numbers() -> None:
    text = (
        f"# c\n\n@revoked * ssh-ed25519 {ED1}\n{NAME} ssh-ed25519 {ED2}\n"
        f"@cert-authority *.x ssh-ed25519 {ED1}\nbad\n"
    )
    parsed = [(x.lineno, x.marker, x.hosts) for x in parse_lines(text)]
    assert parsed == [(3, "revoked", "*"), (4, None, NAME), (5, "cert-authority", "*.x")]


@pytest.mark.parametrize(
    ("hosts", "patterns", "expected"),
    [
        (NAME, False, True),
        (f"a,{NAME}", False, True),
        ("[127.0.0.1]:*", False, False),  # pins: exact names only (as before)
        ("[127.0.0.1]:*", True, True),
        ("[127.0.0.1]:220?", True, True),
        ("[127.0.0.2]:*", True, False),
        ("*,![127.0.0.1]:2201", True, False),  # negation wins
        ("*", True, True),
        (hashed(NAME), False, True),
        (hashed("other"), False, False),
        ("|1|bm90|bm90", False, False),
    ],
)
def test_host_matches(hosts: str, patterns: bool, expected: bool) -> None:
    assert host_matches(hosts, NAME, patterns=patterns) is expected


def test_pins_from_exact_and_hashed_names(tmp_path: Path) -> None:
    kh = write(
        tmp_path,
        f"{hashed(NAME)} ecdsa-sha2-nistp256 {ECDSA}",
        f"{NAME} ssh-ed25519 {ED1}",
        f"x ssh-ed25519 {ED2}",
    )
    trust = host_trust(kh, NAME)
    assert trust.keys == {"ecdsa-sha2-nistp256": ECDSA, "ssh-ed25519": ED1}
    assert trust.revoked == () and trust.authorities == ()


def test_revoked_key_is_never_trusted_and_its_line_is_named(tmp_path: Path) -> None:
    kh = write(
        tmp_path,
        f"{NAME} ssh-ed25519 {ED1}",
        f"{NAME} ecdsa-sha2-nistp256 {ECDSA}",
        f"@revoked * ssh-ed25519 {ED1}",
    )
    trust = host_trust(kh, NAME)
    assert trust.keys == {"ecdsa-sha2-nistp256": ECDSA}
    line = trust.revoked_by(ED1)
    assert line is not None and line.lineno == 3 and trust.revoked_by(ED2) is None
    err = trust.revoked_error(line, "ssh-ed25519", "SHA256:x")
    assert f"{kh}:3" in err.render() and "REVOKED" in err.what and err.where == NAME and err.hint


def test_revoked_applies_to_guest_attribute_keys_too(tmp_path: Path) -> None:
    kh = write(tmp_path, f"@revoked compute.1 ssh-ed25519 {ED1}")
    trust = host_trust(kh, "compute.1", {"ssh-ed25519": ED1, "ecdsa-sha2-nistp256": ECDSA})
    assert trust.keys == {"ecdsa-sha2-nistp256": ECDSA}


def test_revoked_for_another_host_only(tmp_path: Path) -> None:
    kh = write(tmp_path, f"{NAME} ssh-ed25519 {ED1}", f"@revoked other ssh-ed25519 {ED1}")
    trust = host_trust(kh, NAME)
    assert trust.keys == {"ssh-ed25519": ED1} and trust.revoked_by(ED1) is None


def test_cert_authority_lines_recognised_by_pattern(tmp_path: Path) -> None:
    kh = write(tmp_path, f"@cert-authority [127.0.0.1]:* ssh-ed25519 {ED1}", f"other ssh-ed25519 {ED2}")
    trust = host_trust(kh, NAME)
    assert trust.keys == {} and [a.lineno for a in trust.authorities] == [1]
    err = trust.authority_error("ssh-ed25519", "SHA256:x", "pin it")
    assert "@cert-authority" in err.what and f"{kh}:1" in err.what and "not supported" in err.what
    assert host_trust(kh, "elsewhere").authorities == ()


def test_malformed_pin_for_this_host_named_others_ignored(tmp_path: Path) -> None:
    kh = write(tmp_path, "other ssh-ed25519 not-base64!", f"{NAME} ssh-ed25519 {ED1}")
    assert host_trust(kh, NAME).keys == {"ssh-ed25519": ED1}
    kh = write(tmp_path, f"{NAME} ssh-ed25519 not-base64!")
    with pytest.raises(HostKeyError, match=f"{kh}:1"):
        host_trust(kh, NAME)


def test_missing_file_trusts_nothing(tmp_path: Path) -> None:
    assert host_trust(tmp_path / "none", NAME).keys == {}


def test_known_hosts_parsed_once_while_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.ssh import hostkeys

    kh = tmp_path / "known_hosts"
    kh.write_text(f"{NAME} ssh-ed25519 {ED1}\n")
    old = time.time() - 60
    os.utime(kh, (old, old))
    calls: list[str] = []
    real = hostkeys.parse_lines
    monkeypatch.setattr(hostkeys, "parse_lines", lambda text: calls.append(text) or real(text))
    for _ in range(3):
        assert host_trust(kh, NAME).keys == {"ssh-ed25519": ED1}
    assert len(calls) == 1  # one parse for three hosts
    kh.write_text(f"@revoked {NAME} ssh-ed25519 {ED1}\n")  # changed: size and mtime move
    assert host_trust(kh, NAME).keys == {}
    assert len(calls) == 2


def test_known_hosts_changed_just_now_is_never_cached(tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{NAME} ssh-ed25519 {ED1}\n")
    assert host_trust(kh, NAME).keys == {"ssh-ed25519": ED1}
    stamp = kh.stat().st_mtime_ns
    kh.write_text(f"{NAME} ssh-ed25519 {ED2}\n")  # same size, possibly the same clock tick
    os.utime(kh, ns=(stamp, stamp))
    assert host_trust(kh, NAME).keys == {"ssh-ed25519": ED2}
