"""A light closed-loop HTTP load generator: a few processes, each driving a few kept-alive connections.

Each worker process pre-encodes one POST request, keeps exactly one request in flight
per connection, and parses answers only as far as ``Content-Length``, so that its own
CPU cost stays small beside the server's. Workers start together at an agreed wall-clock
time, count the answers completed within the window, and print one JSON line.

Run as a worker: ``python loadgen.py PORT PATH BODY CONNS START_AT DURATION``.
"""

from __future__ import annotations

import json
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"


def _request(port: int, path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _take_answer(buf: bytearray) -> tuple[int, bool] | None:
    """If ``buf`` starts with a whole answer, return (its length, whether it was a 200)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    i = head.find(b"\r\ncontent-length:")
    if i < 0:
        raise ValueError("answer without Content-Length")
    j = head.find(b"\r\n", i + 2)
    length = int(head[i + 17:j if j >= 0 else len(head)])
    total = end + 4 + length
    if len(buf) < total:
        return None
    return total, head.startswith(b"http/1.1 200")


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _one_blocking(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    buf = bytearray()
    while _take_answer(buf) is None:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed during warm-up")
        buf += data


def worker(port: int, path: str, body: bytes, conns: int, start_at: float, duration: float) -> dict[str, Any]:
    """Drive ``conns`` connections from ``start_at`` (wall clock) for ``duration`` seconds."""
    request = _request(port, path, body)
    socks = [_connect(port) for _ in range(conns)]
    for sock in socks:
        for _ in range(3):
            _one_blocking(sock, request)
        sock.setblocking(False)
    delay = start_at - time.time()
    late = delay < -0.05
    if delay > 0:
        time.sleep(delay)
    t0 = time.monotonic()
    end = t0 + duration
    cpu0 = time.process_time()
    sel = selectors.DefaultSelector()
    bufs: dict[int, bytearray] = {}
    for sock in socks:
        bufs[sock.fileno()] = bytearray()
        sel.register(sock, selectors.EVENT_READ)
        sock.send(request)
    in_flight = len(socks)
    count = errors = reconnects = 0
    while in_flight:
        remaining = end - time.monotonic()
        events = sel.select(timeout=max(remaining, 0.0) + 2.0)  # answers in flight at the end get 2 s more
        if not events:
            break
        for key, _ in events:
            sock = key.fileobj
            buf = bufs[sock.fileno()]
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            now = time.monotonic()
            if not data:
                errors += 1
                in_flight -= 1
                sel.unregister(sock)
                sock.close()
                if now < end:  # the server closed a kept-alive connection: open another
                    reconnects += 1
                    new = _connect(port)
                    new.setblocking(False)
                    bufs[new.fileno()] = bytearray()
                    sel.register(new, selectors.EVENT_READ)
                    new.send(request)
                    in_flight += 1
                continue
            buf += data
            while True:
                got = _take_answer(buf)
                if got is None:
                    break
                size, ok = got
                del buf[:size]
                if now <= end:
                    if ok:
                        count += 1
                    else:
                        errors += 1
                if now < end:
                    sock.send(request)
                else:
                    in_flight -= 1
    cpu = time.process_time() - cpu0
    for sock in list(sel.get_map().values()):
        sock.fileobj.close()
    return {"count": count, "errors": errors, "reconnects": reconnects, "cpu": cpu, "late": late,
            "elapsed": time.monotonic() - t0}


@dataclass
class LoadResult:
    """What a load run measured, summed over its workers."""

    rps: float
    count: int
    errors: int
    duration: float
    loadgen_cpu: float  # CPU seconds the load generator used during the window
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def loadgen_cores(self) -> float:
        return self.loadgen_cpu / self.duration


def run(port: int, path: str, body: bytes, procs: int, conns_per_proc: int, duration: float,
        env: dict[str, str] | None = None, start_delay: float = 1.0) -> LoadResult:
    """Run ``procs`` worker processes of ``conns_per_proc`` connections each for ``duration`` seconds."""
    start_at = time.time() + start_delay
    argv = [sys.executable, __file__, str(port), path, body.decode(), str(conns_per_proc), repr(start_at),
            repr(duration)]
    workers = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True) for _ in range(procs)]
    outputs: list[dict[str, Any]] = []
    try:
        for w in workers:
            out, err = w.communicate(timeout=start_delay + duration + 20)
            if w.returncode != 0:
                raise RuntimeError(f"load worker {w.pid} failed ({w.returncode}): {err.decode()[-1000:]}")
            outputs.append(json.loads(out))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(5)
    count = sum(o["count"] for o in outputs)
    return LoadResult(rps=count / duration, count=count, errors=sum(o["errors"] for o in outputs),
                      duration=duration, loadgen_cpu=sum(o["cpu"] for o in outputs), workers=outputs)


def main(argv: list[str]) -> int:
    port, path, body, conns, start_at, duration = argv
    result = worker(int(port), path, body.encode(), int(conns), float(start_at), float(duration))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
