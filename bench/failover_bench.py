"""How fast does a standby take over, and what does keeping the journal in etcd cost?

Run: ``.venv/bin/python -m bench.failover_bench [--quick] [--rounds N] [--docs]`` (root for the failover
part: simulated hosts; it is skipped, with the reason, elsewhere).

- **Failover**: simulated hosts (shmooze.testing.netns): three etcd members on hosts of their own,
  the queue on two candidate hosts (``shmooze run --services queue`` on each), a gateway host, and a
  client host where this process's probe runs (threads moved there with ``setns``). The queue holds
  five modules and a background. Each round the leader host's link goes down; measured from that
  moment: the first command answered by the new leader (``status`` through the gateway every 20 ms:
  the answer's pid is the new leader's), and every restored module running on the new leader's host
  (module processes sampled every 50 ms). Then the link comes back, the old leader stands by, and
  the next round takes down the other host. The lease is the default ``etcd_lease_ttl`` (5 s).
- **Journal**: the same in-process queue with its journal in a file (``durability`` fsync, the
  default) or in etcd (three members on loopback, each syncing its log; every write a transaction
  fenced on the registration), in interleaved rounds: ``add`` + ``rm`` (median pair), ``mv`` of a
  queue of 20 (median command), parameter updates (per update, until the service has them all).

Each figure: median with min-max over the rounds. Results go to ``bench/results/failover.json``;
``--docs`` also writes both tables into docs/past-one-machine.md between its ``failover:begin`` and
``failover:end`` marks (the page's figures are never typed by hand).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, Proc, Section, child_env, markdown, rounds_row, save_sections, setup_logging
from bench.journal_bench import FLOOD, add_rm, moves_and_updates, types
from shmooze.cluster.directory import Directory
from shmooze.cluster.etcd import Etcd
from shmooze.cluster.keys import Registration
from shmooze.hosting.etcdjournal import EtcdJournal, fence_on
from shmooze.queue import Queue
from shmooze.testing import etcd as etcd_kit
from shmooze.testing import netns

log = logging.getLogger("bench.failover")

HOSTS = {"gw": 11, "q1": 21, "q2": 23, "client": 30, "e1": 31, "e2": 32, "e3": 33}
CANDIDATES = ("q1", "q2")
PORT, QUEUE_PORT = 8080, 8081
SERVICE_KEY = "failover-bench-service-key-0123456789"
DOCS = ROOT / "docs" / "past-one-machine.md"
DOCS_BEGIN = "<!-- failover:begin (written by bench/failover_bench.py --docs) -->"
DOCS_END = "<!-- failover:end -->"
MODULES = 5


# -- failover on simulated hosts -------------------------------------------------------------------

class Hosts:
    """The simulated hosts, their processes, and the probe on the client host."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.hosts = netns.Hosts(HOSTS)
        self.procs: dict[str, Proc] = {}
        self.retired: list[Proc] = []
        self.etcd: etcd_kit.EtcdCluster | None = None
        self.answers: list[tuple[float, int | None]] = []  # (time, pid of the process that answered status)
        self.samples: list[tuple[float, dict[str, set[str]]]] = []
        self._stop = threading.Event()
        self.pool = ThreadPoolExecutor(3, initializer=netns.enter, initargs=(self.hosts.ns("client"),))
        self.directory: Directory | None = None

    def start(self) -> None:
        self.hosts.create()
        self.etcd = etcd_kit.EtcdCluster(3, hosts=self.hosts, on=["e1", "e2", "e3"])
        self.etcd.start()
        self.run("q1", "queue")
        self.run("gw", "gateway")
        self.wait_running("q1")
        self.wait_running("gw")
        self.directory = self.pool.submit(self._follow).result(30)
        self.wait(lambda: self.leader_host() == "q1", 60, "q1 to lead")
        self.run("q2", "queue")
        self.wait_running("q2")
        self.pool.submit(self._poll)
        threading.Thread(target=self._sample, daemon=True).start()

    def settings(self, host: str) -> Path:
        a = self.hosts.addresses
        path = self.tmp / f"{host}.json"
        path.write_text(json.dumps({
            "ports": {"wsgi": PORT, "queue": QUEUE_PORT}, "hosts": {"queue": [a[c] for c in CANDIDATES]},
            "etcd": self.etcd.endpoints if self.etcd else [], "host": "0.0.0.0", "service_key": SERVICE_KEY,
            "connect_timeout": 1.0, "services": {"queue": "jukebox.app:make_queue"}, "run_path": str(self.tmp / f"run-{host}"),
            "journal_path": str(self.tmp / f"journal-{host}"), "stop_timeout": 3, "start_timeout": 120,
            "gateway_workers": 1}))
        return path

    def run(self, host: str, services: str) -> None:
        if host in self.procs:
            self.retired.append(self.procs[host])
        self.procs[host] = Proc(host, self.hosts.argv(host, [PYTHON, "-m", "shmooze", "run", str(self.settings(host)),
                                                             "--services", services]),
                                child_env(), log_path=self.tmp / f"{host}-{len(self.retired)}.log")

    def wait_running(self, host: str) -> None:
        proc = self.procs[host]
        self.wait(lambda: "shmooze: running" in proc.log() or proc.exited(), 150, f"{host} to run")
        if proc.exited():
            raise SystemExit(f"{host} did not start:\n{proc.log_tail()}")

    @staticmethod
    def wait(predicate: Any, timeout: float, what: str) -> Any:
        from bench.common import wait_until

        return wait_until(predicate, timeout, what, interval=0.05)

    def _follow(self) -> Directory:
        assert self.etcd is not None
        return Directory(Etcd(self.etcd.endpoints), "/shmooze/services/").start(wait=10)

    def leader(self) -> Registration | None:
        return self.directory.registration("queue") if self.directory else None

    def leader_host(self) -> str | None:
        found = self.leader()
        if found is None:
            return None
        return next((h for h in CANDIDATES if f"//{self.hosts.addresses[h]}:" in found.url), None)

    def _poll(self) -> None:
        """``status`` through the gateway every 20 ms, each on a thread of its own (one held up by a
        host that is gone delays none of the next): which process answered (None: an error)."""
        while not self._stop.wait(0.02):
            if threading.active_count() < 200:
                threading.Thread(target=self._status, daemon=True).start()  # (in this thread's namespace)

    def _status(self) -> None:
        conn = http.client.HTTPConnection(self.hosts.addresses["gw"], PORT, timeout=5.0)
        try:
            conn.request("POST", "/queue", b'{"cmd": "status"}', {"Content-Type": "application/json"})
            reply = conn.getresponse()
            answer = json.loads(reply.read())
            self.answers.append((time.monotonic(), answer["result"]["pid"] if reply.status == 200 else None))
        except (OSError, ValueError, KeyError):
            self.answers.append((time.monotonic(), None))
        finally:
            conn.close()

    def ask(self, body: Any) -> Any:
        return self.pool.submit(self._ask, body).result(30)

    def _ask(self, body: Any) -> Any:
        conn = http.client.HTTPConnection(self.hosts.addresses["gw"], PORT, timeout=10)
        try:
            conn.request("POST", "/queue", json.dumps(body), {"Content-Type": "application/json"})
            reply = conn.getresponse()
            answer = json.loads(reply.read())
            if reply.status != 200:
                raise SystemExit(f"the gateway answered {reply.status}: {answer}")
            return answer
        finally:
            conn.close()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append((time.monotonic(), self.hosts.module_uids(CANDIDATES)))

    def modules_now(self) -> dict[str, set[str]]:
        return self.samples[-1][1] if self.samples else self.hosts.module_uids(CANDIDATES)

    def stop(self) -> None:
        from shmooze.testing import stop_all

        self._stop.set()
        if self.directory is not None:
            self.pool.submit(self.directory.close)
        self.pool.shutdown(wait=True)
        try:
            stop_all([self.procs[h] for h in ("gw", "q1", "q2") if h in self.procs] + self.retired)
        finally:
            if self.etcd is not None:
                self.etcd.stop()
            self.hosts.remove()


