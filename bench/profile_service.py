"""Profile a service (or the gateway) under load with py-spy, and summarise where its CPU goes.

Usage: ``.venv/bin/python -m bench.profile_service [--target direct|gateway] [--seconds 10] [--out DIR]``

Starts the benchmark stack (bench/stack.py), runs the A2 load (16 kept-alive connections sending
``get_volume``) at the volume service directly or through the gateway, and meanwhile records the
serving worker with ``py-spy record --format raw`` (folded stacks, 100 samples/s, idle threads left
out). Prints the functions with the most samples on top of the stack (self) and the files with the most
samples anywhere in the stack (inclusive), in percent of all samples; keeps the raw file in ``--out``
(open it with any flamegraph tool, or record ``--format speedscope`` yourself with the same command).
py-spy is in the ``bench`` extra; it needs ptrace rights over the process (root, or the same user
with ``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import collections
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench import loadgen
from bench.common import Client, child_env, setup_logging
from bench.http_bench import GET_VOLUME, targets
from bench.stack import Stack

log = logging.getLogger("bench.profile")


def summarise(raw: Path, top: int) -> str:
    """Self and inclusive shares of the folded stacks in ``raw`` (one ``frame;frame;... count`` a line)."""
    own: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for name in {f.split(" (")[-1].split(":")[0].rstrip(")") for f in frames}:
            files[name] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "self (top of the stack):"]
    lines += [f"  {n * 100 / total:5.1f} %  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "inclusive, by file:"]
    lines += [f"  {n * 100 / total:5.1f} %  {name}" for name, n in files.most_common(top)]
    return "\n".join(lines)


def warm_up(port: int, path: str, connections: int = 8, requests: int = 50) -> None:
    """Requests on several connections first, so that every worker has booted and imported what it
    needs: the master binds the port before its workers are ready, and py-spy would record their start."""
    clients = [Client(port, path) for _ in range(connections)]
    try:
        for _ in range(requests):
            for client in clients:
                client.raw(GET_VOLUME)
    finally:
        for client in clients:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("direct", "gateway"), default="direct")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--gil", action="store_true", help="count only samples of threads holding the GIL")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "shmooze-profile")
    opts = parser.parse_args(argv)
    setup_logging()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    opts.out.mkdir(parents=True, exist_ok=True)
    raw = opts.out / f"{opts.target}{'-gil' if opts.gil else ''}.txt"
    with Stack() as stack:
        target = targets(stack)[opts.target]
        # The process to profile: the service's worker, or the gateway's first worker.
        pid = stack.worker_pid("volume") if opts.target == "direct" else stack.server_pids("wsgi")[1]
        warm_up(target.port, target.path)
        result: dict[str, object] = {}
        load = threading.Thread(target=lambda: result.update(run=loadgen.run(
            target.port, target.path, GET_VOLUME, 4, 4, opts.seconds + 2, env=child_env(), start_delay=0.5)))
        load.start()
        try:
            subprocess.run([pyspy, "record", "--format", "raw", "--rate", "100", "--duration", f"{opts.seconds:g}",
                            "--pid", str(pid), "--output", str(raw), "--nonblocking", *(["--gil"] if opts.gil else [])],
                           check=True, stdout=subprocess.DEVNULL, timeout=opts.seconds + 60)
        finally:
            load.join()
    run = result.get("run")
    sys.stdout.write(f"{target.label}, 16 connections: {getattr(run, 'rps', 0):.0f} req/s while profiled "
                     f"(py-spy samples the process from outside: it slows it a little)\n\n")
    sys.stdout.write(summarise(raw, opts.top) + f"\n\nraw folded stacks: {raw}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
