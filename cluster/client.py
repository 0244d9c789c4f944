"""One JobSubmissionClient per command, authenticated explicitly, and Ray's errors as one line.

The client gets the address ftl resolved (Ray's own RAY_ADDRESS override is kept out of it) and the token
as an Authorization header. Every message built from the cluster's answers is redacted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftl.cluster.address import Address, check_reachable, resolve_address
from ftl.cluster.auth import Token, auth_headers, check_safe, redact, resolve_token, secrets_of
from ftl.launcher.errors import FtlError, did_you_mean, first_line

# Ray's client reads these instead of the address it is given; ftl decides the address itself.
_ADDRESS_OVERRIDES = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


class JobNotFound(FtlError):
    pass


@dataclass
class Connection:
    address: Address
    token: Token | None
    client: Any  # ray.job_submission.JobSubmissionClient

    def redact(self, text: str) -> str:
        return redact(text, *secrets_of(self.address, self.token))

    @contextlib.contextmanager
    def errors(self, job_id: str | None = None) -> Iterator[None]:
        """Turn what Ray raises into a one-line FtlError (auth, unreachable, unknown job)."""
        try:
            yield
        except FtlError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray, requests and aiohttp raise many kinds
            raise self.translate(exc, job_id) from None

    def translate(self, exc: BaseException, job_id: str | None = None) -> FtlError:
        from ray.exceptions import AuthenticationError

        text = self.redact(" ".join(str(exc).split()))
        where = self.address.url
        if isinstance(exc, AuthenticationError) or "status code 401" in text or "status code 403" in text:
            if "required" in text or "401" in text or self.token is None:
                return FtlError(
                    f"{where}: auth: the cluster requires a token (Ray token auth is on); give it with "
                    "--token-file FILE or $RAY_AUTH_TOKEN (a local cluster's token file: ftl cluster status)"
                )
            return FtlError(
                f"{where}: auth: the cluster rejected the token from {self.token.source}; give the cluster's "
                "own token (--token-file FILE or $RAY_AUTH_TOKEN)"
            )
        if job_id is not None and ("404" in text or "does not exist" in text):
            return JobNotFound(
                f"job '{job_id}' not found at {where}{self._suggest(job_id)}; list jobs: ftl jobs"
            )
        if _is_connection_error(exc):
            return FtlError(
                f"{self.address.source}: lost the connection to the Ray dashboard at {where} "
                f"({first_line(exc).split(':')[0]}); check that the cluster is still running"
            )
        return FtlError(f"{where}: the cluster answered: {self.redact(first_line(exc))}")

    def _suggest(self, job_id: str) -> str:
        try:
            ids = [job.submission_id for job in self.client.list_jobs() if job.submission_id]
        except Exception:  # noqa: BLE001 - only a hint
            return ""
        return did_you_mean(job_id, ids, cutoff=0.5)


def connect(
    address: str | None,
    *,
    token_file: Path | None = None,
    insecure: bool = False,
    for_submission: bool = False,
) -> Connection:
    """Resolve the address and token, refuse an open remote cluster for submission, and open the client."""
    resolved = resolve_address(address)
    token = resolve_token(resolved, token_file)
    if for_submission:
        check_safe(resolved, token, insecure=insecure)
    check_reachable(resolved)
    from ray.job_submission import JobSubmissionClient

    quiet_ray_client()  # after the import: Ray's job SDK sets its logger to INFO when imported
    connection = Connection(resolved, token, None)

    with connection.errors(), _without_address_overrides():
        # No token found: an empty header keeps Ray's client from adding one of its own (with RAY_AUTH_MODE=token
        # it would send ~/.ray/auth_token, which ftl never sends beyond loopback)
        headers = auth_headers(resolved, token) or {"Authorization": ""}
        connection.client = JobSubmissionClient(resolved.url, headers=headers)
        connection.client.list_jobs()  # the version check may be open; this request needs the token
    return connection


def quiet_ray_client() -> None:
    """Ray's client logs notices (no scheme given, token sources) at INFO/WARNING; ftl says what matters."""
    for name in (
        "ray.dashboard.modules.dashboard_sdk",
        "ray.dashboard.modules.job.sdk",
        "ray._private.runtime_env.packaging",
        "ray._private.authentication",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _without_address_overrides() -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in _ADDRESS_OVERRIDES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        import requests

        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
    except ImportError:  # pragma: no cover - ray[default] installs requests
        pass
    try:
        import aiohttp

        return isinstance(exc, aiohttp.ClientConnectionError)
    except ImportError:  # pragma: no cover
        return False