def failover_round(world: Hosts, expected: set[str]) -> dict[str, float]:
    """The leader's link down: seconds to the new leader's first answer, and to every module running there."""
    old = world.leader_host()
    new = next(h for h in CANDIDATES if h != old)
    world.wait(lambda: expected <= world.modules_now()[old], 30, f"every module on {old}")
    lost_at = time.monotonic()
    world.hosts.link(old, up=False)
    try:
        world.wait(lambda: world.leader_host() == new, 60, f"{new} to be elected")
        pid = world.leader().pid
        answered = world.wait(lambda: next((t for t, who in world.answers if t >= lost_at and who == pid), None), 30,
                              "the new leader's first answer")
        running = world.wait(lambda: next((t for t, found in world.samples if t >= lost_at and expected <= found[new]),
                                          None), 60, f"every module running on {new}")
    finally:
        world.hosts.link(old, up=True)
    world.wait(lambda: not world.modules_now()[old], 60, f"{old} to stop its modules")
    return {"first_answer_s": answered - lost_at, "all_running_s": running - lost_at}


def failover(rounds: int) -> tuple[Section, list[dict[str, float]]]:
    tmp = Path(tempfile.mkdtemp(prefix="shmooze-failover-bench-"))
    world = Hosts(tmp)
    results = []
    ok = False
    try:
        world.start()
        for _ in range(MODULES):
            world.ask({"cmd": "add", "args": {"type": "countdown", "args": {"seconds": 3600}}})
        queue, bg = (item["result"] for item in world.ask([{"cmd": "queue"}, {"cmd": "bg"}]))
        expected = {m["uid"] for m in queue} | ({bg["uid"]} if bg else set())
        for r in range(rounds):
            results.append(failover_round(world, expected))
            log.info("round %d: %s", r + 1, results[-1])
        ok = True
    finally:
        world.stop()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log.error("logs kept in %s", tmp)
    sec = Section(f"Failover: the leader host's link down (simulated hosts, three etcd members, lease 5 s; {rounds} "
                  f"rounds; a queue of {MODULES} modules and a background)")
    sec.add(rounds_row("link down -> first command answered by the new leader", [r["first_answer_s"] for r in results],
                       "s"))
    sec.add(rounds_row("link down -> every restored module running", [r["all_running_s"] for r in results], "s",
                       at_most=10.0))
    return sec, results


