"""SSH: connections (IAP proxy, pinned host keys) and the parallel runner (results as data)."""
