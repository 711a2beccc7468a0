"""The gateway's forwarding hop: kept-alive HTTP/1.1 connections to one local service.

The hop is on every command's path, so it is lean: a small pool of open sockets,
the request written in one ``send``, and the answer read by its
``Content-Length`` (the peer is always gunicorn serving a shmooze service, which
sends one). This costs about half of ``urllib3`` and a quarter of ``requests``
(see bench/). Under gunicorn's gevent worker the sockets are cooperative, so a
waiting request holds a connection, not a thread.

Kept-alive connections go stale: a service closes one after it has been idle for its
keep-alive time (``service_keepalive``, 120 s by default). So a connection idle longer
than ``idle_timeout`` (below that) is never reused, and one the service has closed (its
end-of-stream is already waiting) is dropped before use. A command is sent again only
when it cannot have reached the service (the write itself failed on a connection the
service had closed) or when it changes nothing; otherwise a service that stops while
running it is answered with :data:`MAY_HAVE_RUN`, never by running it twice.

A proxy can be pointed elsewhere while in use (:meth:`ServiceProxy.retarget`: a service that moved to
another host, found through etcd): the next request goes to the new address, and no connection to
the old one is used again (the idle ones are closed at once, the busy ones are cut: a long poll
waiting on a host that is gone would otherwise wait for its timeout).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple

from shmooze.caller import HEADER as CALLER_HEADER
from shmooze.http.heads import HeadError, ResponseHead, head_end, parse_response
from shmooze.servicekey import AUTH_HEADER, HELLO, Signer
from shmooze.system.cooperative import gevent_sockets, native_poll

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 << 10
_CALLER = CALLER_HEADER.encode() + b": "
#: What a client hears when the service stopped during a command that changes state.
MAY_HAVE_RUN = "the service stopped while running this command; it may or may not have run"


class ForwardError(Exception):
    """The service could not be reached or did not answer; ``status`` is 502 or 504 (503: it has no
    address right now, see :meth:`ServiceProxy.retarget`). ``impostor``:
    what answered did not prove it holds the service key."""

    def __init__(self, status: int, message: str, impostor: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.impostor = impostor


class _Closed(Exception):
    """The service closed the connection before answering."""


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str


class _TimedOut(Exception):
    """A connection's timer (under gevent) ran out."""


class RestartingTimer:
    """A gevent timer for one wait after another (each exchange on a kept-alive connection): every
    :meth:`start` gives the full ``seconds``, from now, to the greenlet that started it.

    Not gevent's ``Timeout`` started again after ``cancel``: libev keeps what was left of a stopped
    timer, so a reused ``Timeout`` runs only for the rest of its time. A kept-alive connection's timer
    ran out once its exchanges had taken ``seconds`` in all, and every later exchange "timed out" at
    once: 504 for commands the service went on to run (the soak's phantom modules)."""

    __slots__ = ("_timer", "_exception", "_current")

    def __init__(self, seconds: float, exception: type[BaseException]):
        from gevent import get_hub, getcurrent

        self._timer = get_hub().loop.timer(seconds, seconds)  # repeating: ``again`` starts it at its full time
        self._exception = exception
        self._current = getcurrent

    def start(self) -> None:
        self._timer.again(self._current().throw, self._exception, update=True)

    def cancel(self) -> None:
        self._timer.stop()


