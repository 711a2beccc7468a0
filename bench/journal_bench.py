"""What does keeping a command cost, and how fast does a queue come back after a restart?

Run: ``.venv/bin/python -m bench.journal_bench [--quick] [--baseline REF|DIR|none]``. In-process queues
(no HTTP, which would only dilute the difference), each round in a fresh process, four ways in
interleaved rounds (the order rotating):

- ``fsync`` (the default): journal and command log on; a command is answered once its change is
  synced to the disk (group commit: one write and one sync for the commands of a moment);
- ``write``: the same, answered once the change is written to the kernel (synced within 50 ms);
- ``today``: journal and command log on, older code (``--baseline``: a git ref, extracted to a
  temporary folder, or a folder), for reference;
- ``off``: no journal, no command log: the floor.

Measured per round: ``add`` + ``rm`` of a module (bash, the cheapest to start), one pair after the
other (the round's median pair) and by 16 clients at once (per pair: throughput); ``mv`` of a queue
of 20 modules (the round's median command); 20 000
parameter updates until the service has them all; and the restore: from ``start()`` of a queue whose
journal holds N modules to all of them running, against adding them by hand.

Each figure: median with min-max over the rounds; ratios are of medians (target: within 1.05x of
``off``, the floor, for every measure; ``today`` is for reference only, from a git ref given with
``--baseline``). Results also go to ``bench/results/journal.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The modules a round starts import shmooze_module from it too.
from shmooze.hosting.cmdlog import CommandLog
from shmooze.moduletype import ModuleType, python_module
from shmooze.protocol import Command
from shmooze.queue import Queue

ROOT = Path(__file__).resolve().parent.parent
SRC = Path(os.environ.get("JOURNAL_BENCH_SRC") or ROOT)  # the code measured (another checkout for "today")
os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), str(SRC / "pymodule"), os.environ.get("PYTHONPATH", "")])

SHOUT = str(ROOT / "examples" / "modules" / "shout.sh")
MISBEHAVE = str(ROOT / "tests" / "modules" / "misbehave.py")
FAST = {"rm_timeout": 0.5, "term_timeout": 0.5}
FLOOD = 20_000
CLIENTS = 16
MODES = ("fsync", "write", "today", "off")
MAX_RATIO = 1.05  # what keeping a command may cost, against neither journal nor log
LABELS = {"fsync": "answered once synced (fsync, the default)", "write": "answered once written (write)",
          "today": "before (the --baseline code)", "off": "no journal, no command log"}


def types() -> list[ModuleType]:
    return [ModuleType("shout", ("bash", SHOUT), **FAST),
            python_module("flood", MISBEHAVE, "--flood", str(FLOOD), init_timeout=10, **FAST)]


def run(q: Queue, cmd: str, **args):
    answer = q.dispatch(Command(cmd, args))
    if not answer["success"]:
        raise SystemExit(f"benchmark command {cmd} failed: {answer}")
    return answer.get("result")


def queue_with(journal: str | None, durability: str | None = None, log: str | None = None) -> Queue:
    """A started queue; ``durability`` None: the code's own default (the only way of ``today``)."""
    options = {} if durability is None else {"durability": durability}
    q = Queue(types(), journal=journal, **options)
    if log is not None:
        q.command_log = CommandLog(log, "queue", **options)
    q.start()
    while q.restoring:
        time.sleep(0.005)
    return q


def add_rm(q: Queue, pairs: int, times: list[float] | None = None) -> None:
    for _ in range(pairs):
        t0 = time.perf_counter()
        uid = run(q, "add", type="shout", args={"text": "x"})["uid"]
        run(q, "rm", uids=[uid])
        if times is not None:
            times.append(time.perf_counter() - t0)


def moves_and_updates(q: Queue, moves: int) -> tuple[float, float]:
    """Seconds of the median ``mv`` in a queue of 20, and per parameter update of a flood (until the
    service has them all)."""
    uids = [run(q, "add", type="shout", args={"text": str(i)})["uid"] for i in range(20)]
    mv_times = []
    for i in range(moves):
        t0 = time.perf_counter()
        run(q, "mv", uids=[uids[i % 20]])
        mv_times.append(time.perf_counter() - t0)
    uid = run(q, "add", type="flood")["uid"]
    t0 = time.perf_counter()
    while not run(q, "ask_module", uid=uid, parameters=["flood_done"]):
        time.sleep(0.001)
    return statistics.median(mv_times), (time.perf_counter() - t0) / FLOOD


