"""The module floor: a stdlib-only child that connects, answers one line, and exits on "exit".

Usage: ``python floor_child.py [--term-exits | --fast-exit] HOST PORT``. It connects to HOST:PORT,
reads one line, answers one line, then exits when it reads a second line (or end of file).

How it exits, so that a comparison is like for like:

- default: "exit" returns through the interpreter's clean-up; SIGTERM kills it outright;
- ``--term-exits``: SIGTERM also exits through the interpreter's clean-up, as a plain Python
  program asked to stop would;
- ``--fast-exit``: "exit" and SIGTERM both end it with ``os._exit``, skipping the interpreter's
  teardown, as a shmooze Python module does after ``rm`` (pymodule's ``fast_exit``).
"""

import os
import socket
import sys


def _exit_on_term(signum, frame):
    raise SystemExit(0)


def _exit_now(signum=None, frame=None):
    os._exit(0)


def main() -> int:
    fast = "--fast-exit" in sys.argv
    if "--term-exits" in sys.argv or fast:
        import signal

        signal.signal(signal.SIGTERM, _exit_now if fast else _exit_on_term)
    host, port = sys.argv[-2], int(sys.argv[-1])
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = sock.makefile("rb")
    stream.readline()
    sock.sendall(b'{"success":true}\n')
    stream.readline()  # "exit", or end of file
    if fast:
        _exit_now()
    return 0


if __name__ == "__main__":
    sys.exit(main())
