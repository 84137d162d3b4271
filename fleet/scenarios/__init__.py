"""Rehearsals on the local fleet: the demo, the load generator, the alert path, self-heal."""
