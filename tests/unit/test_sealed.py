"""A sealed release (what the store holds): no secret value in it, and unsealing with the same values
gives back the very same files, so the same release id."""

from __future__ import annotations

import json

import pytest

from fleet.commands.release import ENV_FILE
from fleet.errors import FleetError
from fleet.release import bundle, sealed
from tests.unit.test_bundle import META, SECRETS, VARS

REFS = {k: f"projects/p/secrets/{k.lower().replace('_', '-')}/versions/3" for k in SECRETS}


@pytest.fixture(scope="module")
def rendered() -> bundle.Bundle:
    source = bundle.load_source(bundle.COMPOSE_DIR)
    variables = {**VARS, **bundle.host_variables("/opt/fleet/dify", ["app", "beat"], None)}
    return bundle.render(source, variables, SECRETS, META, where="app-1")


def seal(b: bundle.Bundle, refs: dict[str, str] = REFS) -> sealed.Sealed:
    return sealed.seal(
        {p: (f.data, f.mode) for p, f in b.files.items()},
        b.env,
        b.secret_keys,
        refs,
        release_id=b.release_id,
        version=b.version,
        services=b.services,
        disabled_services=b.disabled_services,
        roles=["app", "beat"],
    )


def test_no_secret_value_is_stored_and_unsealing_gives_the_same_files(rendered: bundle.Bundle) -> None:
    s = seal(rendered)
    stored = s.manifest_bytes() + s.archive
    for value in [*SECRETS.values(), rendered.env["CELERY_BROKER_URL"]]:
        for form in {value, json.dumps(value)[1:-1]}:
            assert form.encode() not in stored, form
    assert sealed.secret_refs(s.manifest) == REFS
    files = sealed.unseal(sealed.check_manifest(json.loads(s.manifest_bytes())), s.archive, SECRETS)
    assert files == {p: (f.data, f.mode) for p, f in rendered.files.items()}
    # so the id a VM computes is the operator's (CELERY_BROKER_URL was derived again on the VM)
    assert bundle.release_id_of({p: bundle.SourceFile(*v) for p, v in files.items()}) == rendered.release_id


def test_a_changed_or_missing_secret_is_an_error_not_another_release(rendered: bundle.Bundle) -> None:
    s = seal(rendered)
    with pytest.raises(FleetError, match=rf"differ from the manifest: {ENV_FILE}") as exc:
        sealed.unseal(s.manifest, s.archive, {**SECRETS, "DB_PASSWORD": "rotated"})
    assert "rotated" not in exc.value.render() and "secret version" in exc.value.render()
    with pytest.raises(FleetError, match="no value for secrets DB_PASSWORD"):
        sealed.unseal(s.manifest, s.archive, {k: v for k, v in SECRETS.items() if k != "DB_PASSWORD"})


def test_a_secret_outside_secret_manager_cannot_be_sealed(rendered: bundle.Bundle) -> None:
    refs = {k: v for k, v in REFS.items() if k not in ("SANDBOX_API_KEY", "SECRET_KEY")}
    with pytest.raises(FleetError, match="SANDBOX_API_KEY, SECRET_KEY are not in Secret Manager") as exc:
        seal(rendered, refs)
    assert "secrets.push" in exc.value.render()


def test_a_damaged_archive_is_refused(rendered: bundle.Bundle) -> None:
    s = seal(rendered)
    with pytest.raises(FleetError, match="not a release archive"):
        sealed.unseal(s.manifest, b"garbage" * 100, SECRETS)
    files = sealed.unpack(s.archive)
    path = next(p for p in files if p.endswith(".yaml"))
    files[path] = (files[path][0] + b"# tampered\n", files[path][1])
    with pytest.raises(FleetError, match=f"differ from the manifest: {path}"):
        sealed.unseal(s.manifest, sealed.pack(files), SECRETS)


def test_pack_refuses_to_unpack_escaping_paths() -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../etc/passwd")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(FleetError, match="unsafe path"):
        sealed.unpack(buf.getvalue())
