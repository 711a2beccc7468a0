"""The gunicorn worker of a service: quick commands answered on the connection loop, the rest on threads.

gunicorn's ``gthread`` worker hands every request of a kept-alive connection from its loop thread
(which waits for readable sockets) to a pool thread, and the connection back to the loop when the
answer is sent. For a short command those handovers, each a trip of the GIL between two threads,
cost more than the command. :class:`LoopWorker` is ``gthread`` with one shortcut: when a
connection becomes readable and one ``recv`` brings exactly one whole request (its head and a body
of known length, nothing more) and the app says it answers at once (every command in it declared
``quick``: it answers from memory and never waits), the loop thread answers it itself, writing
without blocking. Everything else goes ``gthread``'s way, on a pool thread, unchanged:

- a request that came in pieces (a slow or large body), chunked, with ``Expect`` or ``Upgrade``;
- commands that change state or may wait (a long poll on ``changes``, anything calling a module);
- the part of an answer the socket would not take at once: a pool thread sends it, blocking.

So nothing that may block ever runs on the loop: a slow client or command holds one pool thread,
as before, while the loop goes on serving every other connection. Keep-alive timeouts, the
connection limit and the graceful stop are ``gthread``'s own.
"""

from __future__ import annotations

import errno
import selectors
import time
from concurrent import futures
from functools import partial
from typing import Any, Callable

from gunicorn import http
from gunicorn.workers import gthread

from shmooze.http import heads
from shmooze.http.jsonapp import answer_worker_error

#: What the loop reads of a connection at once; a request that does not fit goes to a pool thread.
READ_SIZE = 64 << 10

#: Headers with which a request is not simply its head and a body of known length.
_NOT_SIMPLE = frozenset({b"expect", b"upgrade"})


