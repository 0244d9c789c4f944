"""Secrets stay out of everything ftl writes: recipes, run directories, logs, manifests, job files.

Two kinds: passwords inside URLs (`postgresql://user:PASSWORD@db/x`, `s3://KEY:SECRET@bucket`) and the values
of secret environment variables (HF_TOKEN, WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, RAY_AUTH_TOKEN, ..., anything
named *_TOKEN, *_API_KEY, *_SECRET, *_PASSWORD, *_ACCESS_KEY, *_CONNECTION_STRING, *_SECRET_ACCESS_KEY). A recipe
holding either is refused when it is loaded (the recipe is written to the run directory, printed by `ftl check`
and shipped with jobs, and goes to the trackers as their parameters); `redact` masks both in text ftl writes
from elsewhere (error lines, the command line in the manifest, a tracking URI in trackers.json).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

MASK = "***"
# scheme://user:password@host -- the password is group 1
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^/\s@]+)@")
# not *_PATH, *_FILE; ACCESS_KEY and CONNECTION_STRING: cloud artifact stores (AZURE_STORAGE_ACCESS_KEY, ...)
_SECRET_NAME = re.compile(
    r"(TOKEN|API_KEY|SECRET|PASSWORD|PASSWD|ACCESS_KEY|CONNECTION_STRING)$|SECRET_ACCESS_KEY"
)
_MIN_LENGTH = 8  # shorter values ("1", "true") are settings, not secrets, and would mask innocent text


def secret_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Secret environment variables (name -> value) of this process."""
    environ = os.environ if environ is None else environ
    return {
        name: value.strip()
        for name, value in environ.items()
        if _SECRET_NAME.search(name.upper()) and len(value.strip()) >= _MIN_LENGTH
    }


def url_password(text: str) -> str | None:
    """The first password written into a URL in `text`, or None."""
    match = _URL_PASSWORD.search(text)
    return match.group(1) if match else None


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with URL passwords and the values of secret environment variables replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: m.group(0).replace(f":{m.group(1)}@", f":{MASK}@"), text)
    for value in sorted(secret_env(environ).values(), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def find_secret(data: Any, prefix: tuple = ()) -> tuple[tuple, str] | None:
    """(key path, why) of the first secret in a recipe's data, or None."""
    env = secret_env()
    for path, value in _strings(data, prefix):
        if url_password(value):
            return path, (
                "the URL holds a password, which would be written to the run directory, its logs and any job's "
                "files; remove it and give it through the environment (PGPASSWORD or ~/.pgpass for PostgreSQL, "
                "AWS_SECRET_ACCESS_KEY / GOOGLE_APPLICATION_CREDENTIALS for cloud storage)"
            )
        for name, secret in env.items():
            if secret in value:
                return path, (
                    f"holds the value of ${name}, which would be written to the run directory and its logs; "
                    "remove it (ftl and the libraries read secrets from the environment)"
                )
    return None


def _strings(data: Any, prefix: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(value, (*prefix, key))
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            yield from _strings(value, (*prefix, index))
    elif isinstance(data, str):
        yield prefix, data
