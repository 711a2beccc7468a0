"""What does the command log add to a command? ``tell_module`` and ``mv``, per command, with and without it.

Run: ``.venv/bin/python -m bench.cmdlog_bench [--quick]``. In-process (no HTTP), so the figures
isolate the cost the log adds to a command. A queue with a command log keeps its rows in its
journal (in the same write and sync as the command's change) and inserts them into SQLite on the
log's writer thread: the floor is the same queue, with its journal, without the log, for each
``durability`` (``fsync``, the default, and ``write``); target: at most 1.1x per command. For
reference, the log without a journal (rows committed to SQLite before the answer) against a queue
with neither. Every queue is measured in turn in every round (the order rotating); each figure is
the median of the rounds' mean time per command, with their min-max. Results also go to
bench/results/cmdlog.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ForeignMeter, Section, markdown, noise_note, rounds_row, save_sections
from shmooze.hosting.cmdlog import CommandLog
from shmooze.moduletype import python_module
from shmooze.protocol import Command
from shmooze.queue import Queue

ROOT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "pymodule"), os.environ.get("PYTHONPATH", "")])
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

MODULE = str(ROOT / "tests" / "modules" / "misbehave.py")
COMMANDS = ("tell_module", "mv")
#: The queues of a round: (journal, command log, durability).
QUEUES = {"journal fsync": (True, False, "fsync"), "journal fsync + log": (True, True, "fsync"),
          "journal write": (True, False, "write"), "journal write + log": (True, True, "write"),
          "neither": (False, False, "fsync"), "log alone": (False, True, "fsync")}
MAX_RATIO = 1.1


def per_command_us(q: Queue, cmd: Command, seconds: float) -> tuple[float, float]:
    """The mean time of ``cmd``, one after the other, for ``seconds``, and the CPU this process spent
    per command (every thread: the log's writer included)."""
    count = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            answer = q.dispatch(cmd)
            if not answer["success"]:
                raise SystemExit(f"benchmark command failed: {answer}")
        count += 20
    return (time.perf_counter() - started) / count * 1e6, (time.process_time() - cpu) / count * 1e6


def make_queue(journal: bool, log: bool, durability: str) -> tuple[Queue, str]:
    """A started in-process queue holding one echo module, with or without a journal and a command log;
    its uid."""
    folder = tempfile.mkdtemp(prefix="shmooze-cmdlog-")
    q = Queue([python_module("echo", MODULE)], journal=os.path.join(folder, "queue.journal") if journal else None,
              durability=durability)
    if log:
        q.command_log = CommandLog(os.path.join(folder, "log.db"), "queue", durability=durability)
    q.start()
    while q.restoring:
        time.sleep(0.01)
    uid = q.dispatch(Command("add", {"type": "echo"}))["result"]["uid"]
    return q, uid


def measure(seconds: float, rounds: int) -> tuple[dict[str, dict[str, list[tuple[float, float]]]], dict[str, float]]:
    """Time and CPU per command of each queue, in interleaved rounds (the order rotating)."""
    queues = {name: make_queue(*how) for name, how in QUEUES.items()}
    times: dict[str, dict[str, list[tuple[float, float]]]] = {name: {c: [] for c in COMMANDS} for name in queues}
    names = list(queues)
    try:
        commands = {name: {"tell_module": Command("tell_module", {"uid": uid, "cmd": "echo", "args": {"n": 1}}),
                           "mv": Command("mv", {"uids": [uid]})} for name, (_, uid) in queues.items()}
        for name, (q, _) in queues.items():
            per_command_us(q, commands[name]["tell_module"], 0.3)  # warm-up
        for r in range(rounds):
            for what in COMMANDS:
                for name in names[r % len(names):] + names[:r % len(names)]:
                    times[name][what].append(per_command_us(queues[name][0], commands[name][what], seconds))
        log_q = queues["journal fsync + log"][0]
        started = time.perf_counter()
        log_q.command_log.flush(30)
        extra = {"flush_after_s": time.perf_counter() - started, "rows": log_q.command_log.count(),
                 "dropped": log_q.command_log.dropped}
        return times, extra
    finally:
        for q, _ in queues.values():
            q.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seconds, rounds = (0.5, 3) if opts.quick else (1.5, 5)
    meter = ForeignMeter()
    times, extra = measure(seconds, rounds)
    sec = Section(f"Command log cost (in-process queue, one module; {rounds} rounds of {seconds:g} s per queue and "
                  "command, the queues interleaved, the order rotating)")
    def of(name: str, what: str, cpu: bool = False) -> list[float]:
        return [r[1 if cpu else 0] for r in times[name][what]]

    for what in COMMANDS:
        for durability in ("fsync", "write"):
            sec.add(rounds_row(f"{what} with the log ({durability}), per command", of(f"journal {durability} + log", what),
                               "us", of(f"journal {durability}", what),
                               f"the same queue without the log (journal, {durability})", max_ratio=MAX_RATIO))
        sec.add(rounds_row(f"reference: {what} with the log (fsync), CPU of the process per command",
                           of("journal fsync + log", what, cpu=True), "us", of("journal fsync", what, cpu=True),
                           "without the log"))
        sec.add(rounds_row(f"reference: {what} with the log and no journal (rows committed before the answer)",
                           of("log alone", what), "us", of("neither", what), "neither log nor journal"))
        sec.add(rounds_row(f"reference: {what} with the journal (fsync), no log", of("journal fsync", what), "us",
                           of("neither", what), "neither log nor journal"))
    sec.notes.append(f"Rows committed (journal fsync + log): {extra['rows']}, none lost ({extra['dropped']} dropped); "
                     f"{extra['flush_after_s'] * 1000:.1f} ms after the last answer, every row was in SQLite (each was "
                     "in the journal before its command was answered).")
    noise_note(sec, meter)
    sys.stdout.write(markdown(sec) + "\n")
    save_sections("cmdlog", [sec], opts.quick, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
