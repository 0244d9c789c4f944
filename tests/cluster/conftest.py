"""Cluster tests without a cluster: each starts with no token, address or storage from the machine."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(autouse=True)
def _no_cluster_settings(tmp_path, monkeypatch):
    """No token, address or storage from the machine; a private state dir and home (no ~/.ray/auth_token)."""
    for name in (
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
        "RAY_ADDRESS",
        "RAY_API_SERVER_ADDRESS",
        "FTL_RAY_ADDRESS",
        "FTL_STORAGE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FTL_CLUSTER_DIR", str(tmp_path / "cluster-state"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]