class _Connection:
    """One kept-alive socket to the service and what was read past the last answer."""

    max_answer_bytes = 64 << 20

    def __init__(self, sock: socket.socket, timeout: float | None = None):
        self.sock = sock
        self.buf = b""
        #: The proxy's target when this connection was made (see ServiceProxy.retarget).
        self.generation = 0
        self.idle_since = time.monotonic()
        #: The ``Shmooze-Proof`` of the last answer read (None: it had none).
        self.proof: str | None = None
        self.head_size = 0  # (see read_head)
        self._poll = native_poll()  # registered once: looks_closed is one system call
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        #: Under gevent one timer bounds each exchange (``timeout`` s): a socket timeout would cost a
        #: new timer at every wait. Elsewhere (threads) the socket's own timeout does it.
        self.timer: Any = None
        if timeout is not None and gevent_sockets():
            self.timer = RestartingTimer(timeout, _TimedOut)
            sock.settimeout(None)

    def looks_closed(self) -> bool:
        """True when the service has closed its end (or sent something unasked): not reusable.

        A poll with no wait, on the real ``poll`` even under gevent: it never switches greenlets.
        """
        if self.buf:
            return True
        try:
            return bool(self._poll.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    @contextlib.contextmanager
    def bounded(self, timeout: float) -> Iterator[None]:
        """What is done within is bounded by ``timeout`` seconds (this connection's gevent timer, set to
        it, else the socket's timeout)."""
        if self.timer is None:
            self.sock.settimeout(timeout)
            yield
            return
        self.timer.start()
        try:
            yield
        finally:
            self.timer.cancel()

    def read_head(self) -> ResponseHead:
        """Read until the end of an answer's head and parse it, leaving it in the buffer (for
        :meth:`read_reply`); its end is :attr:`head_size` bytes in."""
        buf = self.buf
        try:
            while (end := head_end(buf, MAX_HEADER_BYTES)) < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise _Closed()
                buf += chunk
            head = parse_response(buf, end, MAX_HEADER_BYTES)
        except HeadError as exc:
            raise ForwardError(502, f"the service answered something that is not HTTP/1.1: {exc}") from None
        self.buf = buf
        self.head_size = end + 4
        proof = head.fields.get(b"shmooze-proof")
        self.proof = proof.decode("latin-1") if proof is not None else None
        return head

    def read_reply(self) -> tuple[Reply, bool]:
        """Read one answer; return it and whether the connection may be used again."""
        head = self.read_head()
        buf, end = self.buf, self.head_size - 4
        if head.chunked:
            raise ForwardError(502, "the service answered without a Content-Length")
        fields = head.fields
        raw_type = fields.get(b"content-type")
        content_type = raw_type.decode("latin-1") if raw_type is not None else "application/json"
        status, length, keep = head.status, head.content_length, head.keep_alive
        body = buf[end + 4:]
        if length is None:  # the answer runs to the end of the connection
            chunks = [body]
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            self.buf = b""
            return Reply(status, b"".join(chunks), content_type), False
        if length > self.max_answer_bytes:
            raise ForwardError(502, f"the service's answer of {length} bytes is over the limit of "
                                    f"{self.max_answer_bytes} bytes")
        while len(body) < length:
            chunk = self.sock.recv(max(65536, length - len(body)))
            if not chunk:
                raise ForwardError(502, "the service closed the connection in the middle of its answer")
            body += chunk
        self.buf = body[length:]
        return Reply(status, body[:length], content_type), keep


def _notice_lost_hosts(sock: socket.socket, timeout: float) -> None:
    """Let the kernel end a connection whose peer's host has vanished within about ``timeout``:
    data sent and not acknowledged for that long (TCP_USER_TIMEOUT), or an idle connection whose
    keep-alive probes go unanswered (a long poll waiting on a host that lost its link)."""
    ms = max(100, int(timeout * 1000))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(timeout)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, ms)
    except (AttributeError, OSError):  # not Linux: the forward timeout still bounds every wait
        pass


#: The content type of a kept stream of change events (:mod:`shmooze.http.changestream`).
STREAM_TYPE = b"application/x-ndjson"


class Stream:
    """A kept stream of change events from a service: one line of JSON per batch (see
    :meth:`ServiceProxy.stream`). Each wait for a line is bounded by the proxy's timeout: the service
    sends an empty line every few seconds while nothing happens."""

    def __init__(self, proxy: ServiceProxy, conn: _Connection):
        self.proxy = proxy
        self.conn = conn
        conn.buf = conn.buf[conn.head_size:]

    def next_line(self) -> bytes:
        """The next line, without its newline (empty: the service is there, nothing happened); a
        :class:`ForwardError` once the stream has ended (closed, cut by a retarget, silent too long)."""
        conn = self.conn
        buf = conn.buf
        try:
            while (end := buf.find(b"\n")) < 0:
                if len(buf) > conn.max_answer_bytes:
                    raise ForwardError(502, f"a line of the service's change stream is over the limit of "
                                            f"{conn.max_answer_bytes} bytes")
                with conn.bounded(self.proxy.timeout):
                    chunk = conn.sock.recv(65536)
                if not chunk:
                    raise ForwardError(502, f"service {self.proxy.name!r} ended its change stream")
                buf += chunk
        except (socket.timeout, TimeoutError, _TimedOut):
            raise ForwardError(504, f"service {self.proxy.name!r} sent nothing for {self.proxy.timeout:g} s") from None
        except OSError as exc:
            raise ForwardError(502, f"service {self.proxy.name!r}: its change stream broke: {exc}") from None
        conn.buf = buf[end + 1:]
        return buf[:end]

    def close(self) -> None:
        self.proxy._drop(self.conn)  # noqa: SLF001 - the stream is the proxy's own


