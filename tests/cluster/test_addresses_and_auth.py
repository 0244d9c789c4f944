"""Cluster addresses, the rule against open remote clusters, token sources and redaction."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ftl.cluster.address import is_loopback, parse_address, resolve_address
from ftl.cluster.auth import Token, check_safe, redact, resolve_token
from ftl.cluster.client import Connection
from ftl.launcher.errors import FtlError
from tests.cluster.conftest import free_port
from tests.conftest import REPO, fails

TEMPLATES = REPO / "cluster" / "templates"
PLANTED = "planted-secret-token-7f3a9c2e51"


# ---- addresses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("http://head:8265", "http://head:8265"),
        ("http://head:8265/", "http://head:8265"),
        ("head:9000", "http://head:9000"),
        ("head", "http://head:8265"),
        ("ray://head:10001", "http://head:8265"),
        ("https://ray.example.org", "https://ray.example.org:443"),
        ("https://ray.example.org:8443", "https://ray.example.org:8443"),
        ("http://[::1]:8265", "http://[::1]:8265"),
        ("127.0.0.1:8265", "http://127.0.0.1:8265"),
    ],
)
def test_address_forms_become_the_dashboard_url(raw, url):
    assert parse_address(raw).url == url


def test_address_credentials_are_kept_out_of_the_url():
    address = parse_address("http://alice:s3cret-pass@head:8265")
    assert address.url == "http://head:8265" and address.password == "s3cret-pass"
    assert "s3cret" not in str(address)


@pytest.mark.parametrize("raw", ["ftp://head:21", "", "http://:8265", "http://head:99999"])
def test_bad_addresses_are_one_line_errors(raw):
    with pytest.raises(FtlError, match="--address"):
        parse_address(raw)


def test_default_address_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FTL_RAY_ADDRESS", "head-a:8265")
    assert resolve_address(None).url == "http://head-a:8265"
    monkeypatch.delenv("FTL_RAY_ADDRESS")
    monkeypatch.setenv("RAY_ADDRESS", "http://head-b:8265")
    assert resolve_address(None).url == "http://head-b:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address for ray.init, not a dashboard
    with pytest.raises(FtlError, match="no cluster given.*ftl cluster start --local"):
        resolve_address(None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("head", False),
        ("localhost.example.org", False),
    ],
)
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


# ---- auth -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "token", "insecure", "refused"),
    [
        ("http://127.0.0.1:8265", None, False, False),
        ("http://localhost:8265", None, False, False),
        ("http://gpu-head:8265", None, False, True),
        ("http://gpu-head:8265", Token("t" * 32, "test"), False, False),
        ("https://gpu-head:8265", None, False, False),
        ("http://gpu-head:8265", None, True, False),
        ("http://user:pw12@gpu-head:8265", None, False, False),  # basic auth through a proxy
    ],
)
def test_open_remote_clusters_are_refused_unless_insecure(raw, token, insecure, refused):
    address = parse_address(raw)
    if refused:
        with pytest.raises(FtlError, match="run code on the cluster.*--insecure"):
            check_safe(address, token, insecure=insecure)
    else:
        check_safe(address, token, insecure=insecure)


def test_submit_refuses_an_open_remote_cluster_before_any_network(capsys, classification_recipe):
    default = Path(os.environ["HOME"]) / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("a-local-ray-token-that-means-nothing-remotely")
    message = fails(
        capsys, ["submit", str(classification_recipe), "--address", "http://gpu-head.invalid:8265"]
    )
    assert "refusing" in message and "run code" in message and "--insecure" in message


def test_recipe_and_space_errors_come_before_any_network(capsys, classification_recipe):
    port = free_port()  # nothing listens: a message about the cluster would mean ftl went there first
    message = fails(
        capsys,
        ["submit", str(classification_recipe), "train.lerning_rate=1", "--address", f"127.0.0.1:{port}"],
    )
    assert "lerning_rate" in message
    bad_space = "tune={space: {train.batch_size: [16, many]}}"
    message = fails(
        capsys, ["submit", str(classification_recipe), bad_space, "--tune", "--address", f"127.0.0.1:{port}"]
    )
    assert "train.batch_size" in message and "cannot reach" not in message
    message = fails(
        capsys, ["submit", str(classification_recipe), "--tune", "--address", f"127.0.0.1:{port}"]
    )
    assert "no tune.space" in message


def test_nothing_listening_fails_in_seconds(capsys, classification_recipe):
    port = free_port()
    started = time.monotonic()
    message = fails(capsys, ["submit", str(classification_recipe), "--address", f"http://127.0.0.1:{port}"])
    assert time.monotonic() - started < 15
    assert "cannot reach the Ray dashboard" in message and str(port) in message
    message = fails(capsys, ["jobs", "--address", f"127.0.0.1:{port}"])
    assert "cannot reach" in message


def test_token_sources_in_order(tmp_path, monkeypatch):
    address = parse_address("http://gpu-head:8265")
    assert resolve_token(address) is None
    default = Path(os.environ["HOME"]) / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("from-default-file\n")
    assert resolve_token(parse_address("http://127.0.0.1:8265")).value == "from-default-file"
    assert resolve_token(address) is None  # Ray's local default token is never sent to a remote cluster
    path_file = tmp_path / "path-token"
    path_file.write_text("from-path-env")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path_file))
    assert resolve_token(address).value == "from-path-env"
    assert "from-default-file" not in repr(resolve_token(address))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert resolve_token(address).value == "from-env"
    flag = tmp_path / "flag-token"
    flag.write_text("from-flag\n")
    token = resolve_token(address, flag)
    assert token.value == "from-flag" and "--token-file" in token.source
    assert "from-flag" not in repr(token)
    with pytest.raises(FtlError, match="--token-file .*not found"):
        resolve_token(address, tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(FtlError, match="empty"):
        resolve_token(address, tmp_path / "empty")


def test_redaction_and_auth_errors_never_show_the_token():
    from ray.exceptions import AuthenticationError

    assert redact(f"bad header Bearer {PLANTED} sent", PLANTED) == "bad header Bearer *** sent"
    address = parse_address("http://127.0.0.1:8265")
    rejected = Connection(address, Token(PLANTED, "$RAY_AUTH_TOKEN"), None).translate(
        AuthenticationError(f"Authentication failed: Forbidden: Invalid authentication token {PLANTED}")
    )
    assert "auth" in str(rejected) and "rejected the token from $RAY_AUTH_TOKEN" in str(rejected)
    assert PLANTED not in str(rejected)
    missing = Connection(address, None, None).translate(
        AuthenticationError("Authentication required: Unauthorized: Missing authentication token")
    )
    assert "requires a token" in str(missing) and "--token-file" in str(missing)
