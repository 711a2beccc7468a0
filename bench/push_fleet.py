"""Latency windows over a fleet of watchers, in this process or in a child process of its own.

push_bench.py measures each window with :func:`run_window`. For 10,000 watchers the fleets go to
child processes (:class:`RemoteFleet`): one process may hold only RLIMIT_NOFILE sockets (hard limit
20,000 here), and the gateway's and the floor's fleets are both connected while their rounds alternate.

As a child: ``python push_fleet.py PORT N [subscribe]`` connects N watchers (and subscribes them to
the queue), prints ``ready CONNECT_SECONDS``, then for each line ``window START END SECONDS`` on
standard input runs the fleet for SECONDS and prints the window's figures as one JSON line. End of
input closes every watcher and exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import bench_argv, child_env, percentile
from bench.push_wire import Fleet, StampLog

HERE = Path(__file__).resolve().parent


def ms_stats(values: Any) -> dict[str, float]:
    if not len(values):
        return {"n": 0}
    vals = sorted(values)
    return {"n": len(vals), "p50": percentile(vals, 0.5), "p90": percentile(vals, 0.9), "p99": percentile(vals, 0.99),
            "max": vals[-1], "min": vals[0]}


def subscribe(fleet: Fleet, deadline: float) -> int:
    mid = fleet.send_all({"subscribe": {"queue": None}})
    got = fleet.wait_answers(mid, deadline)
    bad = [w.answers[mid] for w in fleet.watchers if mid in w.answers and not w.answers[mid].get("success")]
    if bad:
        raise RuntimeError(f"subscribe failed: {bad[0]}")
    return got


def local_window(fleet: Fleet, start: float, end: float, seconds: float) -> dict[str, Any]:
    """Run ``fleet`` for ``seconds``, counting the stamps sent between ``start`` and ``end``."""
    stamps = StampLog(start, end, len(fleet.watchers))
    fleet.run(seconds, stamps.on_text)
    expected = len(stamps.seqs)
    return {
        "watchers": len(fleet.watchers),
        "watchers_open_at_end": fleet.open_count(),
        "closed_by_server": fleet.closed_by_server,
        "stamps_in_window": expected,
        "arrivals": len(stamps.kernel),
        "arrivals_expected": expected * len(fleet.watchers),
        "watchers_with_every_stamp": sum(1 for c in stamps.per_watcher if c == expected),
        "latency_ms": ms_stats(stamps.kernel),
        "latency_user_ms": ms_stats(stamps.user),
        "module_to_service_ms": ms_stats(list(stamps.publish.values())),
        "kernel_timestamps": fleet.timestamps,
        "sample": stamps.sample.decode() if stamps.sample else None,
    }


class RemoteFleet:
    """``n`` watchers of ``port`` in a child process (this file run as a script), stopped by its pid."""

    def __init__(self, port: int, n: int, subscribed: bool):
        argv = bench_argv("push_fleet", str(port), str(n)) + (["subscribe"] if subscribed else [])
        self.n = n
        self.proc = subprocess.Popen(argv, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.port = port
        self.connect_s = 0.0

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Wait until every watcher is connected (and subscribed): fleets can connect side by side."""
        line = self._line(timeout)
        if not line.startswith("ready"):
            raise RuntimeError(f"the fleet of {self.n} watchers of port {self.port} did not connect: {line!r}")
        self.connect_s = float(line.split()[1])

    def _line(self, timeout: float) -> str:
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the fleet process {self.pid} did not answer within {timeout:g} s")
        return self.proc.stdout.readline().decode()

    def window(self, start: float, end: float, seconds: float) -> dict[str, Any]:
        self.proc.stdin.write(f"window {start!r} {end!r} {seconds!r}\n".encode())
        self.proc.stdin.flush()
        line = self._line(seconds + 60)
        if not line.startswith("{"):
            raise RuntimeError(f"the fleet process {self.pid} failed its window: {line!r}")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()


def run_window(fleet: Fleet | RemoteFleet, start: float, end: float, seconds: float) -> dict[str, Any]:
    """One window over a fleet in this process or in its own."""
    if isinstance(fleet, RemoteFleet):
        return fleet.window(start, end, seconds)
    return local_window(fleet, start, end, seconds)


def main(argv: list[str]) -> int:
    port, n = int(argv[0]), int(argv[1])
    from bench.push_stack import raise_nofile
    raise_nofile(n + 1000)
    fleet = Fleet(port)
    try:
        t0 = time.monotonic()
        fleet.connect(n, t0 + 280)
        if "subscribe" in argv[2:]:
            subscribe(fleet, time.monotonic() + 60)
        sys.stdout.write(f"ready {time.monotonic() - t0:.2f}\n")
        sys.stdout.flush()
        for line in sys.stdin:
            words = line.split()
            if words and words[0] == "window":
                out = local_window(fleet, float(words[1]), float(words[2]), float(words[3]))
                sys.stdout.write(json.dumps(out) + "\n")
                sys.stdout.flush()
    finally:
        fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
