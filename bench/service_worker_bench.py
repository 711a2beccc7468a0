"""A service's two gunicorn workers side by side: ``gthread`` and the loop worker (``service_worker``).

Usage: ``.venv/bin/python -m bench.service_worker_bench [--rounds 3] [--seconds 3]``

Starts the volume service twice from this tree, once per ``service_worker`` setting, and the bare
WSGI floor under ``gthread`` (bench/floorapp.py, as in A2); each round runs, in turn, 15 kept-alive
connections (loadgen) plus a sampling connection at each (ab_bench.measure), and the table gives
requests/s, p99 of the sampling connection and the server's CPU per request, median (min-max). The
fast C parser (``gunicorn-h1c``, the ``fast`` extra) is used by all three when it is installed.
Every process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.ab_bench import measure, print_rounds
from bench.common import PYTHON, Proc, child_env, family, free_port

HERE = Path(__file__).resolve().parent


def _worker_family(proc: Proc, timeout: float = 60.0) -> list[int]:
    """The master and its worker, once the worker is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = family(proc.pid)
        if len(pids) >= 2:
            return pids
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: no worker after {timeout:g} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    opts = parser.parse_args()
    root = HERE.parent
    folder = Path(tempfile.mkdtemp(prefix="shmooze-worker-bench-"))
    started: list[Proc] = []
    try:
        targets: dict[str, tuple[int, list[int]]] = {}
        env = child_env({"PYTHONPATH": f"{root}:{root / 'examples'}:{HERE}"})
        for worker in ("gthread", "loop"):
            port = free_port()
            settings = folder / f"settings-{worker}.json"
            settings.write_text(json.dumps({"ports": {"wsgi": free_port(), "volume": port}, "service_worker": worker,
                                            "services": {"volume": "jukebox.volume:Volume"}}))
            proc = Proc(worker, [PYTHON, "-m", "shmooze", "serve", "volume", "--settings", str(settings)], env,
                        folder / f"{worker}.log", cwd=str(root))
            started.append(proc)
            proc.wait_port(port, 60)
            targets[f"service, {worker} worker"] = (port, _worker_family(proc))
        port = free_port()
        floor = Proc("floor", [PYTHON, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", "32", "--keep-alive",
                               "120", "-b", f"127.0.0.1:{port}", "bench.floorapp:app"], env, folder / "floor.log")
        started.append(floor)
        floor.wait_port(port, 60)
        targets["bare WSGI floor (gthread)"] = (port, _worker_family(floor))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(opts.rounds):
            for name, (port, pids) in targets.items():
                runs[name].append(measure(port, "/", [], pids, opts.seconds))
        print_rounds(runs, (("req/s", "rps", "{:,.0f}"), ("p99 ms (sampling connection)", "p99_ms", "{:.2f}"),
                            ("server CPU ms/req", "cpu_ms", "{:.3f}"), ("errors", "errors", "{:.0f}")))
    finally:
        for proc in reversed(started):
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
