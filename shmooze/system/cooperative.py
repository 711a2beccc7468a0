"""Whether gevent runs this process's I/O, and the calls that must not depend on it.

A gateway worker is gunicorn's gevent worker: gevent has patched ``socket`` and ``select``, and
every connection is a greenlet. Services run on threads. Code shared by both asks here, in one
place, which it is.
"""

from __future__ import annotations

import select
import sys
from typing import Any, Callable


def patched(module: str) -> bool:
    """Whether gevent has patched the standard module ``module`` in this process."""
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched(module))


def gevent_sockets() -> bool:
    """Whether gevent runs this process's sockets (a gateway worker)."""
    return patched("socket")


def green_library(sock: Any) -> str | None:
    """The library whose cooperative socket ``sock`` is (``"gevent"`` or ``"eventlet"``: what gunicorn's
    async workers hand the app); None for a standard socket."""
    top = type(sock).__module__.partition(".")[0]
    return top if top in ("gevent", "eventlet") else None


_NATIVE_POLL: Any = None


def native_poll() -> select.poll:
    """The real ``select.poll`` even when gevent has patched the module: a poll with no wait that
    never switches greenlets (looked up once: the gateway's forward asks it before every reuse of a
    kept-alive connection)."""
    global _NATIVE_POLL
    if _NATIVE_POLL is None:
        poll = select.poll
        if patched("select"):
            from gevent import monkey

            poll = monkey.get_original("select", "poll")
        _NATIVE_POLL = poll
    return _NATIVE_POLL()


def pollers() -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(native ``poll``, cooperative ``poll``): the second is gevent's when gevent has patched ``select``.

    Not ``select()``: it fails on descriptors >= FD_SETSIZE (1024), and gevent's ``select`` calls
    the real one first, so a server with many connections would break.
    """
    if patched("select"):
        import gevent.select
        from gevent import monkey

        return monkey.get_original("select", "poll"), gevent.select.poll
    return select.poll, select.poll
