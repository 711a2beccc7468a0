"""Who may command a service on its own port.

A service listens on a TCP port that every process of the machine can reach (and, placed on
another host, everyone who can reach that host), and a web page can aim a browser at it by
DNS rebinding. So, on its own port, a service:

- answers only requests whose ``Host`` names it (a loopback name, its listen address, its
  address in ``hosts``): a rebinding page's Host is its own domain;
- answers no browser: a request with an ``Origin`` is refused (browsers talk to the gateway);
- takes a command that changes state only with a request signed with the service key
  (:mod:`shmooze.servicekey`: the gateway and the app's own tools), or from a process of the
  service's own user on this machine (a loopback peer whose socket the kernel says is this uid's:
  such a process could read the key anyway). Read-only commands (declared ``read_only``) are open.
- proves every answer to a signed request, so its clients can tell it from a process that took
  its port.

And who may command through the gateway: with an ``access_token`` set, what changes state (and the
metrics, and the dashboard's restart) needs it, checked in one place, :class:`AccessToken`.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any

from shmooze import caller, protocol, servicekey
from shmooze.errors import SettingsError
from shmooze.http.jsonapp import JSONHTTPError
from shmooze.http.websocket import host_name
from shmooze.service import Service
from shmooze.settings import Settings, is_loopback

log = logging.getLogger(__name__)

#: Host names every service answers to on its port.
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


#: How an HTTP request gives the access token, as a refusal tells it.
BEARER = "Authorization: Bearer TOKEN"


class AccessToken:
    """The gateway's ``access_token`` (none: nothing to check), compared in constant time."""

    def __init__(self, token: str | None):
        self._secret = token.encode("utf-8", "surrogatepass") if token else None

    @property
    def required(self) -> bool:
        return self._secret is not None

    def matches(self, given: str) -> bool:
        """Whether ``given`` is the token (a WebSocket message's ``token``); False when none is set."""
        if self._secret is None:
            return False
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._secret)

    def bearer_matches(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header is ``Bearer TOKEN`` (the scheme in any case, RFC 9110 11.1)."""
        scheme, _, credentials = authorization.strip().partition(" ")
        return scheme.lower() == "bearer" and self.matches(credentials.strip())

    def check_bearer(self, authorization: str, what: str) -> None:
        """Raise the 401 unless a token is set and ``authorization`` gives it (the caller knows that
        ``what`` needs it)."""
        if not self.bearer_matches(authorization):
            raise JSONHTTPError(401, refusal(what), {"WWW-Authenticate": "Bearer"})


def refusal(what: str, how: str = BEARER) -> str:
    """What a client hears when ``what`` needs the access token it did not give (``how`` says how to give it)."""
    return f"{what} needs the access token ({how})"


def is_read_only(service: Service, cmd: str) -> bool:
    """Whether command ``cmd`` of ``service`` changes nothing: its declared ``@command(read_only=True)``."""
    return cmd in service.read_only_commands


def host_allowed(host: str, names: frozenset[str] | set[str], any_ip: bool) -> bool:
    """Whether a ``Host`` header names one of ``names`` (or, with ``any_ip``, any IP address): the
    defence against DNS rebinding, whose Host is the page's own domain."""
    name = host_name(host)
    if name in names or "*" in names:
        return True
    if any_ip:
        import ipaddress

        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False
    return False


def check_listen_address(settings: Settings, name: str) -> None:
    """Raise :class:`SettingsError` when service ``name`` would listen beyond loopback with no shared
    service key (a key file made on each host would differ between hosts)."""
    beyond = [a for a in (settings.listen_address(name), settings.address(name)) if not is_loopback(a)]
    if not beyond or settings.service_key or settings.service_key_path:
        return
    raise SettingsError(f"{settings.path}: service {name!r} would listen on or be reached at {beyond[0]}, beyond "
                        "loopback, with no 'service_key': set one (a long random string, the same in every host's "
                        "settings), or place the service on 127.0.0.1")


def same_user_peer(environ: dict[str, Any]) -> bool:
    """Whether the request came over loopback from a socket of this process's user (the kernel says)."""
    from shmooze.system.peer import peer_socket

    sock = environ.get("gunicorn.socket")
    if sock is None or not is_loopback(str(environ.get("REMOTE_ADDR", ""))):
        return False
    found = peer_socket(sock)
    return found is not None and found[1] == os.geteuid()


class ServiceGuard:
    """The checks of one service's port (see the module's docstring) for :class:`shmooze.http.jsonapp.CommandApp`."""

    def __init__(self, service: Service, key: bytes | None, hosts: frozenset[str] = frozenset(),
                 any_ip_host: bool = False):
        self.service = service
        self.verifier = servicekey.Verifier(key) if key else None
        self.hosts = LOCAL_NAMES | {host_name(h) for h in hosts}
        #: Listening on every address: any IP literal may name it.
        self.any_ip_host = any_ip_host

    @classmethod
    def for_settings(cls, service: Service, settings: Settings, name: str, key: bytes | None) -> ServiceGuard:
        listen = settings.listen_address(name)
        hosts = {listen, settings.address(name), *settings.allowed_hosts}
        return cls(service, key, frozenset(hosts), listen in ("0.0.0.0", "::", ""))

    def check_headers(self, environ: dict[str, Any]) -> None:
        """Host and Origin, before anything is read (400 / 403, closing the connection)."""
        host = environ.get("HTTP_HOST")
        if host and not self.host_allowed(host):
            log.warning("refused a request for host %r on the service's port (DNS rebinding?)", host[:100])
            raise JSONHTTPError(400, f"host {protocol.short(host, 60)} is not this service's", close=True)
        if "HTTP_ORIGIN" in environ:
            log.warning("refused a request from a browser page (origin %r) on the service's port",
                        environ["HTTP_ORIGIN"][:100])
            raise JSONHTTPError(403, "services take no requests from web pages: use the gateway", close=True)

    def host_allowed(self, host: str) -> bool:
        return host_allowed(host, self.hosts, self.any_ip_host)

    def signed(self, environ: dict[str, Any], body: bytes) -> bytes | None:
        """The nonce of a request signed with the service key (None: not signed); 401 for a bad signature."""
        value = environ.get(servicekey.AUTH_ENVIRON)
        if value is None:
            return None
        if self.verifier is None:
            raise JSONHTTPError(401, "this service has no service key to check the request's signature")
        try:
            return self.verifier.check(value, environ.get("PATH_INFO") or "/", body, environ.get(caller.ENVIRON, ""))
        except servicekey.BadSignature as exc:
            log.warning("refused a signed request from %s: %s", environ.get("REMOTE_ADDR", "?"), exc)
            raise JSONHTTPError(401, f"bad service signature: {exc}") from None

    def admit(self, request: protocol.Request, environ: dict[str, Any], signed: bool) -> str | None:
        """A request that is not signed may only read, unless it comes from this user's own process.

        Returns who its commands that change state run for (:mod:`shmooze.caller`; None when it only
        reads): the ``Shmooze-Caller`` of a signed request (its signature covers it), else this host's
        user for a process of its own, else the address of the key's holder. A caller header on a request
        that is not signed is never taken."""
        writes = any(isinstance(i, protocol.Command) and not is_read_only(self.service, i.cmd) for i in request.items)
        if not writes:
            return None
        if signed:
            named = environ.get(caller.ENVIRON)
            if named:
                return caller.decode(named)
        if same_user_peer(environ):
            return caller.local()
        if signed:
            return caller.key_holder(str(environ.get("REMOTE_ADDR", "?")))
        log.warning("refused a command that changes state from %s: not signed with the service key",
                    environ.get("REMOTE_ADDR", "?"))
        raise JSONHTTPError(401, "this command changes state: on a service's own port it needs the service "
                                 "key (send it through the gateway, or with the app's own tools)")

    def proof(self, nonce: bytes, status: int, body: bytes) -> str:
        assert self.verifier is not None
        return self.verifier.proof(nonce, status, body)
