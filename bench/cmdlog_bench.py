"""Does the command log slow a busy queue? ``tell_module`` and ``mv`` rates with and without it.

Run: ``.venv/bin/python bench/cmdlog_bench.py [--quick]``. In-process (no HTTP), so the
figures isolate the cost the log adds to a command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for extra in (str(ROOT), str(ROOT / "pymodule")):
    if extra not in sys.path:
        sys.path.insert(0, extra)
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "pymodule"), os.environ.get("PYTHONPATH", "")])
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

from shmooze.cmdlog import CommandLog  # noqa: E402
from shmooze.moduletype import python_module  # noqa: E402
from shmooze.protocol import Command  # noqa: E402
from shmooze.queue import Queue  # noqa: E402

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


def measure(with_log: bool, seconds: float) -> dict[str, float]:
    q = Queue([python_module("echo", MODULE)])
    tmp = tempfile.mkdtemp(prefix="shmooze-cmdlog-")
    if with_log:
        q.command_log = CommandLog(os.path.join(tmp, "log.db"), "queue")
    q.start()
    try:
        uid = q.dispatch(Command("add", {"type": "echo"}))["result"]["uid"]
        tell = Command("tell_module", {"uid": uid, "cmd": "echo", "args": {"n": 1}})
        mv = Command("mv", {"uids": [uid]})
        rate(q, tell, 0.3)  # warm-up
        out = {"tell_module": rate(q, tell, seconds), "mv": rate(q, mv, seconds)}
        if with_log:
            started = time.perf_counter()
            q.command_log.flush(30)
            out["flush_after_s"] = time.perf_counter() - started
            out["rows"] = q.command_log.count()
        return out
    finally:
        q.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seconds = 1.0 if opts.quick else 3.0
    without = measure(False, seconds)
    with_log = measure(True, seconds)
    rows = [("measure", "without log (ops/s)", "with log (ops/s)", "ratio")]
    for key in ("tell_module", "mv"):
        rows.append((key, f"{without[key]:.0f}", f"{with_log[key]:.0f}", f"{with_log[key] / without[key]:.2f}"))
    print("\n### Command log cost (in-process queue, one module)\n")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows[1:]:
        print("| " + " | ".join(r) + " |")
    print(f"\nrows written: {with_log['rows']}, backlog flushed {with_log['flush_after_s'] * 1000:.1f} ms after the run")
    Path(__file__).with_name("cmdlog_results.json").write_text(json.dumps({"without": without, "with": with_log}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
