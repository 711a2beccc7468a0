"""Who sent a request to the gateway, and the sign-in route ``{wsgi_prefix}_session``.

A request's caller is, first that applies: the holder of the ``access_token`` (``Authorization:
Bearer TOKEN``, an operator: scripts, ``shmz``); a signed-in session's user (its cookie,
:mod:`shmooze.gateway.sessions`); the user a trusted proxy names in ``user_header``; the user the
application's ``user_hook`` names; else anonymous. The WSGI path stores it as
``environ["shmooze.user"]`` and ``environ["shmooze.role"]``.

``_session``, JSON in and out:

* ``POST {"user": NAME, "password": PASSWORD}``: signs in, sets the cookie; 401 with ``sign_in`` when wrong;
* ``GET``: who the caller is, ``{"user": NAME | null, "role": ROLE | null, "sign_in": BOOL}``
  (``sign_in``: whether this gateway has users who may sign in);
* ``DELETE`` (or ``POST {"sign_out": true}``): signs out (the cookie is refused from then on).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Callable

from werkzeug.wrappers import Response

from shmooze.access import AccessToken
from shmooze.gateway.sessions import COOKIE, Revocations, Sessions, cookie_from, session_secret
from shmooze.gateway.users import ANONYMOUS, Identity, TrustedProxies, UserTable, hook_identity, load_hook
from shmooze.http.jsonapp import JSONHTTPError, json_response, read_command_body

if TYPE_CHECKING:
    from shmooze.settings import Settings

log = logging.getLogger(__name__)

#: The caller the access token names.
TOKEN_HOLDER = Identity("access-token", "operator")
USER_ENVIRON = "shmooze.user"
ROLE_ENVIRON = "shmooze.role"


class Callers:
    """Identifies callers from the settings' ``users``, ``user_hook``, ``user_header`` and ``trusted_proxies``."""

    def __init__(self, settings: Settings, access: AccessToken, service_key: bytes | None):
        self.access = access
        self.users = UserTable(settings.users)
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self.hook = load_hook(settings.user_hook) if settings.user_hook else None
        header = settings.user_header
        self.header = "HTTP_" + header.upper().replace("-", "_") if header else None
        self.sessions: Sessions | None = None
        if self.users:
            from shmooze import servicekey

            path = servicekey.key_file(settings)
            revoked = Revocations(path and path + ".signed-out", settings.session_max_age)
            self.sessions = Sessions(self.users, session_secret(service_key), settings.session_max_age, revoked)
        self.max_age = settings.session_max_age
        self.prefix = settings.wsgi_prefix

    @property
    def guarded(self) -> bool:
        """Whether anyone could be more than anonymous here (else every command is open by default)."""
        return bool(self.access.required or self.users or self.hook or self.header)

    @property
    def plain_requests_suffice(self) -> bool:
        """Whether the Cookie and Authorization headers alone say who a caller is (the fast lane's case)."""
        return self.hook is None and self.header is None

    def identify(self, environ: dict[str, Any]) -> Identity:
        """The caller of a WSGI request, also stored in its environ."""
        identity = self._identify(environ)
        environ[USER_ENVIRON], environ[ROLE_ENVIRON] = identity
        return identity

    def _identify(self, environ: dict[str, Any]) -> Identity:
        found = self.from_headers(environ.get("HTTP_COOKIE", ""), environ.get("HTTP_AUTHORIZATION", ""))
        if found is not ANONYMOUS:
            return found
        if self.header is not None and self.proxies.trusts(str(environ.get("REMOTE_ADDR", ""))):
            name = environ.get(self.header, "").strip()
            if name:
                return Identity(name, self.users.role(name))
        if self.hook is not None:
            try:
                return hook_identity(self.hook(environ), self.users)
            except Exception:
                log.exception("user_hook failed: the request is anonymous")
        return ANONYMOUS

    def from_headers(self, cookie: str, authorization: str) -> Identity:
        """The caller a ``Cookie`` and an ``Authorization`` header name (the fast lane has no more)."""
        if authorization and self.access.required and self.access.bearer_matches(authorization):
            return TOKEN_HOLDER
        if cookie and self.sessions is not None:
            value = cookie_from(cookie)
            session = self.sessions.check(value) if value else None
            if session is not None:
                return session.identity
        return ANONYMOUS

    def still_signed_in(self, cookie: str) -> bool:
        """Whether the session of a ``Cookie`` header is still good (a WebSocket asks before each
        command that needs more than anyone: the user may have signed out since it opened)."""
        value = cookie_from(cookie)
        return self.sessions is not None and value is not None and self.sessions.check(value) is not None

    # -- the route ------------------------------------------------------------------------------

    def route(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Response:
        method = environ.get("REQUEST_METHOD")
        if method in ("GET", "HEAD"):
            return self._whoami(self.identify(environ))
        if method == "DELETE":
            return self._sign_out(environ)
        if method != "POST":
            raise JSONHTTPError(405, "sign in with POST, out with DELETE", {"Allow": "GET, HEAD, POST, DELETE"})
        body, _ = read_command_body(environ, 4096, 10.0, 256.0)  # JSON only: no cross-site form signs in
        try:
            given = json.loads(body)
        except ValueError:
            raise JSONHTTPError(400, 'the body must be {"user": NAME, "password": PASSWORD}') from None
        if isinstance(given, dict) and given.get("sign_out") is True:
            return self._sign_out(environ)
        if not isinstance(given, dict) or not isinstance(given.get("user"), str) \
                or not isinstance(given.get("password"), str):
            raise JSONHTTPError(400, 'the body must be {"user": NAME, "password": PASSWORD}')
        if self.sessions is None:
            raise JSONHTTPError(404, "this gateway has no users to sign in (see 'users' in the settings)")
        identity = self.users.verify(given["user"], given["password"])
        if identity is None:
            log.warning("a sign-in as %r failed (from %s)", given["user"][:64], environ.get("REMOTE_ADDR", "?"))
            return json_response({"success": False, "error": "wrong user name or password", "sign_in": True}, 401)
        log.info("%s signed in (%s) from %s", identity.name, identity.role, environ.get("REMOTE_ADDR", "?"))
        response = self._whoami(identity)
        response.set_cookie(COOKIE, self.sessions.make(identity), max_age=int(self.max_age), path=self.prefix,
                            secure=self._secure(environ), httponly=True, samesite="Strict")
        return response

    def _whoami(self, identity: Identity) -> Response:
        return json_response({"success": True, "result": {"user": identity.name, "role": identity.role,
                                                          "sign_in": self.sessions is not None}})

    def _sign_out(self, environ: dict[str, Any]) -> Response:
        value = cookie_from(environ.get("HTTP_COOKIE", ""))
        if value and self.sessions is not None and self.sessions.end(value):
            log.info("a session was signed out (from %s)", environ.get("REMOTE_ADDR", "?"))
        response = self._whoami(ANONYMOUS)
        response.delete_cookie(COOKIE, path=self.prefix, secure=self._secure(environ), httponly=True, samesite="Strict")
        return response

    def _secure(self, environ: dict[str, Any]) -> bool:
        """Whether the browser reached us over TLS: ours, or a trusted proxy's (``X-Forwarded-Proto``)."""
        if environ.get("wsgi.url_scheme") == "https":
            return True
        return (environ.get("HTTP_X_FORWARDED_PROTO", "").strip().lower() == "https"
                and self.proxies.trusts(str(environ.get("REMOTE_ADDR", ""))))
