"""The Ray auth token and the rule that keeps ftl from sending code to an open cluster.

A token is looked for in: --token-file, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, the local cluster's token file
(when the address is the local cluster's dashboard), and for a loopback address ~/.ray/auth_token (Ray writes
one there for every local `ray.init()`: it says nothing about a remote cluster and is not sent to one). It is
sent as an Authorization header and never printed: every message ftl builds from the cluster's answers goes
through `redact`.

An open Ray dashboard lets anyone who reaches it run code on the cluster, so ftl refuses to submit to a
non-loopback address without a token or TLS (https) unless --insecure is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ftl.cluster.address import Address
from ftl.launcher.errors import FtlError

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")
_REDACTED = "***"


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for messages: '--token-file /x', '$RAY_AUTH_TOKEN', ...

    def __repr__(self) -> str:  # a token never shows up in a traceback or a debug print
        return f"Token(source={self.source!r})"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def resolve_token(address: Address, token_file: Path | None = None) -> Token | None:
    """The first token found, in the documented order; None when there is none."""
    if token_file is not None:
        return _read_token(token_file.expanduser(), f"--token-file {token_file}", required=True)
    if os.environ.get(TOKEN_ENV, "").strip():
        return Token(os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    if os.environ.get(TOKEN_PATH_ENV, "").strip():
        path = Path(os.environ[TOKEN_PATH_ENV]).expanduser()
        return _read_token(path, f"${TOKEN_PATH_ENV} ({path})", required=True)
    from ftl.cluster.address import local_cluster_at

    local = local_cluster_at(address)
    if local is not None:
        token = _read_token(Path(local.token_file), f"the local cluster's token file {local.token_file}")
        if token is not None:
            return token
    if not address.is_loopback:
        return None
    default = DEFAULT_TOKEN_FILE.expanduser()
    return _read_token(default, f"{DEFAULT_TOKEN_FILE}", required=False)


def check_safe(address: Address, token: Token | None, *, insecure: bool) -> None:
    """Refuse an open remote cluster: non-loopback, no token, no TLS, and no --insecure."""
    if address.is_loopback or token is not None or address.password or address.is_https or insecure:
        return
    raise FtlError(
        f"{address.source}: refusing to send a job to {address.url} without a token or TLS: an open Ray dashboard "
        "lets anyone who reaches it run code on the cluster; give the cluster's token (--token-file FILE or "
        f"${TOKEN_ENV}; ~/.ray/auth_token counts for loopback addresses only) or use https://, or pass --insecure "
        "if this network is trusted"
    )


def auth_headers(address: Address, token: Token | None) -> dict[str, str]:
    """Bearer token for Ray; else the URL's user:password as basic auth (a dashboard behind a proxy)."""
    if token is not None:
        return token.headers()
    if address.password:
        import base64

        pair = f"{address.username or ''}:{address.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {}


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every secret (token, URL password) replaced by ***."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, _REDACTED)
    return text


def secrets_of(address: Address, token: Token | None) -> tuple[str, ...]:
    return tuple(s for s in (token.value if token else None, address.password) if s)


def _read_token(path: Path, source: str, *, required: bool = True) -> Token | None:
    if not path.exists():
        if required:
            raise FtlError(
                f"{source}: token file not found; give the file that holds the cluster's Ray token"
            )
        return None
    if path.is_dir():
        raise FtlError(f"{source}: {path} is a directory; give the file that holds the cluster's Ray token")
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FtlError(f"{source}: cannot read the token file ({exc.__class__.__name__})") from None
    if not value:
        raise FtlError(f"{source}: the token file is empty")
    return Token(value, source)
