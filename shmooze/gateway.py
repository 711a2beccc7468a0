"""The gateway: one public port in front of every service.

* ``POST {wsgi_prefix}{service}``: the body goes to that service, its answer comes back unchanged;
* ``GET {wsgi_prefix}settings.json``: the public settings;
* ``GET {static_prefix}...``: files from ``static_path``; ``GET /``: its ``index.html``.
"""

from __future__ import annotations

import logging
import mimetypes
from typing import Any, Callable, Iterable

from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.utils import send_from_directory
from werkzeug.wrappers import Request, Response

from shmooze import protocol
from shmooze.forward import ForwardError, ServiceProxy
from shmooze.httpjson import JSONHTTPError, json_response, raw_json_response, read_command_body
from shmooze.metrics import gateway_stats
from shmooze.push import PushSession, ServiceWatcher, wait_for_changes_here
from shmooze.settings import STATIC_DIR, Settings

log = logging.getLogger(__name__)
mimetypes.add_type("text/javascript", ".mjs")

#: Commands that change nothing: open to everyone even when an access token is set.
OPEN_COMMANDS = frozenset({
    "queue", "bg", "pool", "status", "changes", "commands", "history", "modules_available",
    "backgrounds_available", "ask_module", "ask_background", "metrics", "output",
})


class Gateway:
    """The gateway's WSGI application for one set of settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.prefix: str = settings.wsgi_prefix
        self.static_prefix: str = settings.static_prefix
        self.static_path: str = settings.static_path
        self.max_body_bytes: int = settings.max_body_bytes
        host = settings.get("service_host", "127.0.0.1")
        timeout = float(settings.forward_timeout)
        self.proxies = {
            name: ServiceProxy(name, host, port, timeout=timeout)
            for name, port in settings.ports.items()
            if name != "wsgi"
        }
        self.public_settings = protocol.dumps(settings.public())
        self.token: str | None = settings.get("access_token") or None
        self.open_commands = OPEN_COMMANDS | frozenset(settings.get("open_commands", []))
        self.allowed_origins: list[str] = list(settings.get("allowed_origins", []))
        self.watchers = {name: ServiceWatcher(proxy) for name, proxy in self.proxies.items()}
        self.sockets: set[Any] = set()  # open WebSockets, closed with "going away" when the gateway stops
        #: Extra routes under the prefix: name -> WSGI app.
        self.routes: dict[str, Callable[..., Iterable[bytes]]] = {"ws": self.websocket}
        from shmooze import dashboard

        dashboard.add_routes(self)  # metrics and the dashboard (shmooze.dashboard)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        try:
            proxy = self.proxies.get(path[len(self.prefix):]) if path.startswith(self.prefix) else None
            if proxy is not None:  # the hot path, a command for a service, skips Werkzeug's Request
                return self.forward(proxy, environ, start_response)
            response = self.route(Request(environ), environ, start_response)
            if not isinstance(response, Response):
                return response  # a route that answered by itself (the WebSocket)
        except HTTPException as exc:
            response = exc.get_response(environ)
        except Exception:
            log.exception("gateway error on %s %s", environ.get("REQUEST_METHOD"), path)
            response = json_response(protocol.error("internal error in the gateway"), 500)
        return response(environ, start_response)

    def route(self, request: Request, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = request.path
        if path.startswith(self.static_prefix):
            return self.static(request, path[len(self.static_prefix):])
        if path in ("/", self.prefix):
            return self.static(request, "index.html")
        if not path.startswith(self.prefix):
            raise JSONHTTPError(404, f"nothing at {path}")
        name = path[len(self.prefix):]
        if name == "settings.json":
            if request.method not in ("GET", "HEAD"):
                raise JSONHTTPError(405, "settings.json is read with GET", {"Allow": "GET, HEAD"})
            return json_response(self.public_settings)
        if name in self.routes:
            return self.routes[name](environ, start_response)
        raise JSONHTTPError(404, f"no service named {protocol.short(name, 60)} (services: "
                                 f"{', '.join(sorted(self.proxies)) or 'none'})")

    def forward(self, proxy: ServiceProxy, environ: dict[str, Any],
                start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Pass a command body to its service and its answer back, unchanged."""
        body, mimetype = read_command_body(environ, self.max_body_bytes)
        if self.token is not None:
            self.check_token(body, environ.get("HTTP_AUTHORIZATION", ""))
        body = wait_for_changes_here(self.watchers[proxy.name], body)
        try:
            reply = proxy.post(body, mimetype)
        except ForwardError as exc:
            log.warning("forward to %s: %s", proxy.name, exc.message)
            raise JSONHTTPError(exc.status, exc.message) from None
        return raw_json_response(start_response, reply.body, reply.status)

    # -- access control ------------------------------------------------------------------

    def needs_token(self, items: list[protocol.Item]) -> bool:
        return any(isinstance(i, protocol.Command) and i.cmd not in self.open_commands for i in items)

    def token_ok(self, given: str) -> bool:
        import hmac

        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def check_token(self, body: bytes, authorization: str) -> None:
        """With an access token set, a command that changes state needs ``Authorization: Bearer TOKEN``."""
        try:
            items = protocol.parse_request(body).items
        except protocol.BodyError as exc:
            raise JSONHTTPError(400, str(exc)) from None
        if self.needs_token(items) and not self.token_ok(authorization.removeprefix("Bearer ").strip()):
            raise JSONHTTPError(401, "this command needs the access token (Authorization: Bearer TOKEN)",
                                {"WWW-Authenticate": "Bearer"})

    # -- the WebSocket ---------------------------------------------------------------------

    def websocket(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        from shmooze.websocket import is_websocket_request, websocket_response

        if not is_websocket_request(environ):
            raise JSONHTTPError(400, "this is the WebSocket endpoint: connect with a WebSocket")
        authorized = {"ok": self.token is None}

        def authorize(service: str, items: list[protocol.Item], msg: dict[str, Any]) -> str | None:
            if authorized["ok"] or not self.needs_token(items):
                return None
            if isinstance(msg.get("token"), str) and self.token_ok(msg["token"]):
                return None
            return "this command needs the access token (send it as 'token')"

        def handler(ws: Any) -> None:
            self.sockets.add(ws)
            sessions = gateway_stats().sessions
            sessions.inc()
            try:
                PushSession(ws, self.proxies, self.watchers, authorize).run()
            finally:
                sessions.dec()
                self.sockets.discard(ws)

        return websocket_response(environ, start_response, handler, self.allowed_origins or None,
                                  max_message_size=self.max_body_bytes)

    def close_websockets(self) -> None:
        """Tell every open WebSocket the gateway is going away (1001); browsers reconnect elsewhere."""
        import threading

        for ws in list(self.sockets):  # each close waits for its peer's answer: all at once
            threading.Thread(target=ws.close, args=(1001, "gateway stopping"), daemon=True).start()

    def static(self, request: Request, subpath: str) -> Response:
        if request.method not in ("GET", "HEAD"):
            raise JSONHTTPError(405, "static files are read with GET", {"Allow": "GET, HEAD"})
        # The application's folder first, then the framework's own (which holds shmooze.js).
        for folder in dict.fromkeys((self.static_path, STATIC_DIR)):
            try:
                return send_from_directory(folder, subpath or "index.html", request.environ, max_age=0)
            except NotFound:
                continue
        raise JSONHTTPError(404, f"no file {protocol.short(subpath, 80)} in the static folder")


def make_gateway(settings: Settings | None = None) -> Gateway:
    """The gateway for the given (or current) settings."""
    if settings is None:
        from shmooze import settings as current

        settings = current.current()
    return Gateway(settings)


