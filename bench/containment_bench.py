"""C. Containment: ``add`` and ``rm`` with a cgroup per module and the peer check, beside today's
process group alone; the cost of the peer check itself, and of its refusals; adds while another
user floods the module's ports.

Usage: ``.venv/bin/python -m bench.containment_bench [--quick]``

Four configurations of an in-process queue run the same trivial Python module, in rounds that
interleave them (so load from other processes hits every configuration alike):

* ``floor``: process group only, no environment sweep, no peer check (what shmooze did before);
* ``process-group``: the fallback, with the environment sweep at every ``rm`` and the peer check;
* ``cgroup``: a cgroup v2 per module (launcher, ``cgroup.kill``, folder removed) and the peer check;
* ``cgroup, no check``: the same without the peer check, to isolate its cost;
* ``cgroup + limits``: ``cgroup`` with memory, processes and CPU-rate limits on the type (written
  into the module's cgroup, or its cgroup v1 folders on hybrid systems, made and removed each time).

Each figure is the median over rounds of each round's median, with min-max across rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Section, child_env, markdown, rounds_row, save_sections, setup_logging
from shmooze import protocol
from shmooze.moduletype import ModuleType, python_module
from shmooze.queue import Queue
from shmooze.system import cgroup, peer
from shmooze.system.containment import PROCESS_GROUP, Containment

HERE = Path(__file__).resolve().parent

TRIVIAL = str(HERE / "trivial_module.py")
SHOUT = str(HERE.parent / "examples" / "modules" / "shout.sh")
ATTACKER = HERE.parent / "tests" / "port_attacker.py"
# Another local user, for the stranger's side of the peer check (tests run as root).
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] \
    if os.geteuid() == 0 and shutil.which("setpriv") else []


class Today(Containment):
    """The floor: process group only, as before (no environment sweep)."""

    def __init__(self, token: str, mode: str = PROCESS_GROUP, sweep_tokens: bool = True, limits: str = "rlimit"):
        super().__init__(token, PROCESS_GROUP, sweep_tokens=False, limits="rlimit")


def make_queue(kind: str) -> Queue:
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "pymodule"), str(HERE.parent)])
    limits = {"limit_memory": 256 << 20, "limit_processes": 64, "limit_cpu_rate": 1.0} if "limits" in kind else {}
    mtype = python_module("trivial", TRIVIAL, rm_timeout=3, term_timeout=3, **limits)
    if kind == "floor":
        q = Queue([mtype], containment=PROCESS_GROUP, check_peers=False)
        import shmooze.hosting.host as host_module

        original = host_module.Containment
        host_module.Containment = Today  # type: ignore[misc]
        try:
            q.start()
        finally:
            host_module.Containment = original  # type: ignore[misc]
        return q
    mode = "cgroup" if kind.startswith("cgroup") else PROCESS_GROUP
    q = Queue([mtype], containment=mode, check_peers=(kind != "cgroup, no check"))
    q.start()
    return q


def cycles(q: Queue, n: int, mtype: str = "trivial") -> tuple[list[float], list[float]]:
    """``n`` adds then ``n`` rms (one module each), in ms."""
    adds, rms, uids = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        answer = q.dispatch(protocol.Command("add", {"type": mtype}))
        adds.append((time.perf_counter() - t0) * 1000)
        assert answer["success"], answer
        uids.append(answer["result"]["uid"])
    for uid in uids:
        t0 = time.perf_counter()
        answer = q.dispatch(protocol.Command("rm", {"uids": [uid]}))
        rms.append((time.perf_counter() - t0) * 1000)
        assert answer["success"], answer
    return adds, rms


CHILD = "import socket, sys, time\ns = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n" \
        "sys.stdin.read()\n"


def peer_check_cost(n: int, stranger: bool = False) -> list[float]:
    """Microseconds per :func:`shmooze.system.peer.check` on a connection from a child process (one per stream);
    with ``stranger``, the child runs as another user and each check refuses it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    child = subprocess.Popen((AS_NOBODY if stranger else []) + [sys.executable, "-c", CHILD,
                                                               str(listener.getsockname()[1])],
                             stdin=subprocess.PIPE, env=child_env())
    try:
        conn, _ = listener.accept()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            assert bool(peer.check(conn, [child.pid])) is not stranger
            out.append((time.perf_counter() - t0) * 1e6)
        conn.close()
        return out
    finally:
        child.stdin.close()
        child.wait(10)
        listener.close()


