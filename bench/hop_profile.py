"""The gateway hop's CPU per request beside the relay floor, in one process, and where it goes.

Usage: ``.venv/bin/python -m bench.hop_profile [--rounds 3] [--seconds 2] [--profile]``

py-spy is of little use for a gevent worker: a process waiting in gevent's hub looks busy to it
(the loop's C code), and under load the samples pile up on whatever system call woke another
process. This measures CPU time instead: one gevent process serves, on two ports, the gateway's
fast lane (``shmooze.gateway.lane.Lane`` around a real :class:`~shmooze.gateway.app.Gateway`) and the
minimal relay (``relay_floor.pipe``), both in front of the bare-WSGI floor (gunicorn gthread). The
A2 load (16 kept-alive connections, ``bench/loadgen.py``) runs at each in turn, rounds interleaved,
and the process's own CPU time (``time.process_time``) per request is the hop's cost: same process,
same event loop, same load. With ``--profile`` the lane's rounds also run under ``cProfile`` timed by
CPU time (it slows them; the CPU per request figures are then only for the relay's rounds) and the
functions with the most own CPU time are printed.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from gevent.server import StreamServer  # noqa: E402

from bench import loadgen  # noqa: E402
from bench.common import PYTHON, Proc, child_env, free_port, setup_logging  # noqa: E402
from bench.http_bench import GET_VOLUME  # noqa: E402
from bench.relay_floor import relay  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    opts = parser.parse_args(argv)
    setup_logging()
    from shmooze.gateway.app import Gateway
    from shmooze.gateway.lane import Lane
    from shmooze.settings import Settings

    folder = Path(tempfile.mkdtemp(prefix="shmooze-hop-"))
    floor_port, lane_port, relay_port = free_port(), free_port(), free_port()
    floor = Proc("floor", [PYTHON, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", "32",
                           "--keep-alive", "120", "--no-control-socket", "--log-level", "warning",
                           "-b", f"127.0.0.1:{floor_port}", "bench.floorapp:app"], child_env(), folder / "floor.log")
    try:
        floor.wait_port(floor_port, 60)
        gateway = Gateway(Settings({"ports": {"wsgi": lane_port, "floor": floor_port}}))
        worker = SimpleNamespace(nr=0, max_requests=sys.maxsize, alive=True)
        lane = Lane(gateway, worker, 30.0)

        def serve_lane(client: socket.socket, addr: object) -> None:
            try:
                if lane.serve(client, addr, b"") is not None:
                    raise RuntimeError("the lane left a benchmark request to gunicorn")
            finally:
                client.close()

        def serve_relay(client: socket.socket, addr: object) -> None:
            relay(client, floor_port)

        servers = [StreamServer(("127.0.0.1", lane_port), serve_lane, backlog=1024),
                   StreamServer(("127.0.0.1", relay_port), serve_relay, backlog=1024)]
        for server in servers:
            server.start()
        targets = {"gateway lane": (lane_port, "/floor"), "relay floor": (relay_port, "/")}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        system: dict[str, list[float]] = {name: [] for name in targets}
        profile = cProfile.Profile(time.process_time) if opts.profile else None
        for _ in range(opts.rounds):
            for name, (port, path) in targets.items():
                profiling = profile is not None and name == "gateway lane"
                c0, s0 = time.process_time(), os.times().system
                if profiling:
                    profile.enable()
                result = loadgen.run(port, path, GET_VOLUME, 4, 4, opts.seconds, env=child_env())
                if profiling:
                    profile.disable()
                cpu[name].append((time.process_time() - c0) * 1000.0 / max(result.count, 1))
                system[name].append((os.times().system - s0) * 1000.0 / max(result.count, 1))
                if result.errors:
                    raise RuntimeError(f"{name}: {result.errors} failed requests")
        for name, values in cpu.items():
            print(f"{name}: {statistics.median(values):.3f} ms CPU/request ({min(values):.3f}-{max(values):.3f}) "
                  f"over {len(values)} rounds; of it in the kernel {statistics.median(system[name]):.3f} ms")
        lane_ms, relay_ms = statistics.median(cpu["gateway lane"]), statistics.median(cpu["relay floor"])
        print(f"ratio: {lane_ms / relay_ms:.2f}x" + (" (the lane's rounds ran under cProfile)" if profile else ""))
        if profile is not None:
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(opts.top)
            print(out.getvalue())
        for server in servers:
            server.stop()
    finally:
        floor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
