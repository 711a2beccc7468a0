"""The gateway's clients: who each request comes from, and how fast each may change state.

A client is the signed-in user when there is one (the client policy puts it in the WSGI environ as
``shmooze.user``), else the client's address: the peer's, or, from one of the ``trusted_proxies``, the
one its ``X-Forwarded-For`` names (:func:`shmooze.caller.client_address`). The gateway tells the service
who it is in the signed ``Shmooze-Caller`` header (:mod:`shmooze.caller`), and counts its commands that
change state against ``rate_limit`` (:mod:`shmooze.gateway.ratelimit`) unless its address is one of
``rate_limit_exempt``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from shmooze import caller
from shmooze.gateway.ratelimit import RateLimiter, retry_after
from shmooze.http.jsonapp import JSONHTTPError

if TYPE_CHECKING:
    from shmooze.settings import Settings

#: Where the gateway's client policy puts the signed-in user's name (None: nobody signed in).
USER_ENVIRON = "shmooze.user"


class Clients:
    """Names a gateway's clients and limits their commands that change state."""

    def __init__(self, trusted_proxies: list[str], limiter: RateLimiter | None, exempt: list[str]):
        self.trusted = caller.networks(trusted_proxies)
        self.limiter = limiter
        self.exempt = caller.networks(exempt)
        self._exempt_seen: dict[str, bool] = {}  # address -> exempt (parsed once per address)
        self._headers: dict[str, bytes] = {}  # caller -> its header value

    @classmethod
    def for_settings(cls, settings: Settings) -> Clients:
        limiter = RateLimiter(settings.rate_limit, settings.rate_limit_burst) if settings.rate_limit > 0 else None
        return cls(settings.trusted_proxies, limiter, settings.rate_limit_exempt)

    def address(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: ``peer``, or whom a trusted proxy says it forwards for."""
        if not forwarded_for or not self.trusted:
            return peer
        return caller.client_address(peer, forwarded_for, self.trusted)

    def address_of(self, environ: dict[str, Any]) -> str:
        """The client's address of a WSGI request."""
        return self.address(environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR"))

    def caller_of(self, environ: dict[str, Any]) -> str:
        """Who sent a WSGI request (:mod:`shmooze.caller`): the signed-in user, else anonymous at its address."""
        return caller.of_client(environ.get(USER_ENVIRON), self.address_of(environ))

    def admit(self, user: str | None, address: str, writes: Callable[[], bool]) -> bytes:
        """The ``Shmooze-Caller`` value of a command from ``user`` (None: nobody signed in) at ``address``;
        429 with ``Retry-After`` when it changes state (``writes()``, asked only when limits apply) and
        the client's bucket is empty."""
        who = caller.of_client(user, address)
        if self.limiter is not None and not self.is_exempt(address) and writes():
            wait = self.limiter.take(who)
            if wait > 0:
                raise JSONHTTPError(429, self.refusal(wait), {"Retry-After": retry_after(wait)})
        return self.header(who)

    def wait(self, user: str | None, address: str) -> float:
        """For a command known to change state (the WebSocket's): 0.0 when it may pass, else seconds to wait."""
        if self.limiter is None or self.is_exempt(address):
            return 0.0
        return self.limiter.take(caller.of_client(user, address))

    def refusal(self, wait: float) -> str:
        assert self.limiter is not None
        return (f"too many commands that change state: try again in {wait:.1f} s (at most "
                f"{self.limiter.rate:g} a second, {self.limiter.burst:g} at once: rate_limit)")

    def is_exempt(self, address: str) -> bool:
        seen = self._exempt_seen.get(address)
        if seen is None:
            if len(self._exempt_seen) >= 4096:
                self._exempt_seen.clear()  # many addresses: start again (one parse each)
            seen = self._exempt_seen[address] = caller.within(address, self.exempt)
        return seen

    def header(self, who: str) -> bytes:
        value = self._headers.get(who)
        if value is None:
            if len(self._headers) >= 4096:
                self._headers.clear()
            value = self._headers[who] = caller.encode(who).encode("ascii")
        return value
