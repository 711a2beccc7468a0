"""The access token on a service's own port, for services that listen beyond loopback.

A service placed on another host (``hosts`` in the settings) is reachable by anyone who can
reach that host, not only through the gateway; so it checks the token itself for every command
that changes state, and refuses to start on such an address when no ``access_token`` is set.
The gateway sends the token with every command it forwards.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable

from shmooze import protocol
from shmooze.errors import SettingsError
from shmooze.httpjson import JSONHTTPError
from shmooze.service import Service
from shmooze.settings import Settings, is_loopback


def is_read_only(service: Service, cmd: str) -> bool:
    """Whether command ``cmd`` of ``service`` changes nothing (so it needs no token): its declared
    ``@command(read_only=True)`` commands."""
    return cmd in service.read_only_commands


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer TOKEN``."""
    given = authorization.removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


def check_listen_address(settings: Settings, name: str) -> str | None:
    """The token service ``name`` must ask for on its port (None: it listens on loopback only).

    Raises :class:`SettingsError` when it would listen beyond loopback without a token.
    """
    address = settings.listen_address(name)
    if is_loopback(address):
        return None
    token = settings.get("access_token")
    if not token:
        raise SettingsError(f"{settings.path}: service {name!r} would listen on {address}, beyond loopback, "
                            "with no 'access_token': set one (every host's settings need the same), or "
                            "place the service on 127.0.0.1")
    return str(token)


def token_guard(service: Service, token: str, open_commands: frozenset[str] = frozenset()
                ) -> Callable[[protocol.Request, dict[str, Any]], None]:
    """A check for :class:`shmooze.httpjson.CommandApp`: a request with any command that changes
    state needs ``Authorization: Bearer TOKEN`` (401 otherwise)."""

    def check(request: protocol.Request, environ: dict[str, Any]) -> None:
        writes = any(isinstance(i, protocol.Command) and i.cmd not in open_commands
                     and not is_read_only(service, i.cmd) for i in request.items)
        if writes and not bearer_matches(environ.get("HTTP_AUTHORIZATION", ""), token):
            raise JSONHTTPError(401, "this command needs the access token (Authorization: Bearer TOKEN)",
                                {"WWW-Authenticate": "Bearer"})

    return check
