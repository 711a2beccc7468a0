"""Does the command log slow a busy queue? ``tell_module`` and ``mv`` rates with and without it.

Run: ``.venv/bin/python -m bench.cmdlog_bench [--quick]``. In-process (no HTTP), so the
figures isolate the cost the log adds to a command. A command is answered once its row is
committed (group commit): with ``durability`` ``fsync`` (the default, SQLite ``synchronous=FULL``)
or ``write`` (``NORMAL``). Three queues, without the log and with it both ways, are measured in
turn in every round. Results also go to bench/results/cmdlog.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Section, markdown, rounds_row, save_sections
from shmooze.hosting.cmdlog import CommandLog
from shmooze.moduletype import python_module
from shmooze.protocol import Command
from shmooze.queue import Queue

ROOT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "pymodule"), os.environ.get("PYTHONPATH", "")])
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

MODULE = str(ROOT / "tests" / "modules" / "misbehave.py")


def rate(q: Queue, cmd: Command, seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            answer = q.dispatch(cmd)
            if not answer["success"]:
                raise SystemExit(f"benchmark command failed: {answer}")
        count += 50
    return count / seconds


def make_queue(durability: str | None) -> tuple[Queue, str]:
    """A started in-process queue holding one echo module (with a command log kept with ``durability``,
    or none); its uid."""
    q = Queue([python_module("echo", MODULE)])
    if durability:
        q.command_log = CommandLog(os.path.join(tempfile.mkdtemp(prefix="shmooze-cmdlog-"), "log.db"), "queue",
                                   durability=durability)
    q.start()
    uid = q.dispatch(Command("add", {"type": "echo"}))["result"]["uid"]
    return q, uid


def measure(seconds: float, rounds: int) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Rates of tell_module and mv without and with the log, in interleaved rounds (without, fsync, write, ...)."""
    queues = {"without": make_queue(None), "fsync": make_queue("fsync"), "write": make_queue("write")}
    rates: dict[str, dict[str, list[float]]] = {k: {"tell_module": [], "mv": []} for k in queues}
    try:
        commands = {k: {"tell_module": Command("tell_module", {"uid": uid, "cmd": "echo", "args": {"n": 1}}),
                        "mv": Command("mv", {"uids": [uid]})} for k, (_, uid) in queues.items()}
        for k, (q, _) in queues.items():
            rate(q, commands[k]["tell_module"], 0.3)  # warm-up
        for _ in range(rounds):
            for what in ("tell_module", "mv"):
                for k, (q, _) in queues.items():
                    rates[k][what].append(rate(q, commands[k][what], seconds))
        log_q = queues["fsync"][0]
        started = time.perf_counter()
        log_q.command_log.flush(30)
        extra = {"flush_after_s": time.perf_counter() - started, "rows": log_q.command_log.count(),
                 "dropped": log_q.command_log.dropped}
        return rates, extra
    finally:
        for q, _ in queues.values():
            q.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seconds, rounds = (0.5, 3) if opts.quick else (2.0, 5)
    rates, extra = measure(seconds, rounds)
    sec = Section(f"Command log cost (in-process queue, one module; {rounds} rounds of {seconds:g} s, without and "
                  "with the log interleaved)")
    for what in ("tell_module", "mv"):
        for durability in ("fsync", "write"):
            sec.add(rounds_row(f"{what} with the log, answered once committed ({durability})", rates[durability][what],
                               "ops/s", rates["without"][what], "without the log"))
    sec.notes.append(f"Rows committed (fsync queue): {extra['rows']}, none lost ({extra['dropped']} dropped); nothing "
                     f"left to write after the run ({extra['flush_after_s'] * 1000:.1f} ms to make sure): every row was "
                     "committed before its command was answered.")
    sys.stdout.write(markdown(sec) + "\n")
    save_sections("cmdlog", [sec], opts.quick, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
