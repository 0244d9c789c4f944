"""Where a cluster's job API listens (the Ray dashboard, http://head:8265), and whether anything answers there.

Accepted forms: http(s)://host:port, host:port, host or http://host (port 8265), https://host (port 443, a
dashboard behind a TLS proxy), ray://host:10001 (a Ray Client address: the dashboard of the same head is
assumed at port 8265). Without --address: $FTL_RAY_ADDRESS, then $RAY_ADDRESS
when it is an http(s) URL (Ray's job CLI reads it too), then the local cluster of `ftl cluster start --local`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ftl.cluster.state import LocalCluster, running_local_cluster
from ftl.launcher.errors import FtlError

DASHBOARD_PORT = 8265
ADDRESS_ENV = "FTL_RAY_ADDRESS"
REACH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Address:
    """A normalised dashboard URL (without credentials) and how it was chosen."""

    url: str  # http(s)://host:port
    host: str
    port: int
    source: str  # '--address', '$FTL_RAY_ADDRESS', 'the local cluster', ...
    username: str | None = None  # from a user:password@ URL (a proxy's basic auth)
    password: str | None = None  # kept out of every message

    @property
    def is_https(self) -> bool:
        return self.url.startswith("https://")

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)

    def __str__(self) -> str:
        return self.url


def parse_address(raw: str, source: str = "--address") -> Address:
    """Normalise one of the accepted forms to the dashboard URL; an FtlError names the option otherwise."""
    text = raw.strip()
    if not text:
        raise FtlError(f"{source}: empty address; give http://HEAD:{DASHBOARD_PORT}")
    note_ray_client = text.startswith("ray://")
    if note_ray_client:
        text = "http://" + text.removeprefix("ray://")
    elif "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise FtlError(
            f"{source}: '{_shown(raw)}' is not an address ({exc}); give http://HEAD:8265"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise FtlError(
            f"{source}: scheme '{parts.scheme}://' is not supported; give the dashboard's "
            f"http://HEAD:{DASHBOARD_PORT} (or https://)"
        )
    host = parts.hostname
    if not host:
        raise FtlError(f"{source}: '{_shown(raw)}' names no host; give http://HEAD:{DASHBOARD_PORT}")
    if note_ray_client or port is None:
        port = 443 if parts.scheme == "https" and not note_ray_client else DASHBOARD_PORT
    shown_host = f"[{host}]" if ":" in host else host
    url = urlunsplit((parts.scheme, f"{shown_host}:{port}", parts.path.rstrip("/"), "", ""))
    return Address(
        url=url, host=host, port=port, source=source, username=parts.username, password=parts.password
    )


def resolve_address(raw: str | None) -> Address:
    """--address, else the environment, else the running local cluster; else a one-line error."""
    if raw:
        return parse_address(raw, "--address")
    if os.environ.get(ADDRESS_ENV, "").strip():
        return parse_address(os.environ[ADDRESS_ENV], f"${ADDRESS_ENV}")
    ray_address = os.environ.get("RAY_ADDRESS", "").strip()
    if ray_address.startswith(("http://", "https://")):
        return parse_address(ray_address, "$RAY_ADDRESS")
    local = running_local_cluster()
    if local is not None:
        return parse_address(local.dashboard_url, "the local cluster (ftl cluster start --local)")
    raise FtlError(
        f"--address: no cluster given; pass --address http://HEAD:{DASHBOARD_PORT}, set ${ADDRESS_ENV}, or "
        "start a local one with: ftl cluster start --local"
    )


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1 (literal addresses only: a name that resolves there does not count)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_reachable(address: Address, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail in seconds when nothing listens (Ray's client would otherwise retry or hang for long)."""
    try:
        socket.create_connection((address.host, address.port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError | socket.timeout):
            reason = f"no answer within {timeout_s:g} s"
        raise FtlError(
            f"{address.source}: cannot reach the Ray dashboard at {address.url} ({reason}); check the address "
            f"(the dashboard port, default {DASHBOARD_PORT}) and that the cluster is running (ftl cluster status, "
            "or ray status on the head)"
        ) from None


def _shown(raw: str) -> str:
    """An address for messages, without a password."""
    return re.sub(r"(//|^)([^/@:\s]*):[^/@\s]*@", r"\1\2:***@", raw)


def local_cluster_at(address: Address) -> LocalCluster | None:
    """The running local cluster when `address` is its dashboard."""
    cluster = running_local_cluster()
    if cluster is None:
        return None
    local = parse_address(cluster.dashboard_url, "the local cluster")
    same_host = local.host == address.host or (local.is_loopback and address.is_loopback)
    return cluster if same_host and local.port == address.port else None