class ServiceProxy:
    """Posts bodies to ``http://host:port/`` over pooled kept-alive connections.

    With a ``signer`` (the service key, :mod:`shmooze.servicekey`) every new connection first
    sends an empty signed batch and takes the connection only when the answer is proven, and every
    request is signed and its answer proven: nothing is sent to, and no answer is taken from, a
    process that took the service's port. Without one, a service on loopback is trusted only when
    the kernel says its socket belongs to this user.
    """

    def __init__(self, name: str, host: str, port: int, timeout: float = 30.0, connect_timeout: float = 2.0,
                 max_idle: int = 64, idle_timeout: float = 60.0, max_answer_bytes: int = 64 << 20,
                 headers: dict[str, str] | None = None, signer: Signer | None = None):
        self.name = name
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        #: A connection idle for longer is closed, not reused (keep it below the service's keep-alive).
        self.idle_timeout = idle_timeout
        self.max_answer_bytes = max_answer_bytes
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._host_header = f"{host}:{port}".encode("latin-1")
        self.signer = signer
        #: Why there is no address to send to right now (a service between two leaders), else None.
        self.vacancy: str | None = None
        self._generation = 0  # bumped by retarget: older connections are never used again
        self._busy: set[_Connection] = set()  # connections in an exchange (cut by retarget)
        #: Whether a new connection is checked before use (see _take).
        self._check_first = True
        #: Headers sent with every request.
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._heads: dict[str, bytes] = {}  # content type -> the request's head up to Content-Length
        from shmooze.settings import is_loopback

        #: Only a service on another host can vanish without a word (see _notice_lost_hosts).
        self._remote = not is_loopback(host)

    def retarget(self, host: str | None, port: int = 0, vacancy: str = "") -> bool:
        """Send to ``host:port`` from the next request on (``host`` None: nowhere, every request is a 503
        saying ``vacancy``); whether the target changed. Connections to the old target are not used again."""
        if (None if self.vacancy is not None else (self.host, self.port)) == \
                (None if host is None else (host, port)):
            self.vacancy = vacancy if host is None else None
            return False
        from shmooze.settings import is_loopback

        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
            busy = list(self._busy)
            if host is None:
                self.vacancy = vacancy or f"service {self.name!r} has no address right now"
            else:
                self.host, self.port = host, port
                self._host_header = f"{host}:{port}".encode("latin-1")
                self._heads = {}
                self._remote = not is_loopback(host)
                self._check_first = True
                self.vacancy = None
        for conn in idle:
            conn.close()
        for conn in busy:  # wake whoever waits on it: it hears the connection closed
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return True

    def _take(self) -> tuple[_Connection, bool]:
        """A live kept-alive connection (the most recently used), else a new one."""
        stale = []
        conn = None
        with self._lock:
            while self._idle:
                candidate = self._idle.pop()
                if candidate.generation != self._generation:
                    stale.append(candidate)
                elif time.monotonic() - candidate.idle_since > self.idle_timeout:
                    stale.extend(self._idle)  # older still: every one of them has expired too
                    stale.append(candidate)
                    self._idle.clear()
                elif candidate.looks_closed():
                    stale.append(candidate)
                else:
                    conn = candidate
                    break
        for old in stale:
            old.close()
        if conn is not None:
            return conn, True
        conn = self._connect()
        try:
            if self._identify(conn):
                return conn, False
        except BaseException:
            conn.close()
            raise
        # The service proved itself but closes every connection after one answer (not gunicorn: a
        # development server): from now on each answer alone is proven, on a new connection.
        conn.close()
        log.warning("service %r keeps no connection open after an answer: its answers are proven, but requests "
                    "are sent before it is checked", self.name)
        self._check_first = False
        return self._connect(), False

    def _connect(self) -> _Connection:
        generation = self._generation  # (before: a retarget meanwhile leaves this one unused)
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._remote:
            _notice_lost_hosts(sock, self.connect_timeout)
        conn = _Connection(sock, self.timeout)
        conn.max_answer_bytes = self.max_answer_bytes
        conn.generation = generation
        return conn

    def _identify(self, conn: _Connection) -> bool:
        """Make sure a new connection reaches the service itself before anything is sent on it; False
        when the service proved itself but closed the connection after its answer."""
        if self.signer is None:
            if not self._remote:
                self._check_owner(conn)
            return True
        if not self._check_first:
            return True
        auth, nonce = self.signer.sign(HELLO)
        request = (b"POST / HTTP/1.1\r\nHost: " + self._host_header + b"\r\nContent-Type: application/json\r\n"
                   + AUTH_HEADER.encode() + b": " + auth.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(HELLO)
                   + HELLO)
        timer = None
        if conn.timer is not None:  # under gevent: a timer of its own, for connect_timeout
            from gevent import Timeout

            timer = Timeout(self.connect_timeout, _TimedOut)
        try:
            if timer is None:
                conn.sock.settimeout(self.connect_timeout)
            else:
                timer.start()
            conn.sock.sendall(request)
            reply, keep = conn.read_reply()
        except (socket.timeout, TimeoutError, _TimedOut):
            raise ForwardError(504, f"service {self.name!r} did not answer its connection's check within "
                                    f"{self.connect_timeout:g} s (connect_timeout)") from None
        except (_Closed, OSError) as exc:
            raise ForwardError(502, f"service {self.name!r} closed the connection at its check: {exc or 'closed'}") from None
        finally:
            if timer is not None:
                timer.cancel()
        if not self.signer.proven(nonce, reply.status, reply.body, conn.proof):
            raise ForwardError(502, self.impostor(), impostor=True)
        return keep

    def _check_owner(self, conn: _Connection) -> None:
        from shmooze.system.peer import peer_socket

        found = peer_socket(conn.sock)
        if found is None or found[1] != os.geteuid():
            owner = "an unknown user" if found is None else f"uid {found[1]}"
            raise ForwardError(502, f"service {self.name!r}: port {self.port} is held by a process of {owner}, "
                                    "not of this application's user; nothing was sent")

    def impostor(self) -> str:
        """What a client hears when the port's answer is not proven with the service key."""
        return (f"service {self.name!r}: the process on {self.host}:{self.port} did not prove it holds the "
                "service key (another program may have taken the port, or the gateway and the service use "
                "different keys); nothing was taken from it")

    def _give_back(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < self.max_idle and conn.generation == self._generation:
                self._idle.append(conn)
                return
        conn.close()

    def post(self, body: bytes, content_type: str = "application/json", path: str = "/",
             headers: dict[str, str] | None = None,
             repeatable: Callable[[], bool] | None = None, caller: bytes = b"") -> Reply:
        """Send one command body and return the service's answer.

        ``caller``: who sent it (:func:`shmooze.caller.encode`), in the ``Shmooze-Caller`` header, which the
        signature covers: the service records it only from a signed request.

        It is sent a second time only when the first try cannot have reached the service (the
        write failed on a kept-alive connection the service had closed), or when ``repeatable()``
        says the body only reads (asked only then, so the hot path parses nothing). A service that closes the
        connection after taking the request
        is a :class:`ForwardError` 502 with :data:`MAY_HAVE_RUN`.
        """
        request, nonce = self._request(body, content_type, path, headers, caller)
        for attempt in (0, 1):
            if self.vacancy is not None:
                raise ForwardError(503, self.vacancy)
            conn, reused = self._take_or_fail()
            sent = False
            timer = conn.timer
            self._busy.add(conn)
            try:
                if timer is None:
                    conn.sock.settimeout(self.timeout)
                else:
                    timer.start()
                written = conn.sock.send(request)  # all of it, nearly always: no sendall (under gevent it
                if written < len(request):  # asks the socket's buffer size first, one more system call)
                    conn.sock.sendall(request[written:])
                sent = True
                reply, keep = conn.read_reply()
            except (socket.timeout, TimeoutError, _TimedOut) as exc:
                conn.close()
                if getattr(exc, "errno", None) == errno.ETIMEDOUT:  # unacknowledged: the host is gone
                    raise ForwardError(502, f"service {self.name!r} cannot be reached: its host stopped "
                                            f"answering (nothing acknowledged within {self.connect_timeout:g} s)") from None
                raise ForwardError(504, f"service {self.name!r} did not answer within {self.timeout:g} s") from None
            except (_Closed, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if attempt == 0 and ((reused and not sent) or (repeatable is not None and repeatable())):
                    continue  # it never reached the service, or running it twice changes nothing
                if not sent:
                    raise ForwardError(502, f"service {self.name!r} closed the connection: {exc}") from exc
                raise ForwardError(502, f"service {self.name!r}: {MAY_HAVE_RUN}") from exc
            except ForwardError:
                conn.close()
                raise
            except (OSError, ValueError) as exc:
                conn.close()
                raise ForwardError(502, f"service {self.name!r} failed: {exc}") from exc
            finally:
                self._busy.discard(conn)
                if timer is not None:
                    timer.cancel()
            return self._taken(conn, reply, keep, nonce)
        raise AssertionError("unreachable")

    def _taken(self, conn: _Connection, reply: Reply, keep: bool, nonce: bytes) -> Reply:
        """``reply`` once proven (else the impostor's 502), its connection kept for the next or closed."""
        if self.signer is not None and not self.signer.proven(nonce, reply.status, reply.body, conn.proof):
            conn.close()
            raise ForwardError(502, self.impostor(), impostor=True)
        if keep:
            self._give_back(conn)
        else:
            conn.close()
        return reply

    def _request(self, body: bytes, content_type: str = "application/json", path: str = "/",
                 headers: dict[str, str] | None = None, caller: bytes = b"") -> tuple[bytes, bytes]:
        """The whole request for ``body``, signed when there is a signer, and its nonce (else empty)."""
        start = self._heads.get(content_type) if path == "/" and not headers else None
        if start is None:
            extra = self._fixed_headers + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            start = (f"POST {path} HTTP/1.1\r\nHost: ".encode("latin-1") + self._host_header
                     + f"\r\nContent-Type: {content_type}\r\n{extra}".encode("latin-1"))
            if path == "/" and not headers and len(self._heads) < 8:
                self._heads[content_type] = start  # the same few heads every time: built once
        nonce = b""
        if caller:
            start += _CALLER + caller + b"\r\n"
        if self.signer is not None:
            auth, nonce = self.signer.sign(body, path, caller)
            start += AUTH_HEADER.encode() + b": " + auth.encode() + b"\r\n"
        return start + b"Content-Length: %d\r\n\r\n" % len(body) + body, nonce

    def _take_or_fail(self) -> tuple[_Connection, bool]:
        """:meth:`_take`, its failures told as :class:`ForwardError` (502)."""
        host, port = self.host, self.port  # (what the messages name, should it move meanwhile)
        try:
            return self._take()
        except (ConnectionRefusedError, FileNotFoundError):
            raise ForwardError(502, f"service {self.name!r} is down (nothing listens on port {port})") from None
        except (socket.timeout, TimeoutError):
            raise ForwardError(502, f"service {self.name!r} cannot be reached: no connection to "
                                    f"{host} within {self.connect_timeout:g} s (connect_timeout)") from None
        except OSError as exc:
            raise ForwardError(502, f"service {self.name!r} cannot be reached: {exc.strerror or exc}") from exc

    def stream(self, body: bytes) -> Stream | Reply:
        """Send ``body`` (``changes`` with ``stream``) and return the kept stream its answer opens
        (:mod:`shmooze.http.changestream`), or the plain answer of a service that answered it as a long poll.
        The stream's connection is its own until :meth:`Stream.close`; :meth:`retarget` cuts it."""
        if self.vacancy is not None:
            raise ForwardError(503, self.vacancy)
        request, nonce = self._request(body)
        conn = self._take_or_fail()[0]
        self._busy.add(conn)
        try:
            with conn.bounded(self.timeout):
                conn.sock.sendall(request)
                head = conn.read_head()
        except (socket.timeout, TimeoutError, _TimedOut):
            self._drop(conn)
            raise ForwardError(504, f"service {self.name!r} did not answer within {self.timeout:g} s") from None
        except (_Closed, OSError, ValueError) as exc:
            self._drop(conn)
            raise ForwardError(502, f"service {self.name!r} closed the connection: {exc or 'closed'}") from None
        if self.signer is not None and not self.signer.proven(nonce, head.status, b"", conn.proof) \
                and head.fields.get(b"content-type") == STREAM_TYPE:
            self._drop(conn)
            raise ForwardError(502, self.impostor(), impostor=True)
        if head.fields.get(b"content-type") == STREAM_TYPE and head.status == 200:
            return Stream(self, conn)
        try:  # a plain answer (a long poll): read as any
            with conn.bounded(self.timeout):
                reply, keep = conn.read_reply()
        except (socket.timeout, TimeoutError, _TimedOut, _Closed, OSError, ForwardError) as exc:
            self._drop(conn)
            raise ForwardError(502, f"service {self.name!r} failed: {exc or 'closed'}") from None
        self._busy.discard(conn)
        return self._taken(conn, reply, keep, nonce)

    def _drop(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