# -- the journal's cost: etcd against a file ---------------------------------------------------------

def journal_round(mode: str, etcd: Etcd | None, pairs: int, moves: int) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix="shmooze-failover-journal-")
    q = Queue(types(), journal=f"{tmp}/queue.journal" if mode == "file" else None)
    if etcd is not None:
        prefix = f"/bench-{time.monotonic_ns()}/"
        key = f"{prefix}services/queue"
        revision = etcd.put(key, b"bench")  # (a fresh key: created at this revision)
        q.journal = EtcdJournal(etcd, f"{prefix}journal/queue/", "queue", fence_on(key, revision),  # type: ignore[assignment]
                                lambda reason: log.error("deposed: %s", reason), lambda exc: log.error("etcd: %s", exc))
    q.start()
    try:
        pair_times: list[float] = []
        add_rm(q, pairs, pair_times)
        mv, updates = moves_and_updates(q, moves)
        if q.journal is not None:
            q.journal.flush(30)
        return {"add_rm_ms": statistics.median(pair_times) * 1000, "mv_ms": mv * 1000, "update_us": updates * 1e6}
    finally:
        q.stop()
        if etcd is not None:
            etcd.delete(prefix, prefix=True)
        shutil.rmtree(tmp, ignore_errors=True)


def journal_cost(rounds: int, pairs: int, moves: int) -> Section:
    cluster = etcd_kit.EtcdCluster(3)
    results: dict[str, list[dict[str, float]]] = {"file": [], "etcd": []}
    try:
        cluster.start()
        etcd = Etcd(cluster.endpoints)
        for r in range(rounds):  # interleaved, the order alternating
            for mode in (("file", "etcd") if r % 2 == 0 else ("etcd", "file")):
                results[mode].append(journal_round(mode, etcd if mode == "etcd" else None, pairs, moves))
        etcd.close()
    finally:
        cluster.stop()
    sec = Section(f"The journal in etcd against the file journal (in-process queue; three etcd members on loopback; "
                  f"{rounds} rounds, interleaved)")
    for key, label, unit in (("add_rm_ms", "add + rm, median pair", "ms"), ("mv_ms", "mv (20 modules), median command", "ms"),
                             ("update_us", f"parameter updates ({FLOOD}), per update", "us")):
        sec.add(rounds_row(f"journal in etcd: {label}", [x[key] for x in results["etcd"]], unit,
                           [x[key] for x in results["file"]], "file journal, fsync"))
    return sec


def write_docs(sections: list[Section]) -> None:
    """The tables into docs/past-one-machine.md, between its marks (each title in bold above its table)."""
    text = DOCS.read_text()
    begin, end = text.index(DOCS_BEGIN) + len(DOCS_BEGIN), text.index(DOCS_END)
    parts = []
    for section in sections:
        title, _, rest = markdown(section).partition("\n")
        parts.append(f"**{title.removeprefix('### ')}**\n{rest.rstrip()}")
    when = time.strftime("%Y-%m-%d")
    DOCS.write_text(text[:begin] + "\n" + "\n\n".join(parts) + f"\n\n_Measured {when}; bench/results/failover.json._\n"
                    + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer commands per journal round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", action="store_true", help="write the failover table into docs/past-one-machine.md")
    opts = parser.parse_args()
    setup_logging()
    logging.getLogger("shmooze").setLevel(logging.WARNING)
    sections = []
    why = etcd_kit.why_not()
    if why:
        print(f"failover benchmark skipped: {why}")
        return 0
    why = netns.why_not()
    if why:
        skipped = Section("Failover (simulated hosts)", notes=[f"skipped: {why}"])
        sections.append(skipped)
    else:
        section, _ = failover(opts.rounds)
        sections.append(section)
    sections.append(journal_cost(opts.rounds, 20 if opts.quick else 48, 100 if opts.quick else 300))
    if opts.docs and not why:
        write_docs(sections)
    for section in sections:
        sys.stdout.write(markdown(section) + "\n")
    save_sections("failover", sections, opts.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