def one_round(mode: str, pairs: int, moves: int) -> dict[str, float]:
    """One round of one mode (in its own process: ``--round``)."""
    tmp = tempfile.mkdtemp(prefix="shmooze-journal-bench-")
    keep = mode != "off"
    q = queue_with(os.path.join(tmp, "queue.journal") if keep else None, mode if mode in ("fsync", "write") else None,
                   os.path.join(tmp, "log.db") if keep else None)
    try:
        pair_times: list[float] = []
        add_rm(q, pairs, pair_times)
        sequential = statistics.median(pair_times)  # (a median: one pair held up by the machine is not the cost)
        threads = [threading.Thread(target=add_rm, args=(q, max(1, pairs // 4))) for _ in range(CLIENTS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        together = (time.perf_counter() - t0) / (CLIENTS * max(1, pairs // 4))
        mv, updates = moves_and_updates(q, moves)
        if q.journal is not None:
            q.journal.flush(30)
        syncs = getattr(q.journal, "syncs", None)
        return {"add_rm_ms": sequential * 1000, "add_rm_16_ms": together * 1000, "mv_us": mv * 1e6,
                "update_us": updates * 1e6, "journal_syncs": syncs if syncs is not None else -1}
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


def baseline_source(spec: str) -> tuple[str | None, str]:
    """A folder holding the code of ``today`` and what it is: a folder given, a git ref extracted (to a
    temporary folder: see :func:`main`), or ``auto``: the parent of the commit that brought
    ``durability`` into shmooze/hosting/journal.py."""
    if spec == "none":
        return None, "none"
    if os.path.isdir(spec):
        return spec, spec
    ref = spec
    if spec == "auto":
        found = subprocess.run(["git", "-C", str(ROOT), "log", "--reverse", "--format=%H", "-S", "DURABILITY = ",
                                "--", "shmooze/hosting/journal.py"], capture_output=True, text=True).stdout.split()
        if not found:
            return None, "none (no commit brings durability: this checkout is today)"
        ref = found[0] + "^"
    folder = tempfile.mkdtemp(prefix="shmooze-journal-today-")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "shmooze", "pymodule"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"cannot extract {ref}: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
    described = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", ref], capture_output=True,
                               text=True).stdout.strip()
    return folder, f"git {described[:70]}"


def round_in_child(mode: str, pairs: int, moves: int, today: str | None) -> dict[str, float]:
    """One round in a fresh process that imports shmooze from the code measured (run by its path, it
    imports nothing of bench/: only that code is on its path)."""
    src = today if mode == "today" and today else str(ROOT)
    env = {**os.environ, "JOURNAL_BENCH_SRC": src, "PYTHONPATH": os.pathsep.join([src, os.path.join(src, "pymodule")])}
    out = subprocess.run([sys.executable, __file__, "--round", mode, "--pairs", str(pairs), "--moves", str(moves)],
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"round {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 rounds, fewer modules")
    parser.add_argument("--baseline", default="none", help="today's code: a git ref, a folder, auto or none")
    parser.add_argument("--round", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--moves", type=int, default=500, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if opts.round:
        sys.stdout.write(json.dumps(one_round(opts.round, opts.pairs, opts.moves)) + "\n")
        return 0
    from bench.common import ForeignMeter, Section, markdown, noise_note, rounds_row, save_sections  # (here: a round
    # imports only the code measured)

    meter = ForeignMeter()

    rounds = 3 if opts.quick else 7
    pairs = 20 if opts.quick else 48
    moves = 200 if opts.quick else 500
    restore_count = 50 if opts.quick else 100
    today, today_label = baseline_source(opts.baseline)
    modes = [m for m in MODES if m != "today" or today]
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    try:
        for r in range(rounds):  # interleaved, the order rotating, nothing discarded
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                results[mode].append(round_in_child(mode, pairs, moves, today))
    finally:
        if today and today != opts.baseline:  # extracted here
            shutil.rmtree(today, ignore_errors=True)
    restores = [restore_round(restore_count) for _ in range(rounds)]

    sec = Section(f"Keeping a command: journal and command log (in-process queue; {rounds} rounds, the ways "
                  "interleaved, each round a fresh process)")
    measures = (("add_rm_ms", "add + rm, median pair", "ms"),
                ("add_rm_16_ms", f"add + rm by {CLIENTS} clients at once, per pair", "ms"),
                ("mv_us", "mv (20 modules), median command", "us"),
                ("update_us", f"parameter updates ({FLOOD}), per update", "us"))
    for key, label, unit in measures:
        for mode in ("fsync", "write"):
            sec.add(rounds_row(f"{LABELS[mode]}: {label}", [x[key] for x in results[mode]], unit,
                               [x[key] for x in results["off"]], LABELS["off"], max_ratio=MAX_RATIO))
        if today:
            sec.add(rounds_row(f"reference: {LABELS['today']}: {label}", [x[key] for x in results["today"]], unit,
                               [x[key] for x in results["off"]], LABELS["off"]))
    sec.add(rounds_row(f"{restore_count} modules restored at start, until all running",
                       [x["restore_s"] for x in restores], "s", [x["by_hand_s"] for x in restores],
                       "added by hand one after the other"))
    syncs = [x["journal_syncs"] for x in results["fsync"]]
    sec.notes.append(f"today = {today_label}. Journal syncs per fsync round (median): {sorted(syncs)[len(syncs) // 2]:.0f}"
                     f" for {pairs * 2 + CLIENTS * max(1, pairs // 4) * 2 + 21 + moves + 1} changes "
                     "(group commit: the 16 clients share syncs).")
    noise_note(sec, meter)
    sys.stdout.write(markdown(sec) + "\n")
    save_sections("journal", [sec], opts.quick, rounds=results, restore=restores, today=today_label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
