"""The HTTP and module benchmarks: print one markdown table per section; also write bench/results/run.json.

Usage: ``.venv/bin/python -m bench.run [--quick] [--only http|modules|lifecycle]``

``--only lifecycle``: the module life cycle rows alone (B1 add/rm one at a time; B5 start and stop of
50 and 200 modules beside supervisord), saved in bench/results/lifecycle.json.

Every process started here is stopped by its pid, even when a benchmark fails, and the
whole run is bounded by an alarm (``--budget`` seconds).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench import http_bench, module_bench
from bench.common import PYCACHE, Section, markdown, save_sections, setup_logging
from bench.stack import Stack

HERE = Path(__file__).resolve().parent

log = logging.getLogger("bench")


class BudgetExceeded(Exception):
    """The run went past its time budget."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BudgetExceeded("the benchmark run went past its time budget")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and modules (under a minute)")
    parser.add_argument("--only", choices=("http", "modules", "lifecycle"),
                        help="run one group of benchmarks (lifecycle: B1, and B5 beside supervisord only)")
    parser.add_argument("--budget", type=int, default=0, help="hard limit in seconds (default 150 quick, 420 full)")
    return parser.parse_args(argv)


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil

    return {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
            "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "pycache_prefix": str(PYCACHE)}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    setup_logging()
    budget = opts.budget or (300 if opts.quick else 900)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(budget)
    started = time.time()
    load_before = os.getloadavg()
    t0 = time.monotonic()
    sections: list[Section] = []
    try:
        with Stack() as stack:
            if opts.only in (None, "http"):
                sections += http_bench.run(stack, opts.quick)
            if opts.only in (None, "modules"):
                sections += module_bench.run(stack, opts.quick)
            if opts.only == "lifecycle":
                sections += module_bench.run(stack, opts.quick, lifecycle=True)
    finally:
        signal.alarm(0)
    elapsed = time.monotonic() - t0
    load_after = os.getloadavg()
    for section in sections:
        sys.stdout.write(markdown(section) + "\n")
    sys.stdout.write(f"_Run of {elapsed:.0f} s on {os.cpu_count()} cores; 1-minute load average "
                     f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (other work on the machine adds "
                     f"noise to every figure)._\n")
    sys.stdout.flush()
    failed = [f"{s.title.split('.')[0]}: {r.measure}" for s in sections for r in s.rows if r.verdict == "FAIL"]
    out = save_sections("lifecycle" if opts.only == "lifecycle" else "run", sections, opts.quick, started=started,
                        duration_s=round(elapsed, 1), environment=environment(), loadavg_before=load_before,
                        loadavg_after=load_after, failed_targets=failed)
    log.info("done in %.0f s; results in %s; %d target(s) missed%s", elapsed, out, len(failed),
             f": {', '.join(failed)}" if failed else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
