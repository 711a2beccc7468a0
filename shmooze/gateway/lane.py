"""The gateway's fast lane: plain command requests forwarded without gunicorn's per-request work.

Most of what a gateway worker spends on a forwarded command is gunicorn's, not the forward's:
parsing the head into a request object, building the WSGI environ, the response object and its
headers, a timeout per request. A minimal relay does none of it. :class:`GatewayWorker` is
gunicorn's gevent worker with one change: on each kept-alive connection it first tries the lane,
which takes only the plainest requests, the ones a browser or client sends for every command::

    POST {wsgi_prefix}SERVICE HTTP/1.1      (a service of the settings, no query)
    Host, Content-Type (JSON), Content-Length, and at most Origin, Authorization, Cookie, Connection
    (and X-Forwarded-For from a reverse proxy)

and answers them the way the WSGI path would: the same checks (``allowed_hosts``, the Origin, the
body's size and its arrival rate, the access token and the read-only table, through
:meth:`shmooze.gateway.app.Gateway.pass_on`) and the same errors, with the service's answer sent back
in one write. Every other request (another method or path, ``Transfer-Encoding``, ``Expect``,
``Upgrade``, a head that came in pieces or breaks a rule (:mod:`shmooze.http.heads` parses it), a
repeated header, a refused Host or Origin, a body over the limit...) is left, with every byte read
so far, to gunicorn's parser and the WSGI application, which decide as always; the connection comes back to the lane after it.
The lane is off (gunicorn's own loop serves everything) with TLS, the PROXY protocol or h2c.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from gevent import GreenletExit
from gunicorn import http, util
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from shmooze.http import heads
from shmooze.http.forward import RestartingTimer

if TYPE_CHECKING:
    from shmooze.gateway.app import Gateway

log = logging.getLogger(__name__)

#: Longest head the lane parses; a longer one goes to gunicorn (which has its own limits).
MAX_HEAD = 8192
#: Headers that change how a request is framed or answered: such a request goes to gunicorn.
_NOT_PLAIN = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"http2-settings", b"te", b"trailer"})
_CONNECTION_OPTIONS = frozenset({b"keep-alive", b"close"})


class Head(NamedTuple):
    """A plain command request's head, as the lane reads it (the raw bytes of each header)."""

    path: bytes
    host: bytes | None
    content_type: bytes  # the media type, lower case, without parameters
    length: int
    origin: bytes | None
    authorization: bytes
    cookie: bytes
    close: bool  # ``Connection: close``
    forwarded_for: bytes | None  # ``X-Forwarded-For`` (taken only from a trusted proxy)


def parse_head(data: bytes, end: int) -> Head | None:
    """The head ``data[:end]`` (its blank line at ``end``) of a plain command request, else ``None``.

    No I/O: the caller has read it. ``None`` means "not for the lane", never "bad": gunicorn
    then parses the same bytes and answers whatever is wrong with them."""
    try:
        head = heads.parse_request(data, end, MAX_HEAD)
    except heads.HeadError:
        return None
    fields = head.fields
    if (head.method != b"POST" or head.version != b"1.1" or head.content_length is None
            or not _NOT_PLAIN.isdisjoint(fields) or not head.connection <= _CONNECTION_OPTIONS):
        return None
    return Head(head.target, fields.get(b"host"), fields.get(b"content-type", b"").split(b";", 1)[0].strip().lower(),
                head.content_length, fields.get(b"origin"), fields.get(b"authorization", b""),
                fields.get(b"cookie", b""), not head.keep_alive, fields.get(b"x-forwarded-for"))


class _Received:
    """The rest of a body, read from the client's socket (for ``httpjson``'s paced body reader), under
    one deadline for all of it: ``read`` returns only once it has ``size`` bytes (or the client closed),
    so a client trickling a byte at a time cannot restart the reader's budget with every ``recv``."""

    def __init__(self, sock: Any, deadline: float):
        self.sock = sock
        self.deadline = deadline  # on the monotonic clock

    def read(self, size: int) -> bytes:
        pieces = []
        while size > 0:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request body did not arrive in time")
            self.sock.settimeout(left)  # (the reader puts the socket's own timeout back after the body)
            piece = self.sock.recv(size)
            if not piece:
                break
            pieces.append(piece)
            size -= len(piece)
        return b"".join(pieces)


