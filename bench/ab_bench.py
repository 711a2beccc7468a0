"""Before/after: the same service and gateway from two source trees, rounds interleaved.

Usage: ``.venv/bin/python -m bench.ab_bench OLD_TREE [NEW_TREE] [--rounds 3] [--seconds 2]``

For each tree it starts the volume service and a gateway in front of it; beside them a
minimal gevent TCP relay (``relay_floor.py``) in front of the new tree's service. Each round
runs, in turn, 16 connections straight at each service and through each gateway and the relay;
it reports requests/s, p99 (of a 16th, sampling connection) and CPU per request (all servers, and the
hop's own: gateway workers or relay), median and min-max over the rounds.
Every process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import loadgen
from bench.common import PYTHON, Client, Proc, child_env, cpu_seconds, encode_command, family, free_port, percentile

HERE = Path(__file__).resolve().parent

log = logging.getLogger("bench.ab")
BODY = encode_command("get_volume")


def start_tree(tag: str, root: Path, folder: Path) -> dict[str, object]:
    """The volume service and a gateway from ``root``; their ports and processes."""
    ports = {"wsgi": free_port(), "volume": free_port()}
    settings = folder / f"settings-{tag}.json"
    settings.write_text(json.dumps({"ports": ports, "services": {"volume": "jukebox.volume:Volume"},
                                    "gateway_workers": 2}))
    env = child_env({"PYTHONPATH": f"{root}:{root / 'examples'}:{HERE}"})
    procs = {name: Proc(f"{tag}-{name}", [PYTHON, "-m", "shmooze", "serve", name, "--settings", str(settings)],
                        env, folder / f"{tag}-{name}.log", cwd=str(root)) for name in ports}
    for name, proc in procs.items():
        proc.wait_port(ports[name], 60)
    return {"ports": ports, "procs": procs}


def measure(port: int, path: str, hop: list[int], service: list[int], seconds: float) -> dict[str, float]:
    """15 loaded connections (loadgen) plus one sampling connection whose round trips give the p99."""
    latencies: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        client = Client(port, path, timeout=30)
        try:
            time.sleep(1.0)  # loadgen's start delay
            end = time.monotonic() + seconds
            while time.monotonic() < end and not stop.is_set():
                t0 = time.perf_counter()
                client.raw(BODY)
                latencies.append((time.perf_counter() - t0) * 1000.0)
        finally:
            client.close()

    sampler = threading.Thread(target=sample)
    cpu0, hop0 = cpu_seconds(hop + service), cpu_seconds(hop)
    sampler.start()
    try:
        result = loadgen.run(port, path, BODY, 3, 5, seconds, env=child_env())
    finally:
        stop.set()
        sampler.join()
    count = max(result.count + len(latencies), 1)
    cpu = (cpu_seconds(hop + service) - cpu0) * 1000.0 / count
    hop_cpu = (cpu_seconds(hop) - hop0) * 1000.0 / count
    return {"rps": result.rps + len(latencies) / seconds, "cpu_ms": cpu, "hop_cpu_ms": hop_cpu,
            "p99_ms": percentile(latencies, 0.99), "errors": result.errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path, nargs="?", default=HERE.parent)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    folder = Path(tempfile.mkdtemp(prefix="shmooze-ab-"))
    started: list[Proc] = []
    try:
        trees = {}
        for tag, root in (("old", opts.old.resolve()), ("new", opts.new.resolve())):
            trees[tag] = start_tree(tag, root, folder)
            started += trees[tag]["procs"].values()
        relay_port = free_port()
        relay = Proc("relay", [PYTHON, str(HERE / "relay_floor.py"), str(relay_port),
                               str(trees["new"]["ports"]["volume"])], child_env(), folder / "relay.log")
        started.append(relay)
        relay.wait_port(relay_port, 30)
        targets = {}
        for tag, t in trees.items():
            procs, ports = t["procs"], t["ports"]
            service = family(procs["volume"].pid)
            targets[f"{tag} direct"] = (ports["volume"], "/", [], service)
            targets[f"{tag} gateway"] = (ports["wsgi"], "/volume", family(procs["wsgi"].pid), service)
        targets["relay -> new"] = (relay_port, "/", [relay.pid], family(trees["new"]["procs"]["volume"].pid))
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
        for _ in range(opts.rounds):
            for name, (port, path, hop, service) in targets.items():
                runs[name].append(measure(port, path, hop, service, opts.seconds))
                log.info("%s: %s", name, runs[name][-1])
        print_rounds(runs, (("req/s", "rps", "{:,.0f}"), ("p99 ms (sampling connection)", "p99_ms", "{:.2f}"),
                            ("server CPU ms/req", "cpu_ms", "{:.3f}"), ("hop's own CPU ms/req", "hop_cpu_ms", "{:.3f}")))
    finally:
        for proc in reversed(started):
            proc.stop()
    return 0


def print_rounds(runs: dict[str, list[dict[str, float]]], columns: tuple[tuple[str, str, str], ...]) -> None:
    """A markdown table of each target's rounds: per column (heading, key, format) the median (min-max)."""
    print("| target | " + " | ".join(heading for heading, _, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, rs in runs.items():
        cells = []
        for _, key, fmt in columns:
            vals = [r[key] for r in rs]
            cells.append(f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}-{fmt.format(max(vals))})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