def whole_request(data: bytes) -> int | None:
    """Where the body starts when ``data`` is exactly one whole request with a body of known length
    (``Content-Length``, or none); None for anything else (which the pool's parser then reads)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    try:
        head = heads.parse_request(data, end)
    except heads.HeadError:  # gunicorn's parser, on the pool, answers what is wrong
        return None
    length = head.body_length
    if length is None or not _NOT_SIMPLE.isdisjoint(head.fields):
        return None
    return end + 4 if len(data) == end + 4 + length else None


class _LoopSocket:
    """A connection's socket as the loop writes to it: never blocks; what the socket does not take
    at once is kept in ``rest``, in order, for a pool thread to send."""

    def __init__(self, sock: Any):
        self.sock = sock
        self.rest: list[bytes] = []

    def send(self, data: bytes) -> int:
        """Send what the socket takes now, keep the rest; the whole is taken (returns its length)."""
        sent = 0
        if not self.rest:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                pass
        if sent < len(data):
            self.rest.append(bytes(data[sent:]))
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class _Conn(gthread.TConn):
    """A connection whose graceful close runs on a pool thread. gunicorn's lingers (up to 2 s) for the
    client to close, reading what it still sends so that a reset does not cut the last answer; on the
    loop thread, where gthread does it, a client that keeps its end open would stall every connection."""

    pool: futures.Executor | None = None

    def close(self, graceful: bool = False) -> None:
        if graceful and self.pool is not None:
            try:
                self.pool.submit(super().close, True)
                return
            except RuntimeError:  # the pool is shut down (the worker stops): linger here
                pass
        super().close(graceful)


class LoopWorker(gthread.ThreadWorker):
    """``gthread`` that answers quick requests on its loop thread (see the module's docstring)."""

    def init_process(self) -> None:
        #: Whether the shortcut applies: plain HTTP/1 (no TLS, no cleartext HTTP/2 to sniff for).
        self.shortcut = not self.cfg.is_ssl and getattr(self.cfg, "http2_cleartext", "off") in ("off", None)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        #: The app's ``quick_request(body) -> bool`` (shmooze.http.jsonapp.CommandApp); without it, plain gthread.
        self.quick_request: Callable[[bytes], bool] | None = getattr(self.wsgi, "quick_request", None)
        if self.quick_request is None:
            self.shortcut = False

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's error answers (a request its parser refuses), as JSON rather than its HTML page."""
        answer_worker_error(super().handle_error, req, client, addr, exc)

    def accept(self, listener: Any) -> None:
        """A new connection waits on the loop for its first request (not on a pool thread), like a
        kept-alive one."""
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return None
        self.nr_conns += 1
        conn = _Conn(self.cfg, sock, addr, listener.getsockname())  # (non-blocking)
        conn.pool = self.tpool
        if not self.shortcut:  # gthread's way: to a pool thread
            sock.setblocking(True)
            self.enqueue_req(conn)
            return None
        conn.set_timeout()
        self.keepalived_conns.append(conn)
        self.poller.register(sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))
        return None

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A waiting connection is readable: it stays registered with the poller while the loop
        serves it; it leaves the poller only for a pool thread or to be closed."""
        if not self.shortcut:
            return super().on_client_socket_readable(conn, client)
        self.keepalived_conns.remove(conn)
        self._readable(conn)
        return None

    def _readable(self, conn: Any) -> None:
        """Read what came; answer it here when it is one whole quick request, else hand it to the pool."""
        conn.data_ready = True
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            self._wait(conn)  # nothing after all
            return
        except OSError:
            data = b""
        if not data:  # the client closed or reset the connection
            self._leave(conn)
            self.nr_conns -= 1
            conn.close()
            return
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        buffered = conn.parser.unreader.buf
        whole = buffered.tell() == 0 and whole_request(data)  # (read-ahead left in the buffer: the pool)
        buffered.write(data)
        quick = self.quick_request
        if not whole or quick is None or not quick(data[whole:]):
            self._leave(conn)
            self.enqueue_req(conn)
            return
        result = self._answer(conn)
        if result is True and not conn.parser.unreader.buf.tell():
            self._wait(conn)
            return
        self._leave(conn)
        if isinstance(result, list):  # the rest of the answer from a pool thread, then gthread's way
            job = self.tpool.submit(_send_rest, conn, result)
            job.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))
            return
        done: futures.Future = futures.Future()
        done.set_result(result)
        self.finish_request(conn, done)  # (close, or bytes read ahead: to the pool)

    def _wait(self, conn: Any) -> None:
        """The connection waits on the loop for its next request (it is still registered)."""
        conn.set_timeout()
        if not self.alive:
            conn.timeout = min(conn.timeout, time.monotonic() + gthread.STOP_KEEPALIVE_LINGER)
        self.keepalived_conns.append(conn)

    def _leave(self, conn: Any) -> None:
        """The connection leaves the loop's poller (for a pool thread, or to be closed)."""
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _answer(self, conn: Any) -> bool | list[bytes]:
        """Answer the request in the parser's buffer with gunicorn's own request handling; return
        whether to keep the connection, or what is left to send (a pool thread sends it)."""
        real = conn.sock
        out = conn.sock = _LoopSocket(real)  # handle_request writes to conn.sock: never block the loop
        request = None
        try:
            request = next(conn.parser)  # the whole request is buffered: no recv
            keep = bool(request) and self._keepalive_after(conn, self.handle_request(request, conn))
        except (StopIteration, http.errors.NoMoreData):
            keep = False
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            keep = False
        except Exception as e:  # noqa: BLE001 - as gthread: answered as an error, the connection closed
            try:
                self.handle_error(request, out, conn.client, e)
            except Exception:
                self.log.debug("could not answer an error on the loop", exc_info=True)
            keep = False
        finally:
            conn.sock = real
        if out.rest:
            return out.rest if keep else out.rest + [b""]
        return keep


def _send_rest(conn: Any, rest: list[bytes]) -> bool:
    """On a pool thread: send what the socket did not take at once; whether to keep the connection
    (a last empty piece says close)."""
    keep = rest[-1] != b""
    try:
        conn.sock.setblocking(True)
        for piece in rest:
            if piece:
                conn.sock.sendall(piece)
    except OSError:
        return False
    return keep
