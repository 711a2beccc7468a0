"""The gateway: one public port in front of every service.

* ``POST {wsgi_prefix}{service}``: the body goes to that service, its answer comes back unchanged;
* ``GET {wsgi_prefix}settings.json``: the public settings;
* ``GET {static_prefix}...``: files from ``static_path``; ``GET /``: its ``index.html``.
"""

from __future__ import annotations

import logging
import mimetypes
import threading
import time
from typing import Any, Callable, Iterable

from werkzeug.exceptions import NotFound
from werkzeug.utils import send_from_directory
from werkzeug.wrappers import Request, Response

from shmooze import caller, protocol, servicekey
from shmooze.access import AccessToken, host_allowed, refusal
from shmooze.cluster.directory import Directory
from shmooze.cluster.keys import Registration
from shmooze.gateway.callers import TOKEN_HOLDER, USER_ENVIRON, Callers
from shmooze.gateway.clients import Clients
from shmooze.gateway.dashboard import Dashboard
from shmooze.gateway.fanout import ServiceWatcher
from shmooze.gateway.longpoll import wait_for_changes_here
from shmooze.gateway.policy import ClientPolicy, SignInRequired, allows
from shmooze.gateway.push import PushSession
from shmooze.gateway.ratelimit import retry_after
from shmooze.http.forward import ForwardError, Reply, ServiceProxy
from shmooze.http.jsonapp import JSONHTTPError, json_response, raw_json_response, read_command_body, serve_json_errors
from shmooze.http.metrics import gateway_stats, render
from shmooze.http.slowbodies import READERS
from shmooze.http.websocket import CLOSE_GOING_AWAY, check_origin, host_name
from shmooze.http.wsloop import socket_loop
from shmooze.service import Service, only_reads
from shmooze.settings import STATIC_DIR, Settings
from shmooze.system.cooperative import gevent_sockets

log = logging.getLogger(__name__)
mimetypes.add_type("text/javascript", ".mjs")

#: Host names every gateway answers to (a DNS-rebinding page's Host is its own domain, never these).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


#: What every shmooze service declares read-only (``status``, ``changes``...): assumed while a service's
#: own answer is not known.
BASE_READ_ONLY = Service.declared_read_only()


