"""Latency windows over a fleet of watchers, in this process or in a child process of its own.

push_bench.py measures each window with :func:`run_window`. For 10,000 watchers the fleets go to
child processes (:class:`RemoteFleet`): one process may hold only RLIMIT_NOFILE sockets (hard limit
20,000 here), and the fleets of shmooze and of every anchor stay connected while their rounds alternate.

As a child: ``python -m bench.push_fleet PORT N PATH [subscribe]`` connects N watchers to PATH (and
subscribes them to the queue), prints ``ready CONNECT_SECONDS``, then serves them (answering pings)
while it waits for a command line on standard input:

- ``window START END SECONDS MORE``: run the fleet for SECONDS (and up to MORE while stamps of the
  window are on their way); print the window's figures as one JSON line;
- ``rejoin SECONDS``: print ``armed``, then reconnect (and subscribe again) every watcher the server
  closes, until all were closed and all are back (or SECONDS passed); print the figures as one JSON line.

End of input closes every watcher and exits.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import Any

from bench.common import bench_argv, child_env, percentile
from bench.push_wire import Fleet, StampLog

#: what a watcher of the gateway sends after its handshake (the anchors need none)
SUBSCRIBE = {"subscribe": {"queue": None}}


def ms_stats(values: Any) -> dict[str, float]:
    if not len(values):
        return {"n": 0}
    vals = sorted(values)
    return {"n": len(vals), "p50": percentile(vals, 0.5), "p90": percentile(vals, 0.9), "p99": percentile(vals, 0.99),
            "max": vals[-1], "min": vals[0]}


def local_window(fleet: Fleet, start: float, end: float, seconds: float, more: float = 0.0) -> dict[str, Any]:
    """Run ``fleet`` for ``seconds``, counting the stamps sent between ``start`` and ``end``; then for up
    to ``more`` seconds while some sent in the window have not reached every watcher yet (what has not
    arrived by then counts as not arrived)."""
    stamps = StampLog(start, end, len(fleet.slots))
    cpu0 = time.process_time()
    t0 = time.monotonic()
    fleet.run(seconds, stamps.on_text)
    late = time.monotonic()
    while not stamps.complete() and time.monotonic() - late < more:
        fleet.run(0.1, stamps.on_text)
    expected = stamps.expected_stamps()
    return {
        "run_s": time.monotonic() - t0,
        "tail_s": time.monotonic() - late,
        "watchers": len(fleet.slots),
        "watchers_open_at_end": fleet.open_count(),
        "closed_by_server": fleet.closed_by_server,
        "stamps_in_window": expected,
        "stamps_in_run": len(stamps.all_seqs),
        "arrivals": len(stamps.kernel),
        "arrivals_expected": expected * len(fleet.slots),
        "watchers_with_every_stamp": sum(1 for c in stamps.per_watcher if c == expected),
        "latency_ms": ms_stats(stamps.kernel),
        "latency_user_ms": ms_stats(stamps.user),
        "module_to_service_ms": ms_stats(list(stamps.publish.values())),
        "kernel_timestamps": fleet.timestamps,
        "fleet_cpu_s": time.process_time() - cpu0,
        "sample": stamps.sample.decode() if stamps.sample else None,
    }


class RemoteFleet:
    """``n`` watchers of ``port`` in a child process (this file run as a module), stopped by its pid."""

    def __init__(self, port: int, n: int, subscribed: bool, path: str = "/ws"):
        argv = bench_argv("push_fleet", str(port), str(n), path) + (["subscribe"] if subscribed else [])
        self.n = n
        self.proc = subprocess.Popen(argv, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.port = port
        self.connect_s = 0.0

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Wait until every watcher is connected (and subscribed)."""
        line = self._line(timeout)
        if not line.startswith("ready"):
            raise RuntimeError(f"the fleet of {self.n} watchers of port {self.port} did not connect: {line!r}")
        self.connect_s = float(line.split()[1])

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the fleet process {self.pid} did not answer within {timeout:g} s")
        return self.proc.stdout.readline().decode()

    def _json(self, timeout: float, what: str) -> dict[str, Any]:
        line = self._line(timeout)
        if not line.startswith("{"):
            raise RuntimeError(f"the fleet process {self.pid} failed its {what}: {line!r}")
        return json.loads(line)

    def _tell(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def window(self, start: float, end: float, seconds: float, more: float) -> dict[str, Any]:
        self._tell(f"window {start!r} {end!r} {seconds!r} {more!r}")
        return self._json(seconds + more + 60, "window")

    def arm_rejoin(self, seconds: float) -> None:
        """Tell the fleet to reconnect what its server closes from now on; :meth:`rejoined` reads the result."""
        self._tell(f"rejoin {seconds!r}")
        if not self._line(30).startswith("armed"):
            raise RuntimeError(f"the fleet process {self.pid} did not arm its rejoin")

    def rejoined(self, seconds: float) -> dict[str, Any]:
        return self._json(seconds + 30, "rejoin")

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()


def run_window(fleet: Fleet | RemoteFleet, start: float, end: float, seconds: float,
               more: float = 0.0) -> dict[str, Any]:
    """One window over a fleet in this process or in its own (see :func:`local_window`)."""
    if isinstance(fleet, RemoteFleet):
        return fleet.window(start, end, seconds, more)
    return local_window(fleet, start, end, seconds, more)


def commands(fleet: Fleet) -> Any:
    """Lines from standard input, the fleet served (pings answered) while none is there."""
    fd = sys.stdin.fileno()
    buf = b""
    while True:
        while b"\n" not in buf:
            fleet.pump(0.0, None)
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return
                buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield line.decode()


def main(argv: list[str]) -> int:
    port, n, path = int(argv[0]), int(argv[1]), argv[2]
    from bench.push_stack import raise_nofile
    raise_nofile(n + 1000)
    fleet = Fleet(port, path=path, subscribe=SUBSCRIBE if "subscribe" in argv[3:] else None)
    try:
        t0 = time.monotonic()
        fleet.connect(n, t0 + 280)
        sys.stdout.write(f"ready {time.monotonic() - t0:.2f}\n")
        sys.stdout.flush()
        for line in commands(fleet):
            words = line.split()
            if words and words[0] == "window":
                out = local_window(fleet, *map(float, words[1:5]))
            elif words and words[0] == "rejoin":
                sys.stdout.write("armed\n")
                sys.stdout.flush()
                out = fleet.rejoin_all(time.monotonic() + float(words[1]))
            else:
                continue
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()
    finally:
        fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
