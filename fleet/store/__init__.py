"""The release store, operator side: the fleet's sealed releases, its desired release and its history in a
Cloud Storage bucket (object layout in docs/release-store.md), read by MIG-created VMs on their own.

    store = location.from_inventory(inv)            # None: the inventory has no `store:` section
    desired.publish_fleet(store, {"app": sealed}, version=..., action="rollout", actor=..., rollout_id=...)
    history.append(store, history.event(store, "deploy", "ok", actor=...))
"""
