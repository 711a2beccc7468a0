"""One socket write per answer under gunicorn.

gunicorn's response writes its status line and headers in one ``send`` and the body in
another. A command's answer is small and has a ``Content-Length``: written in two pieces it
costs two system calls (and under gevent two trips through the hub) where one does, and
that is most of what a short request costs the gateway and a service. :class:`OneWriteResponse`
sends the head and such a body together; anything else (chunked, streamed in several pieces,
files, no body) goes gunicorn's usual way.
"""

from __future__ import annotations

from typing import Any

from gunicorn.http import wsgi
from gunicorn.util import write


class OneWriteResponse(wsgi.Response):
    """A gunicorn response that sends head and body in one write when the body is one piece."""

    headers_sent: bool  # gunicorn's own attributes, declared for the type checker

    def write(self, arg: bytes) -> None:
        if (not self.headers_sent and type(arg) is bytes and arg and not self.chunked
                and self.response_length == len(arg) and not getattr(self, "_omits_body", False)):
            lines = self.default_headers()
            lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
            head = ("".join(lines) + "\r\n").encode("latin-1")
            self.headers_sent = True
            self.sent = len(arg)
            _send(self.sock, head + arg)
            return
        super().write(arg)


def _send(sock: Any, data: bytes) -> None:
    """``sendall``, but a plain ``send`` first: it nearly always takes all of a small answer, and
    gevent's ``sendall`` asks the socket for its buffer size (a system call) before every write."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        write(sock, data[sent:])


def install() -> None:
    """Make gunicorn's workers (forked after this) answer with :class:`OneWriteResponse`."""
    wsgi.Response = OneWriteResponse