class Lane:
    """Serves the plain command requests of one gateway (see the module's docstring)."""

    def __init__(self, gateway: Gateway, worker: Any, keepalive: float):
        from shmooze.http import jsonapp

        self.gateway = gateway
        self.worker = worker
        self.keepalive = keepalive
        self.services = {(gateway.prefix + name).encode("latin-1"): proxy for name, proxy in gateway.proxies.items()}
        self.services.update({path + b"/": proxy for path, proxy in list(self.services.items())})
        self.json_types = frozenset(t.encode("latin-1") for t in jsonapp.JSON_TYPES)
        self.read_body = jsonapp.read_body
        self.http_error = jsonapp.JSONHTTPError
        self._hosts: dict[bytes, bool] = {}  # Host header -> allowed (a few values in practice)
        self._origins: dict[tuple[bytes, bytes], bool] = {}
        #: A ``user_hook`` or ``user_header`` needs the whole request: then every command goes to the WSGI path.
        self.plain_callers = gateway.callers.plain_requests_suffice

    def serve(self, sock: Any, addr: Any, buf: bytes) -> bytes | None:
        """Serve plain requests on ``sock`` (``buf``: bytes already read from it) until one is not
        plain: return every byte read of it, for gunicorn. ``None``: the connection is done."""
        sock.settimeout(None)  # waits are bounded by one timer per connection: cheaper than a socket timeout
        peer = _address(addr)
        idle = RestartingTimer(self.keepalive, _Idle)  # the whole keep-alive time for every wait
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if buf:
                    return buf  # a head in pieces: gunicorn reads it, with its own limits and timeouts
                idle.start()
                try:
                    buf = sock.recv(65536)
                except _Idle:
                    return None  # idle for the keep-alive time, as gunicorn's loop would close it
                finally:
                    idle.cancel()
                if not buf:
                    return None
                continue
            head = parse_head(buf, end)
            proxy = self.services.get(head.path) if head is not None else None
            if head is None or proxy is None or not self._plain(head):
                return buf
            start = end + 4
            if len(buf) - start >= head.length:
                body, buf = buf[start:start + head.length], buf[start + head.length:]
            else:
                body = buf[start:]
                gateway = self.gateway
                # The budget read_body gives a body: body_timeout plus its size at body_min_rate, here for
                # the whole of it.
                deadline = time.monotonic() + gateway.body_timeout + head.length / gateway.body_min_rate
                try:
                    body += self.read_body({"gunicorn.socket": sock, "REMOTE_ADDR": _address(addr)},
                                           _Received(sock, deadline), head.length - len(body), gateway.max_body_bytes,
                                           gateway.body_timeout, gateway.body_min_rate)
                except self.http_error as exc:
                    self._send(sock, self._error(exc, True), idle)
                    return None
                buf = b""
            worker = self.worker
            worker.nr += 1
            if worker.nr >= worker.max_requests and worker.alive:
                log.info("Autorestarting worker after current request.")
                worker.alive = False
            close = head.close or not worker.alive
            try:
                forwarded = head.forwarded_for.decode("latin-1") if head.forwarded_for is not None else None
                authorization = head.authorization.decode("latin-1") if head.authorization else ""
                user, role = self.gateway.callers.from_headers(head.cookie.decode("latin-1"), authorization)
                reply = self.gateway.pass_on(proxy, body, head.content_type.decode("latin-1"), authorization,
                                             user=user, role=role, peer=self.gateway.clients.address(peer, forwarded))
                answer = heads.json_answer(reply.status, reply.body, close)
            except self.http_error as exc:
                close = close or exc.close
                answer = self._error(exc, close)
            except Exception:
                log.exception("internal error in the gateway on POST %s", head.path.decode("latin-1"))
                from shmooze import protocol

                answer = heads.json_answer(500, protocol.dumps(protocol.error("internal error in the gateway")), close)
            self._send(sock, answer, idle)
            if close:
                return None

    def _plain(self, head: Head) -> bool:
        """Whether the WSGI path would take this request as it is (else it goes there, to answer why not)."""
        if head.content_type not in self.json_types or head.length > self.gateway.max_body_bytes:
            return False
        if head.host is None or not self.plain_callers:
            return False
        allowed = self._hosts.get(head.host)
        if allowed is None:
            allowed = self._remember(self._hosts, head.host, self.gateway.host_allowed(head.host.decode("latin-1")))
        if not allowed:
            return False
        if head.origin is None:
            return True
        key = (head.origin, head.host)
        allowed = self._origins.get(key)
        if allowed is None:
            from shmooze.http.websocket import check_origin

            environ = {"HTTP_ORIGIN": head.origin.decode("latin-1"), "HTTP_HOST": head.host.decode("latin-1"),
                       "wsgi.url_scheme": "http"}
            allowed = self._remember(self._origins, key, check_origin(environ, self.gateway.allowed_origins))
        return allowed

    @staticmethod
    def _remember(table: dict[Any, bool], key: Any, value: bool) -> bool:
        if len(table) >= 256:
            table.clear()  # many different values: a scan, not a browser; start again
        table[key] = value
        return value

    def _error(self, exc: Any, close: bool) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in exc.extra_headers.items())
        return heads.json_answer(exc.code, exc.body(), close, extra)

    @staticmethod
    def _send(sock: Any, data: bytes, timer: Any) -> None:
        """One ``send`` nearly always takes a whole answer; the rest within the keep-alive time."""
        sent = sock.send(data)
        if sent < len(data):
            timer.start()
            try:
                sock.sendall(data[sent:])
            except _Idle:
                raise TimeoutError("the client did not take its answer within the keep-alive time") from None
            finally:
                timer.cancel()


