"""What does the state journal cost, and how fast does a queue come back after a restart?

Run: ``.venv/bin/python bench/journal_bench.py [--quick]``. In-process queues (no HTTP, which
would only dilute the difference), journal on and journal off in interleaved rounds:

- ``add+rm``: add a module (bash, the cheapest to start) and remove it, per pair;
- ``mv``: reorder a queue of 20 modules, per command;
- ``parameter updates``: a module sends 20 000 ``set_parameters``; time until the service has them all;
- restore: from ``start()`` of a queue whose journal holds N modules to all of them running,
  against adding the same N modules by hand (one ``add`` after the other, as a client would).

Each figure: median with min-max over the rounds; ratios are of medians (journal on / off; goal
<= 1.05x). Results also go to ``bench/results/journal.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for extra in (str(ROOT), str(ROOT / "pymodule"), str(ROOT / "bench")):
    if extra not in sys.path:
        sys.path.insert(0, extra)
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "pymodule"), os.environ.get("PYTHONPATH", "")])

from common import Section, markdown, rounds_row, save_sections  # noqa: E402
from shmooze.moduletype import ModuleType, python_module  # noqa: E402
from shmooze.protocol import Command  # noqa: E402
from shmooze.queue import Queue  # noqa: E402

SHOUT = str(ROOT / "examples" / "modules" / "shout.sh")
MISBEHAVE = str(ROOT / "tests" / "modules" / "misbehave.py")
FAST = {"rm_timeout": 0.5, "term_timeout": 0.5}
FLOOD = 20_000


def types() -> list[ModuleType]:
    return [ModuleType("shout", ("bash", SHOUT), **FAST),
            python_module("flood", MISBEHAVE, "--flood", str(FLOOD), init_timeout=10, **FAST)]


def run(q: Queue, cmd: str, **args):
    answer = q.dispatch(Command(cmd, args))
    if not answer["success"]:
        raise SystemExit(f"benchmark command {cmd} failed: {answer}")
    return answer.get("result")


def queue_with(journal: str | None) -> Queue:
    q = Queue(types(), journal=journal)
    q.start()
    while q.restoring:
        time.sleep(0.005)
    return q


def one_round(journal_on: bool, pairs: int) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix="shmooze-journal-bench-")
    q = queue_with(os.path.join(tmp, "queue.journal") if journal_on else None)
    try:
        t0 = time.perf_counter()
        for _ in range(pairs):
            uid = run(q, "add", type="shout", args={"text": "x"})["uid"]
            run(q, "rm", uids=[uid])
        add_rm = (time.perf_counter() - t0) / pairs
        uids = [run(q, "add", type="shout", args={"text": str(i)})["uid"] for i in range(20)]
        moves = 2000
        t0 = time.perf_counter()
        for i in range(moves):
            run(q, "mv", uids=[uids[i % 20]])
        mv = (time.perf_counter() - t0) / moves
        uid = run(q, "add", type="flood")["uid"]
        t0 = time.perf_counter()
        while not run(q, "ask_module", uid=uid, parameters=["flood_done"]):
            time.sleep(0.001)
        updates = (time.perf_counter() - t0) / FLOOD
        if q.journal is not None:
            q.journal.flush(30)
        return {"add_rm_ms": add_rm * 1000, "mv_us": mv * 1e6, "update_us": updates * 1e6}
    finally:
        q.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def restore_round(count: int) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix="shmooze-journal-bench-")
    path = os.path.join(tmp, "queue.journal")
    try:
        q = queue_with(path)
        try:
            t0 = time.perf_counter()
            for i in range(count):
                run(q, "add", type="shout", args={"text": str(i)})
            by_hand = time.perf_counter() - t0
            q.journal.flush(30)
        finally:
            q.stop()
        t0 = time.perf_counter()
        q = queue_with(path)
        try:
            restored = time.perf_counter() - t0
            if len(run(q, "queue")) != count:
                raise SystemExit("not every module came back")
        finally:
            q.stop()
        return {"by_hand_s": by_hand, "restore_s": restored}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 rounds, fewer modules")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rounds = 3 if opts.quick else 5
    pairs = 20 if opts.quick else 50
    restore_count = 50 if opts.quick else 100
    on: list[dict[str, float]] = []
    off: list[dict[str, float]] = []
    for r in range(rounds):  # interleaved, the order alternating, nothing discarded
        for journal_on in ((True, False) if r % 2 == 0 else (False, True)):
            (on if journal_on else off).append(one_round(journal_on, pairs))
    restores = [restore_round(restore_count) for _ in range(rounds)]

    sec = Section(f"State journal cost (in-process queue; {rounds} rounds, on and off interleaved, the order "
                  "alternating)")
    for key, label, unit in (("add_rm_ms", "add + rm, per pair", "ms"), ("mv_us", "mv (20 modules), per command", "us"),
                             ("update_us", f"parameter updates ({FLOOD}), per update", "us")):
        sec.add(rounds_row(f"journal on: {label}", [x[key] for x in on], unit, [x[key] for x in off], "journal off",
                           max_ratio=1.05 if key == "update_us" else None))
    sec.add(rounds_row(f"{restore_count} modules restored at start, until all running",
                       [x["restore_s"] for x in restores], "s", [x["by_hand_s"] for x in restores],
                       "added by hand one after the other"))
    sys.stdout.write(markdown(sec) + "\n")
    save_sections("journal", [sec], opts.quick, rounds_on=on, rounds_off=off, restore=restores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
