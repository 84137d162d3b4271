"""The Cloud Storage stand-in: the real client works against it, preconditions hold, data survives a
restart, and plain urllib (the on-VM agent) reads objects and their generation."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from standins.errors import StandinError
from standins.storage import StorageServer


def _client(endpoint: str) -> storage.Client:
    return storage.Client(
        project="p", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return bytes(resp.read())


def test_objects_survive_a_restart_on_the_same_root(tmp_path: Path) -> None:
    server = StorageServer(tmp_path / "root").start()
    try:
        server.create_bucket("bkt")
        server.create_bucket("bkt")  # a second create is fine
        _client(server.endpoint).bucket("bkt").blob("a/b.json").upload_from_string(b'{"x": 1}')
        server.stop()
        server.start()
        assert _client(server.endpoint).bucket("bkt").blob("a/b.json").download_as_bytes() == b'{"x": 1}'
    finally:
        server.stop()


def test_generation_preconditions_are_enforced(gcs_server: StorageServer, gcs_bucket: str) -> None:
    blob = _client(gcs_server.endpoint).bucket(gcs_bucket).blob("desired.json")
    blob.upload_from_string(b"1", if_generation_match=0)
    with pytest.raises(exceptions.PreconditionFailed):
        blob.upload_from_string(b"2", if_generation_match=0)
    blob.reload()
    first = blob.generation
    blob.upload_from_string(b"3", if_generation_match=first)
    with pytest.raises(exceptions.PreconditionFailed):  # a writer that read before the last write
        blob.upload_from_string(b"4", if_generation_match=first)
    assert blob.download_as_bytes() == b"3"


def test_plain_urllib_reads_bytes_and_generation(gcs_server: StorageServer, gcs_bucket: str) -> None:
    name = "fleets/f/releases/r1/manifest.json"
    blob = _client(gcs_server.endpoint).bucket(gcs_bucket).blob(name)
    blob.upload_from_string(b"hello")
    blob.reload()
    ep, quoted = gcs_server.endpoint, urllib.parse.quote(name, safe="")
    assert _get(f"{ep}/download/storage/v1/b/{gcs_bucket}/o/{quoted}?alt=media") == b"hello"
    assert _get(f"{ep}/storage/v1/b/{gcs_bucket}/o/{quoted}?alt=media") == b"hello"
    meta = json.loads(_get(f"{ep}/storage/v1/b/{gcs_bucket}/o/{quoted}"))
    assert meta["name"] == name and int(meta["generation"]) == blob.generation
    with pytest.raises(urllib.error.HTTPError) as exc:
        _get(f"{ep}/storage/v1/b/{gcs_bucket}/o/{urllib.parse.quote('nope', safe='')}?alt=media")
    assert exc.value.code == 404


def test_a_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from importlib import util

    monkeypatch.setattr(util, "find_spec", lambda name: None)
    with pytest.raises(StandinError, match="not installed") as exc:
        StorageServer(tmp_path / "root").start()
    assert "local" in exc.value.render()
