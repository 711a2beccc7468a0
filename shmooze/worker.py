"""The service's gunicorn worker: gunicorn's threaded worker that keeps a busy connection on its thread.

gunicorn's ``gthread`` worker hands every kept-alive connection back to its poller thread after each
answer, and the poller hands it to a pool thread again when the next request arrives: a pipe write,
an epoll wake-up and two GIL hand-overs per request, most of a short command's cost. This worker
serves the next request on the same thread when it arrives within :data:`KEEP_FOR` seconds; a
connection quiet for longer goes back to the poller as before (whose keep-alive timeout then runs).

Every guarantee of the threaded worker stays: a thread keeps its connection only while at least
a fifth of the pool (:func:`reserve`) stays free for other connections, so new connections and reads
never wait behind kept ones; a stopping worker hands every connection back at once (gunicorn then
answers a last request with ``Connection: close``); request parsing, body limits and errors are
gunicorn's own, one request at a time.
"""

from __future__ import annotations

import select
import threading
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

#: How long a thread waits for the next request on its connection before handing it to the poller.
KEEP_FOR = 0.05

_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


def reserve(threads: int) -> int:
    """How many of ``threads`` stay free: no connection is kept on a thread beyond the rest."""
    return max(1, threads // 5)


class ServiceWorker(ThreadWorker):
    """A ``gthread`` worker whose threads keep a connection while its requests keep coming."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = 0  # threads serving (or keeping) a connection
        self._busy_lock = threading.Lock()
        self._may_keep = max(0, int(self.cfg.threads) - reserve(int(self.cfg.threads)))

    def handle(self, conn: Any) -> Any:
        with self._busy_lock:
            self._busy += 1
        try:
            while True:
                result = super().handle(conn)
                if result is not True or not self._next_request_arrives(conn):
                    return result
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _next_request_arrives(self, conn: Any) -> bool:
        """Whether to serve this connection's next request here: it is stopping or crowded when not,
        or the request did not come within :data:`KEEP_FOR`."""
        if not self.alive or self._busy > self._may_keep or self._queued():
            return False
        if conn.parser.unreader.buf.getvalue():  # read ahead already (pipelined)
            return True
        poller = getattr(conn, "shmooze_poll", None)
        if poller is None:
            poller = conn.shmooze_poll = select.poll()
            poller.register(conn.sock.fileno(), _READABLE)
        try:
            return bool(poller.poll(KEEP_FOR * 1000.0)) and self.alive
        except OSError:
            return False

    def _queued(self) -> bool:
        """Whether connections wait for a thread of the pool (then this one goes back to the poller)."""
        work = getattr(self.tpool, "_work_queue", None)
        return bool(work is not None and not work.empty())