class _Idle(Exception):
    """A connection's timer ran out."""


def _address(addr: Any) -> str:
    return str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)


class GatewayWorker(GeventWorker):
    """gunicorn's gevent worker, with the gateway's fast lane in front of its request loop."""

    lane: Lane | None = None

    def load_wsgi(self) -> None:
        super().load_wsgi()
        from shmooze.gateway.app import Gateway

        cfg = self.cfg
        plain_http = (not cfg.is_ssl and str(getattr(cfg, "proxy_protocol", "off")).lower() in ("off", "false", "none")
                      and str(getattr(cfg, "http2_cleartext", "off")).lower() in ("off", "false", "none"))
        if isinstance(self.wsgi, Gateway) and plain_http and cfg.keepalive:
            self.lane = Lane(self.wsgi, self, float(cfg.keepalive))

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's error answers (a request its parser refuses), as JSON rather than its HTML page."""
        from shmooze.http.jsonapp import answer_worker_error

        answer_worker_error(super().handle_error, req, client, addr, exc)

    def run(self) -> None:
        """gunicorn's, then (stopping) the WebSockets a loop holds close as its requests did."""
        super().run()
        from shmooze.http.wsloop import wait_closed

        wait_closed(float(self.cfg.graceful_timeout))

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        lane = self.lane
        if lane is None:
            super().handle(listener, client, addr)
            return
        req = None
        try:
            pending: bytes | None = b""
            while pending is not None:
                pending = lane.serve(client, addr, pending)
                if pending is not None:
                    client.settimeout(None)  # gunicorn's own handling, as its loop sets the socket
                    req, pending = self._one_request(listener, client, addr, pending)
        except http.errors.NoMoreData as exc:
            self.log.debug("Ignored premature client disconnection. %s", exc)
        except StopIteration as exc:
            self.log.debug("Closing connection. %s", exc)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, None):
                self.log.exception("Socket error processing request.")
        except Exception as exc:  # noqa: BLE001 - as gunicorn: a 400 for what its parser refuses, else a 500
            self.handle_error(req, client, addr, exc)
        finally:
            util.close(client)

    def _one_request(self, listener: Any, client: Any, addr: Any, pending: bytes) -> tuple[Any, bytes | None]:
        """One request the lane left, through gunicorn's parser and the WSGI app (bytes read with it
        first); then what was read past it, for the lane, or ``None`` when the connection ends."""
        parser = http.get_parser(self.cfg, client, addr)
        parser.unreader.unread(pending)
        req = None
        with self.timeout_ctx():  # (silent: at the keep-alive time, req stays None)
            req = next(parser)
        if not req:
            return None, None
        try:  # (gevent's worker's own handle_request swallows whether the app answered by itself)
            kept = AsyncWorker.handle_request(self, listener.getsockname(), req, client, addr)
        except (GreenletExit, SystemExit):
            return req, None
        if not kept:
            return req, None  # answered by the app itself (a WebSocket)
        if req.should_close() or not parser.finish_body(deadline=time.monotonic() + float(self.cfg.keepalive)):
            return req, None
        return req, parser.unreader.take_buffered()
