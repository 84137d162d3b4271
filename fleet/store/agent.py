"""The on-VM agent's zipapp in the store, content-addressed; `agent/current` names the one a new VM's
startup script installs (so a template never has to change for a new agent)."""

from __future__ import annotations

import contextlib
import hashlib

from fleet.store.location import Store

CURRENT = "agent/current"


def upload_agent(store: Store, pyz: bytes) -> str:
    """Upload the zipapp (once per content) and point agent/current at it; its object name."""
    from google.api_core import exceptions

    rel = f"agent/fleet-agent-{hashlib.sha256(pyz).hexdigest()[:16]}.pyz"
    blob = store.blob(rel)
    with contextlib.suppress(exceptions.PreconditionFailed):  # the same content is there already
        store.call(
            "upload the agent",
            lambda: blob.upload_from_string(pyz, content_type="application/zip", if_generation_match=0),
            rel,
        )
    current = store.blob(CURRENT)
    current.cache_control = "no-store"
    name = store.name(rel)
    store.call(
        "point agent/current",
        lambda: current.upload_from_string(name + "\n", content_type="text/plain"),
        CURRENT,
    )
    return name
