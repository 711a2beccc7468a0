"""The module floor: a stdlib-only child that connects, answers one line, and exits on "exit".

Usage: ``python floor_child.py [--term-exits] HOST PORT``. It connects to HOST:PORT, reads
one line, answers one line, then exits when it reads a second line (or end of file).
With ``--term-exits`` SIGTERM makes it exit the same orderly way (interpreter clean-up
included) instead of dying at once, as a Python module asked to stop would.
"""

import socket
import sys


def _exit_on_term(signum, frame):
    raise SystemExit(0)


def main() -> int:
    if "--term-exits" in sys.argv:
        import signal

        signal.signal(signal.SIGTERM, _exit_on_term)
    host, port = sys.argv[-2], int(sys.argv[-1])
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = sock.makefile("rb")
    stream.readline()
    sock.sendall(b'{"success":true}\n')
    stream.readline()  # "exit", or end of file
    return 0


if __name__ == "__main__":
    sys.exit(main())
