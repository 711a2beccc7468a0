"""The module floor: a stdlib-only child that connects, answers one line, and exits on "exit".

Usage: ``python floor_child.py HOST PORT``. It connects to HOST:PORT, reads one line,
answers one line, then exits when it reads a second line (or end of file).
"""

import socket
import sys


def main() -> int:
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
