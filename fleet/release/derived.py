"""Variables the bundle computes from others (standard library only: the on-VM agent derives them too)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping


def celery_broker_url(values: Mapping[str, str]) -> str:
    """redis[s]://<user>:<REDIS_PASSWORD>@<REDIS_HOST>:<REDIS_PORT>/<CELERY_BROKER_DB>."""
    scheme = "rediss" if values.get("REDIS_USE_SSL") == "true" else "redis"
    host = values["REDIS_HOST"]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    user = urllib.parse.quote(values.get("REDIS_USERNAME", ""), safe="")
    password = urllib.parse.quote(values["REDIS_PASSWORD"], safe="")
    return f"{scheme}://{user}:{password}@{host}:{values['REDIS_PORT']}/{values['CELERY_BROKER_DB']}"


def plugin_ssl_mode(values: Mapping[str, str]) -> str:
    """The plugin daemon accepts only disable and require: require for every mode that insists on TLS."""
    return "require" if values.get("DB_SSL_MODE") in ("require", "verify-ca", "verify-full") else "disable"


def plugin_storage_bucket(values: Mapping[str, str]) -> str:
    """Plugins live in the fleet's file bucket unless another one is named."""
    return values.get("GOOGLE_STORAGE_BUCKET_NAME", "")


def plugin_gcs_credentials(values: Mapping[str, str]) -> str:
    """The plugin daemon reaches the bucket as Dify's file storage does (empty = the VM's account)."""
    return values.get("GOOGLE_STORAGE_SERVICE_ACCOUNT_JSON_BASE64", "")


DERIVED: dict[str, Callable[[Mapping[str, str]], str]] = {
    "CELERY_BROKER_URL": celery_broker_url,
    "DB_PLUGIN_SSL_MODE": plugin_ssl_mode,
    "PLUGIN_STORAGE_OSS_BUCKET": plugin_storage_bucket,
    "PLUGIN_GCS_CREDENTIALS": plugin_gcs_credentials,
}
