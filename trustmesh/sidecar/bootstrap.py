"""The sidecar's way to the control plane: `trustmesh.control.join_client`, over several URLs.

The protocol (pin the CA from the token's fingerprint on first contact, join, renew over
mutual TLS) lives in `join_client`, shared with `trustmesh demo`; this module only adds
what a long-running sidecar needs on top:

- failover: several `--control-plane` URLs are tried in order. A replica that cannot be
  reached or answers 5xx moves on to the next; a 4xx is an answer (the token is used up,
  the CSR is refused) that no other replica will contradict, so it is raised at once, as
  is a control plane that does not serve the CA pinned by the token;
- a split of failures into "retry later" (`ControlPlaneError`) and "operator action
  needed" (`ControlPlaneRejected`), which decides between backoff and exit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

import structlog

from trustmesh.ca.join_token import JoinToken
from trustmesh.control import join_client
from trustmesh.control.join_client import PrivateKey, Svid
from trustmesh.identity.bundle import BundleError, TrustBundle

log = structlog.get_logger(__name__)

T = TypeVar("T")

# join_client reports these with status 0, but they are not outages: the address answers
# and is the wrong control plane, or answers something that is not the API.
_FATAL_ERRORS = frozenset({"ca_mismatch"})


class ControlPlaneError(Exception):
    """No control plane gave a usable answer (unreachable, 5xx, garbage): worth retrying later."""


class ControlPlaneRejected(ControlPlaneError):
    """A control plane said no (4xx) or is not the one the token pins: retrying won't help.

    `error` is the API's stable error code (e.g. `join_token_needed` when an expired SVID
    can no longer be recovered), so callers can act on it without parsing the message.
    """

    def __init__(self, message: str, error: str = "") -> None:
        super().__init__(message)
        self.error = error


def check_url(url: str) -> str:
    """`https://HOST:PORT`; ValueError naming the input otherwise (flags are checked up front)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as err:
        raise ValueError(f"invalid control-plane URL {url!r}: {err}") from err
    if parts.scheme != "https" or not parts.hostname or port is None:
        raise ValueError(f"invalid control-plane URL {url!r}: expected https://HOST:PORT")
    return url


class ControlPlaneClient:
    """Join, renew and bundle fetches against one or more control planes, in failover order."""

    def __init__(self, urls: Sequence[str], *, timeout: float = join_client.DEFAULT_TIMEOUT_S) -> None:
        if not urls:
            raise ValueError("at least one control-plane URL is required")
        self.urls = tuple(check_url(u) for u in urls)
        self._timeout = timeout

    async def join(self, token: JoinToken, key: PrivateKey) -> Svid:
        """Exchange the token and a CSR for `key` for our first SVID (CA pinned by the token)."""
        return await self._failover(
            "join", lambda url: join_client.join(url, token, key=key, timeout=self._timeout)
        )

    async def renew(self, current: Svid, key: PrivateKey) -> Svid:
        """Present `current` over mutual TLS and get a fresh SVID for `key`."""

        async def attempt(url: str) -> Svid:
            async with join_client.ControlPlaneClient(url, current, timeout=self._timeout) as cp:
                return await cp.renew(key)

        return await self._failover("renew", attempt)

    async def fetch_bundle(self, current: Svid, trust_domain: str) -> bytes:
        """The current roots as PEM, over a connection verified with what we already trust."""

        async def attempt(url: str) -> bytes:
            async with join_client.ControlPlaneClient(url, current, timeout=self._timeout) as cp:
                text = await cp.bundle_json()
            try:
                return TrustBundle.from_spiffe_json(trust_domain, text).to_pem()
            except BundleError as err:
                raise join_client.ControlPlaneError(0, "bad_response", str(err)) from err

        return await self._failover("bundle", attempt)

    async def _failover(self, op: str, attempt: Callable[[str], Awaitable[T]]) -> T:
        last: ControlPlaneError | None = None
        for url in self.urls:
            try:
                return await attempt(url)
            except join_client.ControlPlaneError as err:
                if 400 <= err.status < 500 or err.error in _FATAL_ERRORS:
                    raise ControlPlaneRejected(f"{url}: {err}", err.error) from err
                log.warning("control_plane_unavailable", op=op, url=url, error=str(err))
                last = ControlPlaneError(f"{url}: {err}")
            except (KeyError, TypeError, ValueError) as err:
                # A 200 whose body is not the API's shape: a proxy or a broken replica.
                log.warning("control_plane_bad_response", op=op, url=url, error=repr(err))
                last = ControlPlaneError(f"{url}: malformed response: {err!r}")
        assert last is not None
        raise last
