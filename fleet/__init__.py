"""compose-fleet: roll one Docker Compose stack across a fleet of hosts over SSH."""

__version__ = "0.1.0"
