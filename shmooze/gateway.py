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
from shmooze.httpjson import JSONHTTPError, error_response, json_response, raw_json_response, read_command_body
from shmooze.metrics import gateway_stats
from shmooze.push import PushSession, ServiceWatcher, wait_for_changes_here
from shmooze.service import READ_ONLY_COMMANDS, only_reads
from shmooze.settings import STATIC_DIR, Settings
from shmooze.slowbodies import READERS, gevent_sockets
from shmooze.websocket import check_origin, host_name

log = logging.getLogger(__name__)
mimetypes.add_type("text/javascript", ".mjs")

#: Commands that change nothing: open to everyone even when an access token is set.
OPEN_COMMANDS = READ_ONLY_COMMANDS
#: Host names every gateway answers to (a DNS-rebinding page's Host is its own domain, never these).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def body_only_reads(body: bytes) -> bool:
    """Whether a command body only reads (then sending it twice changes nothing)."""
    try:
        return only_reads(protocol.parse_request(body).items)
    except protocol.BodyError:
        return False


class Gateway:
    """The gateway's WSGI application for one set of settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.prefix: str = settings.wsgi_prefix
        self.static_prefix: str = settings.static_prefix
        self.static_path: str = settings.static_path
        self.max_body_bytes: int = settings.max_body_bytes
        self.body_timeout = float(settings.body_timeout)
        self.body_min_rate = float(settings.body_min_rate)
        if gevent_sockets():  # a gateway worker: cut slow bodies while they crowd its connections
            READERS.watch(int(settings.get("gateway_connections", 4000)), float(settings.body_shed_after))
        timeout = float(settings.forward_timeout)
        self.connect_timeout = float(settings.connect_timeout)
        # A kept-alive connection is dropped well before the service would drop it.
        idle = min(float(settings.forward_idle_timeout), float(settings.service_keepalive) / 2)
        # Services beyond loopback check the token on their own port: the gateway sends it.
        token = settings.get("access_token")
        self.proxies = {
            name: ServiceProxy(name, settings.address(name), port, timeout=timeout, idle_timeout=idle,
                               connect_timeout=self.connect_timeout, max_answer_bytes=int(settings.max_answer_bytes),
                               headers={"Authorization": f"Bearer {token}"} if token else None)
            for name, port in settings.ports.items()
            if name != "wsgi"
        }
        self.public_settings = protocol.dumps(settings.public())
        self.token: str | None = settings.get("access_token") or None
        self.open_commands = OPEN_COMMANDS | frozenset(settings.get("open_commands", []))
        self.allowed_origins: list[str] = list(settings.get("allowed_origins", []))
        listen = str(settings.get("host", "127.0.0.1"))
        self.allowed_hosts = LOCAL_HOSTS | {host_name(listen)} | {
            host_name(h) for h in settings.get("allowed_hosts", []) if isinstance(h, str)}
        self.any_ip_host = listen in ("0.0.0.0", "::", "")  # listening everywhere: any address literal
        self.watchers = {name: ServiceWatcher(proxy) for name, proxy in self.proxies.items()}
        self.sockets: set[Any] = set()  # open WebSockets, closed with "going away" when the gateway stops
        #: Extra routes under the prefix: name -> WSGI app.
        self.routes: dict[str, Callable[..., Iterable[bytes]]] = {"ws": self.websocket, "healthz": self.healthz}
        from shmooze import dashboard

        dashboard.add_routes(self)  # metrics and the dashboard (shmooze.dashboard)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        try:
            host = environ.get("HTTP_HOST")
            if host and not self.host_allowed(host):
                log.warning("refused a request for host %r (not in allowed_hosts)", host[:100])
                raise JSONHTTPError(400, f"host {protocol.short(host, 60)} is not served here (allowed_hosts)",
                                    close=True)
            # A service's URL with or without a trailing slash (POST /queue/ worked in the original).
            proxy = self.proxies.get(path[len(self.prefix):].removesuffix("/")) if path.startswith(self.prefix) else None
            if proxy is not None:  # the hot path, a command for a service, skips Werkzeug's Request
                return self.forward(proxy, environ, start_response)
            response = self.route(Request(environ), environ, start_response)
            if not isinstance(response, Response):
                return response  # a route that answered by itself (the WebSocket)
        except HTTPException as exc:
            response = error_response(exc, environ, start_response)
        except Exception:
            log.exception("gateway error on %s %s", environ.get("REQUEST_METHOD"), path)
            response = json_response(protocol.error("internal error in the gateway"), 500)
        return response(environ, start_response)

    def route(self, request: Request, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """The gateway's own routes (services, ``settings.json``, the WebSocket) before the static
        folder, always: a static folder at ``/`` must never shadow them (nor serve a private
        ``settings.json`` it happens to hold)."""
        path = request.path
        name = path[len(self.prefix):] if path.startswith(self.prefix) else None
        if name == "settings.json":
            if request.method not in ("GET", "HEAD"):
                raise JSONHTTPError(405, "settings.json is read with GET", {"Allow": "GET, HEAD"})
            return json_response(self.public_settings)
        if name in self.routes:
            return self.routes[name](environ, start_response)
        if path.startswith(self.static_prefix):
            return self.static(request, path[len(self.static_prefix):])
        if path in ("/", self.prefix):
            return self.static(request, "index.html")
        if name is None:
            raise JSONHTTPError(404, f"nothing at {path}")
        raise JSONHTTPError(404, f"no service named {protocol.short(name, 60)} (services: "
                                 f"{', '.join(sorted(self.proxies)) or 'none'})")

    def forward(self, proxy: ServiceProxy, environ: dict[str, Any],
                start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Pass a command body to its service and its answer back, unchanged."""
        if "HTTP_ORIGIN" in environ and not check_origin(environ, self.allowed_origins):
            log.info("refused a command from origin %r", environ["HTTP_ORIGIN"][:100])
            raise JSONHTTPError(403, "origin not allowed", close=True)
        body, mimetype = read_command_body(environ, self.max_body_bytes, self.body_timeout, self.body_min_rate)
        if self.token is not None:
            self.check_token(body, environ.get("HTTP_AUTHORIZATION", ""))
        body = wait_for_changes_here(self.watchers[proxy.name], body)
        try:
            reply = proxy.post(body, mimetype, repeatable=lambda: body_only_reads(body))
        except ForwardError as exc:
            log.warning("forward to %s: %s", proxy.name, exc.message)
            raise JSONHTTPError(exc.status, exc.message) from None
        return raw_json_response(start_response, reply.body, reply.status)

    # -- health, for a load balancer ----------------------------------------------------------

    def healthz(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Response:
        """``GET {wsgi_prefix}healthz``: 200 while this gateway reaches its services, 503 when it
        reaches none of them (cut off: a load balancer should send browsers elsewhere).

        Each service is asked ``status`` at once, each within ``connect_timeout``: one that answers
        is ``up``, one that takes a connection but not its answer in time is ``slow`` (reached: a
        busy service is no reason to take the gateway out), one that cannot be reached is ``down``.
        One service down is the same for every gateway, so it does not fail the check either (the
        load balancer would take every gateway out, and the services that work with them).
        """
        import threading

        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            raise JSONHTTPError(405, "healthz is read with GET", {"Allow": "GET, HEAD"})
        found: dict[str, tuple[str, str]] = {}

        def ask(name: str, proxy: ServiceProxy) -> None:
            probe = ServiceProxy(name, proxy.host, proxy.port, timeout=self.connect_timeout,
                                 connect_timeout=self.connect_timeout, max_idle=0)
            try:
                reply = probe.post(b'{"cmd": "status"}')
                found[name] = ("up", "") if reply.status == 200 else ("down", f"HTTP {reply.status}")
            except ForwardError as exc:
                found[name] = ("slow" if exc.status == 504 else "down", exc.message)
            finally:
                probe.close()

        threads = [threading.Thread(target=ask, args=item, daemon=True) for item in self.proxies.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.connect_timeout * 2 + 1)
        states = {name: found.get(name, ("slow", "no answer yet")) for name in sorted(self.proxies)}
        up = [name for name, (state, _) in states.items() if state == "up"]
        slow = {name: why for name, (state, why) in states.items() if state == "slow"}
        down = {name: why for name, (state, why) in states.items() if state == "down"}
        healthy = bool(up or slow) or not self.proxies
        return json_response({"healthy": healthy, "up": up, "slow": slow, "down": down}, 200 if healthy else 503)

    # -- access control ------------------------------------------------------------------

    def host_allowed(self, host: str) -> bool:
        """Whether the ``Host`` header names this gateway (a defence against DNS rebinding)."""
        name = host_name(host)
        if name in self.allowed_hosts or "*" in self.allowed_hosts:
            return True
        if self.any_ip_host:
            import ipaddress

            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

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
                PushSession(ws, self.proxies, self.watchers, authorize, int(self.settings.ws_max_in_flight),
                            int(self.settings.ws_outbox_bytes)).run()
            finally:
                sessions.dec()
                self.sockets.discard(ws)

        s = self.settings
        return websocket_response(environ, start_response, handler, self.allowed_origins or None,
                                  max_message_size=self.max_body_bytes, ping_interval=float(s.ws_ping_interval),
                                  idle_timeout=float(s.ws_idle_timeout), message_timeout=float(s.ws_message_timeout),
                                  max_pings=int(s.ws_max_pings))

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
            if self.is_settings_file(folder, subpath or "index.html"):
                break  # a link to the settings file in the static folder: never served
            try:
                return send_from_directory(folder, subpath or "index.html", request.environ, max_age=0)
            except NotFound:
                continue
        raise JSONHTTPError(404, f"no file {protocol.short(subpath, 80)} in the static folder")


    def is_settings_file(self, folder: str, subpath: str) -> bool:
        """Whether ``folder/subpath`` is the settings file itself (which holds keys that are not public)."""
        import os

        from werkzeug.security import safe_join

        full = safe_join(folder, subpath)
        try:
            return full is not None and os.path.samefile(full, self.settings.path)
        except (OSError, ValueError):
            return False


def make_gateway(settings: Settings | None = None) -> Gateway:
    """The gateway for the given (or current) settings."""
    if settings is None:
        from shmooze import settings as current

        settings = current.current()
    return Gateway(settings)


