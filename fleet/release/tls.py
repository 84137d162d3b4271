"""TLS to the data layer: the CA files a release carries and the settings that must agree with them.

Memorystore's in-transit encryption and Cloud SQL's server certificates are signed by per-instance CAs
that no system trust store holds, so verifying them needs the CA inside the containers. A CA is a file
under compose/certs/: it goes into every release (content-hashed like the compose file, so a new CA is
a new release, and a VM's agent gets it with the release) and is mounted read-only at /fleet/certs.
The settings name it by that path; this module refuses a path that is not there and a verification
mode that has no CA to verify with, before anything reaches a host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from fleet.errors import FleetError

CERT_DIR = "certs"  # in compose/ and in each release
MOUNT = "/fleet/certs"  # where the services see it
CA_SETTINGS = ("REDIS_SSL_CA_CERTS", "DB_SSL_ROOT_CERT")
_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PEM_MARK = b"-----BEGIN CERTIFICATE-----"


def check(values: Mapping[str, str], files: Mapping[str, object], where: str | None = None) -> None:
    """CA paths point at certificates the release carries; verification modes have a CA."""
    for key in CA_SETTINGS:
        path = values.get(key, "")
        if not path:
            continue
        name = path.removeprefix(f"{MOUNT}/")
        if name == path or not _FILE_RE.fullmatch(name):
            raise FleetError(
                f"{key}={path!r} is not a file under {MOUNT}/",
                where=where,
                hint=f"put the CA in compose/{CERT_DIR}/NAME.pem and set {key}: {MOUNT}/NAME.pem",
            )
        source = files.get(f"{CERT_DIR}/{name}")
        if source is None:
            raise FleetError(
                f"{key}={path} but compose/{CERT_DIR}/{name} does not exist",
                where=where,
                hint=f"copy the instance's server CA (PEM) to compose/{CERT_DIR}/{name}",
            )
        if PEM_MARK not in getattr(source, "data", b""):
            raise FleetError(f"compose/{CERT_DIR}/{name} holds no PEM certificate", where=where)
    if (
        values.get("REDIS_USE_SSL") == "true"
        and values.get("REDIS_SSL_CERT_REQS") == "CERT_REQUIRED"
        and not values.get("REDIS_SSL_CA_CERTS")
    ):
        raise FleetError(
            "REDIS_SSL_CERT_REQS=CERT_REQUIRED needs REDIS_SSL_CA_CERTS "
            "(Memorystore's CA is in no system trust store)",
            where=where,
            hint=f"gcloud redis instances describe INSTANCE --format='value(serverCaCerts[0].cert)' > "
            f"compose/{CERT_DIR}/memorystore-ca.pem, then REDIS_SSL_CA_CERTS: {MOUNT}/memorystore-ca.pem",
        )
    if values.get("DB_SSL_MODE") in ("verify-ca", "verify-full") and not values.get("DB_SSL_ROOT_CERT"):
        raise FleetError(
            f"DB_SSL_MODE={values['DB_SSL_MODE']} needs DB_SSL_ROOT_CERT",
            where=where,
            hint=f"gcloud sql instances describe INSTANCE --format='value(serverCaCert.cert)' > "
            f"compose/{CERT_DIR}/cloudsql-ca.pem (both instances' CAs in one file when they differ), "
            f"then DB_SSL_ROOT_CERT: {MOUNT}/cloudsql-ca.pem",
        )
