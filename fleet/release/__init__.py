"""A release: bundle (compose + vars + secrets, content-hash id), env file, secrets, host steps."""