def flood_adds(q: Queue, n: int, needle: str, flood: bool) -> float:
    """Median ``add`` (ms) of ``n`` modules that connect 0.2 s after they start, with another user
    flooding each one's ports (tests/port_attacker.py) or not; each is removed after."""
    attacker = None
    if flood:
        attacker = subprocess.Popen(AS_NOBODY + [sys.executable, str(ATTACKER), "flood", needle, "120"],
                                    stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert attacker.stdout is not None and attacker.stdout.readline().strip() == "watching"
    try:
        adds, _ = cycles(q, n, "slow")
    finally:
        if attacker is not None:
            attacker.terminate()
            attacker.communicate(timeout=30)
    return statistics.median(adds)


def run(quick: bool) -> Section:
    rounds, n = (3, 8) if quick else (5, 20)
    kinds = ["floor", "process-group", "cgroup, no check", "cgroup", "cgroup + limits"]
    if cgroup.usable_parent()[0] is None:
        kinds = [k for k in kinds if not k.startswith("cgroup")]
    queues = {k: make_queue(k) for k in kinds}
    if "cgroup + limits" in queues and not queues["cgroup + limits"].containment.places.kinds():
        queues.pop("cgroup + limits").stop()  # no writable controller: limits would be rlimits
        kinds.remove("cgroup + limits")
    add_medians: dict[str, list[float]] = {k: [] for k in kinds}
    rm_medians: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for q in queues.values():
            cycles(q, 2)  # warm up: imports, first cgroup
        for _ in range(rounds):
            for kind in kinds:
                adds, rms = cycles(queues[kind], n)
                add_medians[kind].append(statistics.median(adds))
                rm_medians[kind].append(statistics.median(rms))
    finally:
        for q in queues.values():
            q.stop()
    section = Section(f"Containment: add and rm of a trivial Python module ({rounds} rounds x {n}, "
                      "interleaved; per round the median)")
    for what, medians in (("add", add_medians), ("rm", rm_medians)):
        for kind in kinds[1:]:
            section.add(rounds_row(f"{what}, {kind}", medians[kind], "ms", medians["floor"], "process group only"))
    checks = [2 * statistics.median(peer_check_cost(200)) / 1000 for _ in range(rounds)]
    section.add(rounds_row("peer check per add (2 connections)", checks, "ms", at_most=1.0))
    if AS_NOBODY:
        refusals = [statistics.median(peer_check_cost(200, stranger=True)) for _ in range(rounds)]
        section.add(rounds_row("peer check refusing another user's connection", refusals, "us", at_most=100.0))
        needle = f"shmooze-flood-{os.getpid()}"
        q = Queue([ModuleType("slow", ("bash", "-c", 'sleep 0.2; exec bash "$0" "$@"', SHOUT, needle))],
                  containment=PROCESS_GROUP)
        q.start()
        calm: list[float] = []
        flooded: list[float] = []
        try:
            for _ in range(rounds):
                calm.append(flood_adds(q, n // 2, needle, False))
                flooded.append(flood_adds(q, n // 2, needle, True))
            refused = q.dispatch(protocol.Command("status", {}))["result"]["refused_connections"]
        finally:
            q.stop()
        section.add(rounds_row("add of a module that connects after 0.2 s, another user flooding its ports",
                               flooded, "ms", calm, "no flood", max_ratio=1.5, refused=refused))
        section.notes.append(f"Flood: tests/port_attacker.py as uid 65534, 256 connects in flight on each port of "
                             f"each starting module; {refused} connections refused in all.")
    else:
        section.notes.append("Peer check against another user, and adds under a flood: skipped (needs root "
                             "and setpriv).")
    section.notes.append("add: spawn until init answered; rm: rm sent until the process is reaped and its "
                         "containment cleared (environment sweep or cgroup removed).")
    return section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and modules")
    opts = parser.parse_args()
    setup_logging()
    import logging

    logging.getLogger("shmooze").setLevel(logging.WARNING)
    section = run(opts.quick)
    sys.stdout.write(markdown(section))
    save_sections("containment", [section], opts.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