class DeclaredReadOnly:
    """Which commands of one service only read, as the service itself declares them.

    The gateway asks the service's ``commands`` before the first command it forwards, and again:
    when the last ask failed, after a forward to the service failed (it may have restarted with
    other commands), ``max_age`` seconds after the last answer, and (for the token check) when a
    request names a command the last answer did not list. Never more than once per
    ``min_interval`` seconds. While it does not know, only :data:`BASE_READ_ONLY` and ``extra``
    (the ``open_commands`` setting) count as read-only: an unknown command needs the access token,
    and is not sent again after a failure.
    """

    def __init__(self, proxy: ServiceProxy, extra: frozenset[str] = frozenset(), max_age: float = 60.0,
                 min_interval: float = 1.0):
        self.proxy = proxy
        self.extra = extra
        self.max_age = max_age
        self.min_interval = min_interval
        self.read_only = BASE_READ_ONLY | extra
        self.known: frozenset[str] | None = None  # every command of the last answer; None: no answer
        self.failure = "not asked yet"  # why ``known`` is None
        self._answered_at = float("-inf")
        self._asked_at = float("-inf")
        self._moves = 0  # times the service moved (moved()): an ask begun before the last move tells nothing
        self._lock = threading.Lock()

    def only_reads(self, items: list[protocol.Item], ask: bool = True) -> bool:
        """Whether these items change nothing; ``ask=False`` decides from what is known already."""
        if ask and self._should_ask(items):
            self.refresh()
        return only_reads(items, self.read_only)

    def learn(self, items: list[protocol.Item]) -> None:
        """Ask again when these items name a command the last answer did not list (see the class)."""
        if self._should_ask(items):
            self.refresh()

    def is_read_only(self, cmd: str) -> bool:
        return cmd in self.read_only

    def keep_fresh(self) -> None:
        """Before a forward: ask when there is no answer yet, or an old one (cheap when fresh).

        Raises the :class:`ForwardError` when asking found the service unreachable (its host lost):
        the forward would wait for the same connect timeout again."""
        if self._should_ask([]):
            failure = self.refresh()
            if failure is not None and failure.status in (502, 503):
                raise failure

    def body_only_reads(self, body: bytes) -> bool:
        """The same for a command body (a body that is not a request changes nothing, but says no)."""
        try:
            return self.only_reads(protocol.parse_request(body).items, ask=False)
        except protocol.BodyError:
            return False

    def forget(self) -> None:
        """The service failed: ask again when next needed."""
        self._answered_at = float("-inf")

    def moved(self) -> None:
        """The service is served elsewhere now (another process): ask it at the next request."""
        self._moves += 1
        self._answered_at = self._asked_at = float("-inf")

    def _should_ask(self, items: list[protocol.Item]) -> bool:
        now = time.monotonic()
        if now - self._asked_at < self.min_interval:
            return False
        if self.known is None or now - self._answered_at > self.max_age:
            return True
        return any(isinstance(i, protocol.Command) and i.cmd not in self.known for i in items)

    def refresh(self) -> ForwardError | None:
        """Ask the service for its commands (one caller at a time; the others wait for its answer).
        Gives the forwarding error when the service could not be asked."""
        asked = self._asked_at
        with self._lock:
            if self._asked_at != asked:
                return None  # another caller asked meanwhile
            moves = self._moves
            try:
                return self._ask()
            finally:
                if moves == self._moves:  # (else it asked where the service was: ask again at once)
                    self._asked_at = time.monotonic()  # min_interval counts from the end of the ask

    def _ask(self) -> ForwardError | None:
        try:
            reply = self.proxy.post(b'{"cmd": "commands"}', repeatable=lambda: True)
            answer = protocol.loads(reply.body)
            table = answer["result"] if answer.get("success") is True else None
            if not isinstance(table, dict):
                raise ValueError(f"answered {protocol.short(reply.body.decode('utf-8', 'replace'), 100)}")
        except (ForwardError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("cannot learn the read-only commands of %s (%s); only %s count as read-only",
                        self.proxy.name, getattr(exc, "message", exc), ", ".join(sorted(self.read_only)))
            self.known, self.read_only = None, BASE_READ_ONLY | self.extra
            self.failure = str(getattr(exc, "message", exc))
            return exc if isinstance(exc, ForwardError) else None
        self.known = frozenset(table)
        self.read_only = frozenset(
            name for name, about in table.items() if isinstance(about, dict) and about.get("read_only") is True
        ) | self.extra
        self._answered_at = time.monotonic()
        return None


class Gateway:
    """The gateway's WSGI application for one set of settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.prefix = settings.wsgi_prefix
        self.static_prefix = settings.static_prefix
        self.static_path = settings.static_path
        self.max_body_bytes = settings.max_body_bytes
        self.body_timeout = settings.body_timeout
        self.body_min_rate = settings.body_min_rate
        if gevent_sockets():  # a gateway worker: cut slow bodies while they crowd its connections
            READERS.watch(settings.gateway_connections, settings.body_shed_after)
        timeout = settings.forward_timeout
        self.connect_timeout = settings.connect_timeout
        # A kept-alive connection is dropped well before the service would drop it.
        idle = min(settings.forward_idle_timeout, settings.service_keepalive / 2)
        # Every request to a service is signed with the service key and its answer proven (shmooze.servicekey).
        key = servicekey.load(settings)
        self.signer = servicekey.Signer(key) if key else None
        self.proxies = {
            name: ServiceProxy(name, settings.address(name), port, timeout=timeout, idle_timeout=idle,
                               connect_timeout=self.connect_timeout, max_answer_bytes=settings.max_answer_bytes,
                               signer=self.signer)
            for name, port in settings.ports.items()
            if name != "wsgi"
        }
        self.public_settings = protocol.dumps(settings.public())
        self.access = AccessToken(settings.access_token)
        self.clients = Clients.for_settings(settings)  # who sent a command, and rate limits (trusted_proxies)
        extra = frozenset(settings.open_commands)  # open to all besides what services declare
        self.declared = {name: DeclaredReadOnly(proxy, extra) for name, proxy in self.proxies.items()}
        self.callers = Callers(settings, self.access, key)  # who a request comes from (shmooze.gateway.callers)
        self.policy = ClientPolicy(settings.command_access, extra, self.callers.guarded)
        self.allowed_origins = list(settings.allowed_origins)
        listen = settings.host
        self.allowed_hosts = LOCAL_HOSTS | {host_name(listen)} | {host_name(h) for h in settings.allowed_hosts}
        self.any_ip_host = listen in ("0.0.0.0", "::", "")  # listening everywhere: any address literal
        self.watchers = {name: ServiceWatcher(proxy) for name, proxy in self.proxies.items()}
        #: With etcd: where each service is reached, followed as it moves (shmooze.cluster.directory).
        self.directory = self.follow_services() if settings.etcd else None
        self.sockets: set[Any] = set()  # open WebSockets, closed with "going away" when the gateway stops
        #: Extra routes under the prefix: name -> WSGI app.
        # Each returns a Response or bytes.
        self.routes: dict[str, Callable[..., Any]] = {"ws": self.websocket, "healthz": self.healthz,
                                                      "_session": self.session}
        app_name = settings.public().get("app_name")
        self.routes.update(Dashboard(self.proxies, self.access, app_name, self.render_metrics, self.restart_service,
                                     self.clients.caller_of, self.operator_check,
                                     self.callers.sessions is not None).routes())

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return serve_json_errors(lambda: self.dispatch(environ, start_response), environ, start_response,
                                 "internal error in the gateway")

    def dispatch(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """One request: a WSGI body, or a response (errors are raised, see ``serve_json_errors``)."""
        host = environ.get("HTTP_HOST")
        if host and not self.host_allowed(host):
            log.warning("refused a request for host %r (not in allowed_hosts)", host[:100])
            raise JSONHTTPError(400, f"host {protocol.short(host, 60)} is not served here (allowed_hosts)",
                                close=True)
        # A service's URL with or without a trailing slash (POST /queue/ worked in the original).
        path = environ.get("PATH_INFO", "")
        proxy = self.proxies.get(path[len(self.prefix):].removesuffix("/")) if path.startswith(self.prefix) else None
        if proxy is not None:  # the hot path, a command for a service, skips Werkzeug's Request
            return self.forward(proxy, environ, start_response)
        return self.route(Request(environ), environ, start_response)  # a route may answer by itself (WebSocket)

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
        user, role = self.callers.identify(environ)
        reply = self.pass_on(proxy, body, mimetype, environ.get("HTTP_AUTHORIZATION", ""), user=user, role=role,
                             peer=self.clients.address_of(environ))
        return raw_json_response(start_response, reply.body, reply.status)

    def pass_on(self, proxy: ServiceProxy, body: bytes, mimetype: str, authorization: str,
                user: str | None = None, role: str | None = None, peer: str = "") -> Reply:
        """A command body that has passed the HTTP checks, from a caller (``user`` and its ``role``,
        :mod:`shmooze.gateway.callers`; ``peer``: the client's address, :meth:`Clients.address`): the
        client policy, the client's rate limit, then the service's answer (errors are raised as
        :class:`JSONHTTPError`), the service told who sent the command. The WSGI path and the fast lane
        (``shmooze.gateway.lane``) both end here."""
        declared = self.declared[proxy.name]
        try:
            declared.keep_fresh()  # whether it may be sent again after a failure, even without a token
        except ForwardError as exc:  # unreachable: say so now, whatever the token, not after a second wait
            log.warning("forward to %s: %s", proxy.name, exc.message)
            raise JSONHTTPError(exc.status, exc.message) from None
        if not self.policy.open_to_all:
            self.check_access(proxy.name, body, authorization, role)
        sender = self.clients.admit(user, peer, lambda: not declared.body_only_reads(body)) if peer or user else b""
        body = wait_for_changes_here(self.watchers[proxy.name], body)
        try:
            return proxy.post(body, mimetype, repeatable=lambda: declared.body_only_reads(body), caller=sender)
        except ForwardError as exc:
            declared.forget()
            log.warning("forward to %s: %s", proxy.name, exc.message)
            raise JSONHTTPError(exc.status, exc.message) from None

    # -- discovery: services found through etcd -----------------------------------------------

    def follow_services(self) -> Directory:
        """Point every proxy where etcd says its service is reached, and keep doing so (a new leader, a
        service moved): the next request goes there, and pushes resume at once. Until a service has
        a registration its commands get a 503 that says so."""
        for name, proxy in self.proxies.items():
            proxy.retarget(None, vacancy=no_leader(name))
        directory = Directory.for_settings(self.settings)
        directory.subscribe(self.service_moved)
        return directory.start(wait=self.connect_timeout)

    def service_moved(self, name: str, found: Registration | None) -> None:
        """Service ``name`` is reached at ``found.url`` now (``found`` None: nowhere, between leaders)."""
        from urllib.parse import urlsplit

        proxy = self.proxies.get(name)
        if proxy is None:
            return
        if found is None:
            moved = proxy.retarget(None, vacancy=no_leader(name))
        else:
            parts = urlsplit(found.url)
            moved = proxy.retarget(parts.hostname, parts.port or 80)
        if moved:
            self.declared[name].moved()
            self.watchers[name].nudge()

    def session(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Response:
        """``{prefix}_session``: sign in, out, or who am I (:meth:`Callers.route`). A sign-in takes from the
        client's rate limit as a command that changes state does: guessing passwords is no faster than
        any other flood (and the argon2 threads stay free for everyone else)."""
        if environ.get("REQUEST_METHOD") == "POST":
            wait = self.clients.wait(None, self.clients.address_of(environ))
            if wait > 0:
                raise JSONHTTPError(429, self.clients.refusal(wait), {"Retry-After": retry_after(wait)})
        return self.callers.route(environ, start_response)

    # -- health, for a load balancer ----------------------------------------------------------

    def healthz(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Response:
        """``GET {wsgi_prefix}healthz``: 200 while this gateway reaches its services, 503 when it
        reaches none of them (cut off: a load balancer should send browsers elsewhere).

        Each service is asked ``status`` at once, each within ``connect_timeout``: one that answers
        is ``up``, one that takes a connection but not its answer in time is ``slow`` (reached: a
        busy service is no reason to take the gateway out), one that cannot be reached is ``down``.
        One service down is the same for every gateway, so it does not fail the check either (the
        load balancer would take every gateway out, and the services that work with them). Nor does a
        service with no leader right now (with etcd): the gateway learnt it from etcd, so it is not cut
        off, and every gateway sees the same.
        """
        import threading

        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            raise JSONHTTPError(405, "healthz is read with GET", {"Allow": "GET, HEAD"})
        found: dict[str, tuple[str, str]] = {}

        def ask(name: str, proxy: ServiceProxy) -> None:
            if proxy.vacancy is not None:
                found[name] = ("down", proxy.vacancy)
                return
            probe = ServiceProxy(name, proxy.host, proxy.port, timeout=self.connect_timeout,
                                 connect_timeout=self.connect_timeout, max_idle=0, signer=self.signer)
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
        vacant = self.directory is not None and self.directory.loaded.is_set() and \
            any(proxy.vacancy is not None for proxy in self.proxies.values())
        healthy = bool(up or slow or vacant) or not self.proxies
        return json_response({"healthy": healthy, "up": up, "slow": slow, "down": down}, 200 if healthy else 503)

    # -- what the dashboard needs (shmooze.gateway.dashboard) ------------------------------------------

    def render_metrics(self) -> tuple[bytes, str]:
        """Every service's figures, in the Prometheus text format: (body, content type)."""
        return render(gateway_stats().registry(self.proxies))

    def restart_service(self, name: str) -> None:
        """Restart service ``name`` through the run's supervisord, returning once it answers again.

        It runs here, in the gateway worker that took the dashboard's request: only this request's
        greenlet waits (supervisord's XML-RPC and the wait for the port are cooperative sockets and
        sleeps under gevent), the worker serves the others meanwhile; the gateway itself is not one
        of supervisord's services it restarts."""
        from shmooze.deploy import runner

        runner.restart(self.settings, [name])

    # -- access control ------------------------------------------------------------------

    def host_allowed(self, host: str) -> bool:
        """Whether the ``Host`` header names this gateway (a defence against DNS rebinding)."""
        return host_allowed(host, self.allowed_hosts, self.any_ip_host)

    def needs(self, service: str, items: list[protocol.Item]) -> str:
        """What these commands need of their caller (``anyone``, ``user``, ``operator``: the client policy)."""
        declared = self.declared[service]
        declared.learn(items)
        return self.policy.batch_needs(service, items, declared.is_read_only)

    def refuse(self, service: str, needed: str, what: str = "this command") -> JSONHTTPError:
        """The error for a caller who may not: the outage when the service's commands are not known
        (the service, not the caller, is the problem), else a 401 that says whether signing in helps."""
        declared = self.declared[service]
        if declared.known is None:
            vacancy = self.proxies[service].vacancy
            if vacancy is not None:  # between two leaders (etcd): say so, never ask to sign in
                return JSONHTTPError(503, vacancy)
            return JSONHTTPError(502, f"cannot tell what {service}'s commands need: {declared.failure}")
        if self.callers.sessions is None:  # no one signs in here: only the token opens it, as it always did
            return JSONHTTPError(401, refusal(what), {"WWW-Authenticate": "Bearer"})
        return SignInRequired(needed, what)

    def check_access(self, service: str, body: bytes, authorization: str, role: str | None) -> None:
        """Raise unless a caller of ``role`` (or the access token's holder) may send these commands."""
        try:
            items = protocol.parse_request(body).items
        except protocol.BodyError as exc:
            raise JSONHTTPError(400, str(exc)) from None
        needed = self.needs(service, items)
        if allows(role, needed) or (self.access.required and self.access.bearer_matches(authorization)):
            return
        raise self.refuse(service, needed)

    def operator_check(self, environ: dict[str, Any], what: str) -> None:
        """For the dashboard's routes (metrics, restart): an operator, unless no one could be one here."""
        if not self.callers.guarded:
            return
        if not allows(self.callers.identify(environ)[1], "operator"):
            if self.callers.sessions is None:
                self.access.check_bearer(environ.get("HTTP_AUTHORIZATION", ""), what)
            raise SignInRequired("operator", what)

    # -- the WebSocket ---------------------------------------------------------------------

    def websocket(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        from shmooze.http.websocket import is_websocket_request, websocket_response

        if not is_websocket_request(environ):
            raise JSONHTTPError(400, "this is the WebSocket endpoint: connect with a WebSocket")
        # The caller of the upgrade request (its session cookie...) for every message; a message's
        # ``token`` names the token's holder for that message only.
        self.callers.identify(environ)  # (stored in the upgrade's environ, as for every request)
        # Its headers and peer, kept while the socket is open only when the caller is asked again later
        # (a kilobyte or two, times every idle watcher).
        asked_again = self.callers.guarded or not self.policy.open_to_all
        upgrade = {k: v for k, v in environ.items() if isinstance(v, str)} if asked_again else {}
        user, peer = environ.get(USER_ENVIRON), self.clients.address_of(environ)

        def authorize(service: str, items: list[protocol.Item], msg: dict[str, Any]) -> str | dict[str, Any] | None:
            refused = check_access(service, items, msg)
            if refused is None and not self.declared[service].only_reads(items, ask=False):
                wait = self.clients.wait(user, peer)
                return self.clients.refusal(wait) if wait > 0 else None
            return refused

        def check_access(service: str, items: list[protocol.Item], msg: dict[str, Any]) -> str | dict[str, Any] | None:
            if self.policy.open_to_all:
                return None
            needed = self.needs(service, items)
            # Asked again each time: the user may have signed out since the WebSocket opened.
            if allows(self.callers.identify(dict(upgrade)).role, needed):
                return None
            if isinstance(msg.get("token"), str) and self.access.matches(msg["token"]):
                return None
            refused = self.refuse(service, needed)
            if isinstance(refused, SignInRequired):
                return refused.answer
            return refused.message if refused.code in (502, 503) else refusal("this command", "send it as 'token'")

        def caller_of(msg: dict[str, Any]) -> bytes:
            """The message's token names its holder; else the upgrade's caller (asked again when users
            can sign in or out while the socket is open)."""
            if isinstance(msg.get("token"), str) and self.access.matches(msg["token"]):
                return self.clients.header(caller.of_client(TOKEN_HOLDER.name, peer))
            name = self.callers.identify(dict(upgrade)).name if self.callers.guarded else user
            return self.clients.header(caller.of_client(name, peer))

        def session(ws: Any) -> PushSession:
            self.sockets.add(ws)
            sessions = gateway_stats().sessions
            sessions.inc()

            def ended() -> None:
                sessions.dec()
                self.sockets.discard(ws)

            return PushSession(ws, self.proxies, self.watchers, authorize,
                               lambda service, items: self.declared[service].only_reads(items, ask=False),
                               self.settings.ws_max_in_flight, self.settings.ws_outbox_bytes, caller_of, ended)

        s = self.settings
        loop = socket_loop() if gevent_sockets() else None
        # Idle WebSockets wait as entries of the worker's loop, at most gateway_connections of them; past
        # that, one holds a greenlet and a slot of the worker's connections, as a request does.
        hold = (lambda ws: session(ws).hold(loop)) if loop is not None and len(loop) < s.gateway_connections else None
        return websocket_response(environ, start_response, lambda ws: session(ws).run(), self.allowed_origins or None,
                                  max_message_size=self.max_body_bytes, ping_interval=s.ws_ping_interval,
                                  idle_timeout=s.ws_idle_timeout, message_timeout=s.ws_message_timeout,
                                  max_pings=s.ws_max_pings, hold=hold)

    def close_websockets(self) -> None:
        """Tell every open WebSocket the gateway is going away; browsers reconnect elsewhere."""
        import threading

        for ws in list(self.sockets):  # each close waits for its peer's answer: all at once
            threading.Thread(target=ws.close, args=(CLOSE_GOING_AWAY, "gateway stopping"), daemon=True).start()

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


def no_leader(name: str) -> str:
    """What a client hears while service ``name`` has no registration in etcd (between two leaders)."""
    return f"service {name!r} has no leader right now; retry in a few seconds"


def make_gateway(settings: Settings | None = None) -> Gateway:
    """The gateway for the given (or current) settings."""
    if settings is None:
        from shmooze import settings as current

        settings = current.current()
    return Gateway(settings)


