"""The gateway hop's floor: a minimal gevent TCP relay, one upstream connection per client connection.

Usage: ``python relay_floor.py LISTEN_PORT UPSTREAM_PORT`` (both on 127.0.0.1). It copies bytes
both ways and understands nothing of HTTP: what any HTTP forwarder must at least spend.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay(client: socket.socket, upstream: int) -> None:
    """Copy one client connection to a new connection to ``127.0.0.1:upstream`` and back."""
    up = socket.create_connection(("127.0.0.1", upstream))
    for s in (client, up):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = gevent.spawn(pipe, up, client)
    pipe(client, up)
    back.join()
    up.close()


def main() -> None:
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])

    def handle(client: socket.socket, address: object) -> None:
        relay(client, upstream)

    StreamServer(("127.0.0.1", listen), handle, backlog=1024).serve_forever()


if __name__ == "__main__":
    main()
