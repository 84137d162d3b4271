"""The base rootfs recipe (fleet/local/rootfs.py) without debootstrap: mirrors, the input hash, locales."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.local import rootfs


def test_strip_locales_keeps_only_the_alias_file(tmp_path: Path) -> None:
    locale = tmp_path / "usr/share/locale"
    (locale / "fr/LC_MESSAGES").mkdir(parents=True)
    (locale / "fr/LC_MESSAGES/dpkg.mo").write_bytes(b"x" * 100)
    (locale / "locale.alias").write_text("french fr_FR.ISO-8859-1\n")
    (locale / "stray").write_text("x")
    (locale / "link").symlink_to(locale / "fr")
    rootfs.strip_locales(tmp_path)
    assert sorted(p.name for p in locale.iterdir()) == ["locale.alias"]
    assert (locale / "locale.alias").read_text().startswith("french")


def test_strip_locales_on_a_tree_without_locales(tmp_path: Path) -> None:
    rootfs.strip_locales(tmp_path)  # nothing to strip is not an error
    assert not (tmp_path / "usr").exists()


def test_the_tag_follows_the_recipe_and_the_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    a = rootfs.base_tag("http://deb.debian.org/debian")
    b = rootfs.base_tag("http://mirror.example/debian")
    assert a != b and a.startswith("fleet-local/base:trixie-")
    monkeypatch.setattr(rootfs, "RECIPE", rootfs.RECIPE + "x")
    assert rootfs.base_tag("http://deb.debian.org/debian") != a


def test_mirrors_from_both_source_formats() -> None:
    text = (
        "Types: deb\nURIs: http://deb.example/debian\nSuites: trixie\n"
        "deb http://one.example/debian bookworm main\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
    )
    assert rootfs.mirrors_from(text) == ["http://deb.example/debian", "http://one.example/debian"]
