"""Local stand-ins for Google APIs that speak their wire formats; they know nothing of the fleet."""
