"""The gateway hop's floor: a minimal gevent TCP relay, one upstream connection per client connection.

Usage: ``python relay_floor.py LISTEN_PORT UPSTREAM_PORT [PROCESSES]`` (both on 127.0.0.1). It copies bytes
both ways and understands nothing of HTTP: what any HTTP forwarder must at least spend. With
PROCESSES (default 1) that many processes accept on the one listening socket, as the gateway's
gunicorn workers do.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import signal  # noqa: E402
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
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 1

    def handle(client: socket.socket, address: object) -> None:
        relay(client, upstream)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen))
    listener.listen(1024)
    children = []
    for _ in range(processes - 1):  # like the gateway's workers: several processes on one listening socket
        pid = os.fork()
        if pid == 0:
            gevent.reinit()
            children = []
            break
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    StreamServer(listener, handle).serve_forever()


if __name__ == "__main__":
    main()
