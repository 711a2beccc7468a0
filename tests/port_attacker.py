"""A local attacker against a module's two ports, for tests/test_module_ports.py (standard library only:
it runs as another user, ``setpriv --reuid 65534 ...``, with the system's python3).

Usage: ``python3 port_attacker.py MODE NEEDLE SECONDS``. It watches /proc for processes that have
NEEDLE in their command line (the test's modules: nothing else on the machine is touched), reads the
two ports from their last arguments, as ``ps`` shows them, and attacks them until they close:

* ``rst``: connect, write a line (an answer on the command port, a ``set_parameters`` with
  ``hijacked`` on the update port), then reset the connection (``SO_LINGER`` 0), again and again;
* ``flood``: connections as fast as it can, 256 connects in flight (non-blocking), half reset at
  once, half held a moment;
* ``hold``: connect once, write the lines, and keep the connection open, reporting what it read.

It prints ``watching`` once ready, ``HIJACKED`` for each ``init`` it read, and a summary line
``modules N connections M hijacked H`` at the end (connections: attempts not refused) (SIGTERM ends it
early, still printing the summary).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

LINES = (b'{"success": true, "result": "hijacked"}\n',
         b'{"cmd": "set_parameters", "args": {"parameters": {"hijacked": "by another user"}}}\n')
LINGER_0 = struct.pack("ii", 1, 0)
stop = threading.Event()
connections = 0
hijacked = 0
lock = threading.Lock()


def count(n: int = 1) -> None:
    global connections
    with lock:
        connections += n


def modules(needle: str, seen: set[str]) -> list[tuple[int, int]]:
    """Port pairs of the modules started since the last look."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid in seen:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a for a in f.read().decode(errors="replace").split("\0") if a]
        except OSError:
            continue
        if needle not in argv or len(argv) < 3 or not (argv[-1].isdigit() and argv[-2].isdigit()):
            continue  # (a process still being exec'd shows its parent's command line: looked at again later)
        seen.add(pid)
        found.append((int(argv[-2]), int(argv[-1])))
    return found


def connect(port: int, until: float) -> socket.socket | None:
    """A connection to the port, or None once it is closed (the module connected, or its start failed)."""
    while not stop.is_set() and time.monotonic() < until:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        except ConnectionRefusedError:
            return None
        except OSError:
            count()
            continue  # reset before connect returned, or its listen queue was full: try again
        count()
        return sock
    return None


def reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
    except OSError:
        pass
    sock.close()


def rst(port: int, line: bytes, until: float) -> None:
    """Connect, write, reset, until the port closes."""
    while not stop.is_set() and time.monotonic() < until:
        s = connect(port, until)
        if s is None:
            return
        try:
            s.sendall(line)
        except OSError:
            pass
        reset(s)


def flood(port: int, until: float, in_flight: int = 256) -> None:
    """Non-blocking connects, ``in_flight`` at a time (so a full listen queue does not slow the flood
    down: the kernel drops SYNs and the attacker keeps sending); each connection that completes is
    reset at once or, one in two, held until the next 64 are."""
    pending: dict[int, tuple[socket.socket, float]] = {}
    held: list[socket.socket] = []
    poller = select.poll()
    try:
        while not stop.is_set() and time.monotonic() < until:
            while len(pending) < in_flight:
                s = socket.socket()
                s.setblocking(False)
                code = s.connect_ex(("127.0.0.1", port))
                if code == errno.ECONNREFUSED:
                    s.close()
                    return  # the listener is closed: the module connected, or its start failed
                pending[s.fileno()] = (s, time.monotonic())
                poller.register(s, select.POLLOUT)
                count()
            now = time.monotonic()
            for fd, _ in poller.poll(10):
                s, _ = pending.pop(fd)
                poller.unregister(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED:
                    s.close()
                    return
                if fd % 2:
                    reset(s)
                    continue
                held.append(s)
                if len(held) >= 64:
                    for h in held:
                        reset(h)
                    held.clear()
            for fd, (s, t) in list(pending.items()):
                if now - t > 0.02:  # its SYN was dropped (a full queue): a fresh one, at once
                    del pending[fd]
                    poller.unregister(fd)
                    reset(s)
    finally:
        for s, _ in pending.values():
            reset(s)
        for h in held:
            reset(h)


def hold(port: int, line: bytes, until: float) -> None:
    global hijacked
    s = connect(port, until)
    if s is None:
        return
    try:
        s.sendall(line)
        s.settimeout(max(0.1, until - time.monotonic()))
        data = s.recv(65536)
    except OSError:
        data = b""
    if b'"init"' in data:
        with lock:
            hijacked += 1
        print("HIJACKED", flush=True)
    s.close()


def main() -> None:
    mode, needle, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + seconds
    seen = {str(os.getpid())}
    found = 0
    print("watching", flush=True)
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            for ports in modules(needle, seen):
                found += 1
                until = time.monotonic() + 3
                for i, port in enumerate(ports):
                    if mode == "flood":
                        runs = [(flood, (port, until))]
                    else:
                        runs = [({"rst": rst, "hold": hold}[mode], (port, LINES[i], until))]
                    for target, args in runs:
                        threading.Thread(target=target, args=args, daemon=True).start()
            stop.wait(0.001)
    finally:
        stop.set()
        print(f"modules {found} connections {connections} hijacked {hijacked}", flush=True)


if __name__ == "__main__":
    main()
