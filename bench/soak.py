"""Soak: concurrent clients mixing queue commands through the gateway, modules leaving by themselves.

Usage: ``.venv/bin/python -m bench.soak [--seconds 60] [--clients 32] [--per-client 3]``

One stack: the gateway and a queue of tests/modules/misbehave.py types (bench/soak_apps.py): ``stay``
and ``record`` (stay until removed; ``record`` sets a parameter on every command) and ``leave05``,
``leave1``, ``leave2`` (leave by themselves 0.5, 1 and 2 s after init). Each client thread keeps at
most ``--per-client`` modules of its own and mixes ``add``, ``rm``, ``mv``, ``queue``,
``tell_module`` (``echo``, checked; now and then an unknown command, on purpose) and ``ask_module``
(``pid``, which the module sets before it answers ``init``). A WebSocket watcher follows the queue's
change events all along.

What the clients were told is what the check compares with, so a client never guesses: an answer
that leaves the outcome unknown (the connection failed, or the gateway answered 502 or 504: the
command may have run) or that says nothing ran (the queue is busy) is recorded as an error and the
same request is sent again, up to 5 times. Each ``add`` carries a client key, so a repeat gets the
first add's answer (its uid) instead of adding again; ``rm`` and ``mv`` are idempotent.

Phases: cold snapshot of the queue's worker process; a short warm-up with the same load, cleaned
up, then the "start" snapshot (thread pools and caches are warm); the soak; then load stops, the
self-leaving modules are waited for (bounded), the queue's content is checked against what the
clients were told, everything is removed, and the worker's children, fds, threads and RSS are
compared with the start snapshot.

Checks (exit status 1 if any fails): no unexpected error (every expected one says why it happens);
the final queue holds exactly the staying modules that clients added and did not remove (no phantom,
no lost, no leaver left) and no listing ever showed a uid no client was given; the WebSocket watcher
saw every change version, without gap, up to the service's; no child, fd, thread or RSS growth
beyond small bounds. Prints markdown tables; writes bench/results/soak.json (``bench/summary.py``
puts every failed check into the summary and its count).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import logging
import os
import platform
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from bench.common import RESULTS_DIR, Row, Section, markdown, percentile, setup_logging
from bench.push_stack import MachineMeter, MiniStack, describe_load, raise_nofile, reap_own_descendants
from bench.soak_apps import TYPES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

log = logging.getLogger("bench.soak")

LEAVERS = {name for name, after in TYPES.items() if after is not None}
STAYERS = set(TYPES) - LEAVERS
ADD_WEIGHTS = {"stay": 3, "record": 1, "leave05": 2, "leave1": 2, "leave2": 2}
OP_WEIGHTS = {"rm": 12, "mv": 10, "queue": 26, "tell_module": 26, "ask_module": 26}
REQUEST_TIMEOUT = 30.0
#: Tries of one request whose outcome is unknown or that the queue was too busy to run (see SoakClient.call).
TRIES = 5
#: The queue's answer when it runs as many commands as it may at once (nothing ran).
BUSY = "is busy:"
#: bounds of the leak check, against the warm "start" snapshot
FD_SLACK = 5
THREAD_SLACK = 8
RSS_SLACK_MIB = 24.0
RSS_SLACK_FRACTION = 0.20


class BudgetExceeded(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BudgetExceeded("the soak went past its time budget")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of the soak (default 60)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--per-client", type=int, default=3, help="modules each client keeps at most (default 3)")
    p.add_argument("--warmup", type=float, default=0.0, help="warm-up seconds (default: seconds/6, 3 to 10)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a 15 s soak (same checks)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "soak.json")
    p.add_argument("--budget", type=int, default=0, help="hard limit in seconds (default seconds + 240)")
    p.add_argument("--keep-logs", action="store_true", help="keep the services' logs (in /tmp/shmooze-soak-*)")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.seconds = min(opts.seconds, 15.0)
    return opts


# -- what the clients were told -------------------------------------------------------------------

_UID = re.compile(r"'[0-9a-f]{6}-\d+'|\b[0-9a-f]{6}-\d+\b")


def normalize(message: str) -> str:
    text = _UID.sub("UID", message)
    text = re.sub(r"pid \d+", "pid N", text)
    text = re.sub(r"\d+(\.\d+)? s\b", "N s", text)
    return text[:160]


#: The errors a client expects, and why they happen.
EXPECTED = {
    "race: module left by itself (no module with uid)":
        "a self-leaving module left before this command (the client forgets a leaver 1.5 s after its time, "
        "or when a listing lacks it)",
    "race: module left while being commanded (failed and was removed)":
        "a self-leaving module exited while its command ran (its command stream closed)",
    "deliberate: unknown module command": "5 % of tell_module send do_nope on purpose",
}


class Ledger:
    """Shared record of every uid the clients added and removed, and of every error they met."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.added: dict[str, str] = {}  # uid -> type
        self.removed: set[str] = set()  # rm'ed by the client that added it
        self.unresolved_adds: list[str] = []  # keys of adds whose outcome stayed unknown
        self.maybe_removed: set[str] = set()  # uids of rm's whose outcome stayed unknown
        self.settled: set[str] = set()  # uids of the rounds before, all removed at their end
        self.lost: dict[str, str] = {}  # staying modules found missing without an rm: uid -> where
        self.seen_in_queue: set[str] = set()
        self.errors: collections.Counter[tuple[bool, str]] = collections.Counter()
        self.examples: dict[tuple[bool, str], str] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.failed_calls: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.counting = True

    def error(self, expected: bool, kind: str, example: str) -> None:
        assert not expected or kind in EXPECTED, kind
        with self.lock:
            self.errors[(expected, kind)] += 1
            self.examples.setdefault((expected, kind), example[:300])

    def reset_counts(self) -> None:
        with self.lock:
            self.errors.clear()
            self.examples.clear()
            self.calls.clear()
            self.failed_calls.clear()
            self.latency.clear()


class SoakClient(threading.Thread):
    """One client: a kept-alive HTTP connection to the gateway, a few modules of its own."""

    def __init__(self, index: int, port: int, ledger: Ledger, stop: threading.Event, per_client: int, seed: int):
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.index = index
        self.port = port
        self.ledger = ledger
        self.stop_event = stop
        self.per_client = per_client
        self.seed = seed
        self.rng = random.Random(seed * 1000 + index)
        self.adds = 0
        self.own: dict[str, tuple[str, float]] = {}  # uid -> (type, monotonic time of the add's answer)
        self.conn: http.client.HTTPConnection | None = None
        self.crashed: str | None = None

    # -- transport

    def call(self, cmd: str, args: dict[str, Any]) -> tuple[bool, Any]:
        """Send until the outcome is known: (True, result) or (False, the service's error message),
        or (False, None) when it stays unknown after :data:`TRIES` tries.

        An answer that says nothing ran (the queue is busy) or one whose outcome is unknown (the
        connection failed, or the gateway answered 502 or 504: the command may have run) is
        recorded, then the same request is sent again. Every command of the mix may be: ``add``
        carries a client key (a repeat gets the first add's answer, see the queue's ``add``),
        ``rm`` and ``mv`` are idempotent, ``echo`` and the rest only read."""
        for attempt in range(TRIES):
            if attempt:
                time.sleep(0.05 * 2 ** attempt)  # (the queue's "try again in a moment")
            status, result = self.send(cmd, args)
            if status == "answered":
                return result
        self.ledger.error(False, "outcome unknown after every try", f"{cmd} {json.dumps(args)[:120]}")
        return False, None

    def send(self, cmd: str, args: dict[str, Any]) -> tuple[str, Any]:
        """One try: ("answered", (ok, result or error)) or ("again", None) (recorded)."""
        body = json.dumps({"cmd": cmd, "args": args}).encode()
        t0 = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
            self.conn.request("POST", "/queue", body, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            self._count(cmd, t0, False)
            self.ledger.error(False, f"transport: {type(exc).__name__} (outcome unknown: sent again)",
                              f"{cmd} after {time.perf_counter() - t0:.2f} s: {exc}")
            return "again", None
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if resp.status != 200 or not isinstance(answer, dict) or "success" not in answer:
            self._count(cmd, t0, False)
            kind = f"HTTP {resp.status}" + (" (outcome unknown: sent again)" if resp.status in (502, 504) else "")
            self.ledger.error(False, kind, f"{cmd} after {time.perf_counter() - t0:.2f} s: {data[:200]!r}")
            return ("again", None) if resp.status in (502, 504) else ("answered", (False, None))
        self._count(cmd, t0, bool(answer["success"]))
        if answer["success"]:
            return "answered", (True, answer.get("result"))
        error = str(answer.get("error", ""))
        if BUSY in error:
            self.ledger.error(False, f"{cmd}: {normalize(error)} (not run: sent again)", error)
            return "again", None
        return "answered", (False, error)

    def _count(self, cmd: str, t0: float, ok: bool) -> None:
        ms = (time.perf_counter() - t0) * 1000.0
        with self.ledger.lock:
            self.ledger.calls[cmd] += 1
            if not ok:
                self.ledger.failed_calls[cmd] += 1
            self.ledger.latency[cmd].append(ms)

    # -- the mix

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.step()
        except Exception as exc:  # a bug in the soak itself: report it, do not hide it
            log.exception("client %d crashed", self.index)
            self.crashed = f"{type(exc).__name__}: {exc}"
        finally:
            if self.conn is not None:
                self.conn.close()

    def forget_leavers(self) -> None:
        """Leavers past their time (plus a grace) are taken as gone; the final check verifies it."""
        now = time.monotonic()
        for uid, (mtype, since) in list(self.own.items()):
            if mtype in LEAVERS and now - since > TYPES[mtype] + 1.5:
                del self.own[uid]

    def step(self) -> None:
        self.forget_leavers()
        rng = self.rng
        if len(self.own) < self.per_client and (not self.own or rng.random() < 0.3):
            self.do_add()
            return
        op = rng.choices(list(OP_WEIGHTS), weights=list(OP_WEIGHTS.values()))[0]
        getattr(self, "do_" + op)()

    def pick(self) -> tuple[str, str] | None:
        if not self.own:
            return None
        uid = self.rng.choice(list(self.own))
        return uid, self.own[uid][0]

    def do_add(self) -> None:
        mtype = self.rng.choices(list(ADD_WEIGHTS), weights=list(ADD_WEIGHTS.values()))[0]
        self.adds += 1
        key = f"soak-{self.seed}-{self.index}-{self.adds}"  # a repeat of this add gets its first answer
        ok, result = self.call("add", {"type": mtype, "args": {"client": self.index}, "key": key})
        if ok:
            uid = result["uid"]
            with self.ledger.lock:
                self.ledger.added[uid] = mtype
            self.own[uid] = (mtype, time.monotonic())
        elif result is not None:
            self.ledger.error(False, f"add failed: {normalize(result)}", result)
        else:
            with self.ledger.lock:
                self.ledger.unresolved_adds.append(key)

    def do_rm(self) -> None:
        picked = self.pick()
        if picked is None:
            return
        uid, _ = picked
        ok, result = self.call("rm", {"uids": [uid]})
        del self.own[uid]
        if ok:
            with self.ledger.lock:
                self.ledger.removed.add(uid)
        elif result is not None:
            self.ledger.error(False, f"rm failed: {normalize(result)}", result)
        else:  # (recorded as unexpected) the module may be there or not: neither lost nor resurrected
            with self.ledger.lock:
                self.ledger.maybe_removed.add(uid)

    def do_mv(self) -> None:
        uids = list(self.own)
        self.rng.shuffle(uids)
        ok, result = self.call("mv", {"uids": uids})
        if not ok and result is not None:
            self.ledger.error(False, f"mv failed: {normalize(result)}", result)

    def do_queue(self) -> None:
        ok, result = self.call("queue", {})
        if not ok:
            if result is not None:
                self.ledger.error(False, f"queue failed: {normalize(result)}", result)
            return
        listed = {entry["uid"] for entry in result}
        with self.ledger.lock:
            self.ledger.seen_in_queue |= listed
        for uid, (mtype, _since) in list(self.own.items()):
            if uid in listed:
                continue
            del self.own[uid]  # a leaver that left: fine; a staying module: lost
            if mtype in STAYERS:
                with self.ledger.lock:
                    self.ledger.lost.setdefault(uid, "missing from a queue listing")
                self.ledger.error(False, "staying module missing from the queue", f"{uid} ({mtype})")

    def do_tell_module(self) -> None:
        picked = self.pick()
        if picked is None:
            return
        uid, mtype = picked
        if self.rng.random() < 0.05:
            ok, result = self.call("tell_module", {"uid": uid, "cmd": "nope", "args": {}})
            if ok:
                self.ledger.error(False, "unknown module command succeeded", f"{uid}: {result!r}")
            elif result is not None:
                self.module_error(uid, mtype, result, deliberate="unknown command: do_nope")
            return
        token = {"n": self.rng.randrange(1 << 30), "client": self.index}
        ok, result = self.call("tell_module", {"uid": uid, "cmd": "echo", "args": token})
        if ok:
            if result != token:
                self.ledger.error(False, "echo answered something else", f"{uid}: {result!r} != {token!r}")
        elif result is not None:
            self.module_error(uid, mtype, result)

    def do_ask_module(self) -> None:
        picked = self.pick()
        if picked is None:
            return
        uid, mtype = picked
        ok, result = self.call("ask_module", {"uid": uid, "parameters": ["pid"]})
        if ok:
            if not isinstance(result, dict) or not isinstance(result.get("pid"), int):
                self.ledger.error(False, "ask_module answered without the pid", f"{uid}: {result!r}")
        elif result is not None:
            self.module_error(uid, mtype, result)

    def module_error(self, uid: str, mtype: str, error: str, deliberate: str | None = None) -> None:
        """Classify a failed tell_module/ask_module."""
        if deliberate and deliberate in error:
            self.ledger.error(True, "deliberate: unknown module command", error)
            return
        gone = "no module with uid" in error
        broke = "failed and was removed" in error
        if (gone or broke) and mtype in LEAVERS:
            self.own.pop(uid, None)
            kind = "race: module left by itself (no module with uid)" if gone else \
                "race: module left while being commanded (failed and was removed)"
            self.ledger.error(True, kind, error)
            return
        if gone or broke:
            self.own.pop(uid, None)
            with self.ledger.lock:
                self.ledger.lost.setdefault(uid, normalize(error))
        self.ledger.error(False, f"{mtype}: {normalize(error)}", error)


class EventWatcher(threading.Thread):
    """Follows the queue's change events over the gateway's WebSocket; checks versions have no gap."""

    def __init__(self, port: int, stop: threading.Event):
        super().__init__(name="soak-ws", daemon=True)
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.stop_event = stop
        self.version: int | None = None
        self.events = 0
        self.messages = 0
        self.gaps: list[tuple[int, int]] = []
        self.resets = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.problem: str | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        from shmooze.http.websocket import HandshakeError
        from shmooze.testing import WebSocketClient

        try:
            ws = WebSocketClient.connect(self.url, timeout=10)
        except (OSError, HandshakeError) as exc:
            self.problem = f"cannot connect: {exc}"
            self.ready.set()
            return
        try:
            ws.send(json.dumps({"id": 1, "subscribe": {"queue": None}}))
            while not self.stop_event.is_set():
                text = ws.receive(timeout=0.5)
                if text is None:
                    if ws.closed:
                        self.problem = f"closed by the gateway ({ws.close_code} {ws.close_reason})"
                        return
                    continue
                msg = json.loads(text)
                if msg.get("id") == 1:
                    self.version = msg["result"]["queue"]["version"]
                    self.ready.set()
                    continue
                if msg.get("event") != "change":
                    continue
                self.messages += 1
                if msg.get("reset"):
                    self.resets += 1
                for ev in msg.get("events", []):
                    v = ev["version"]
                    if self.version is not None and v != self.version + 1 and not msg.get("reset"):
                        self.gaps.append((self.version, v))
                    self.version = v
                    self.events += 1
                    self.kinds[ev.get("kind", "?")] += 1
                if msg.get("version") is not None:
                    self.version = msg["version"]
        except Exception as exc:  # noqa: BLE001 - the soak's verdict reports it (a check fails on any problem)
            self.problem = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()
            ws.close()


# -- phases ---------------------------------------------------------------------------------------

def fd_kinds(pid: int) -> collections.Counter[str]:
    kinds: collections.Counter[str] = collections.Counter()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else \
            "file " + os.path.basename(target)
        kinds[kind] += 1
    return kinds


def snapshot(pid: int, service_port: int | None = None) -> dict[str, Any]:
    """Children, fds, threads and RSS of the queue's worker; kept-alive HTTP connections counted apart."""
    p = psutil.Process(pid)
    kids = p.children()
    zombies = 0
    for k in kids:
        try:
            zombies += k.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            pass
    keepalive = 0
    if service_port is not None:
        try:
            keepalive = sum(1 for c in p.net_connections("tcp") if c.laddr and c.laddr.port == service_port
                            and c.raddr and c.status == psutil.CONN_ESTABLISHED)
        except psutil.Error:
            pass
    fds = p.num_fds()
    return {"children": len(kids) - zombies, "zombies": zombies, "fds": fds, "keepalive": keepalive,
            "fds_other": fds - keepalive, "threads": p.num_threads(), "rss_mib": p.memory_info().rss / 2**20,
            "fd_kinds": dict(fd_kinds(pid))}


def gateway_snapshot(stack: MiniStack) -> dict[str, Any]:
    fds = threads = 0
    rss = 0.0
    for w in stack.gateway_workers():
        try:
            fds += w.num_fds()
            threads += w.num_threads()
            rss += w.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return {"fds": fds, "threads": threads, "rss_mib": rss}


def run_load(stack: MiniStack, ledger: Ledger, seconds: float, clients: int, per_client: int,
             seed: int) -> tuple[float, list[SoakClient]]:
    stop = threading.Event()
    threads = [SoakClient(i, stack.ports["wsgi"], ledger, stop, per_client, seed) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        stop.wait(seconds)
    finally:
        stop.set()
        deadline = time.monotonic() + REQUEST_TIMEOUT + 15
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
    elapsed = time.monotonic() - t0
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        ledger.error(False, "client still waiting after the load stopped", ", ".join(stuck))
    return elapsed, threads


def queue_state(stack: MiniStack) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return stack.call("queue", "queue"), stack.call("queue", "status")


def wait_leavers_gone(stack: MiniStack, added: dict[str, str], timeout: float) -> tuple[float, list[dict[str, Any]]]:
    """Wait until no self-leaving module is in the queue or starting or stopping; return (seconds, queue)."""
    t0 = time.monotonic()
    while True:
        queue, status = queue_state(stack)
        leavers = [e for e in queue if e["type"] in LEAVERS]
        busy = status["stopping"] or [m for m in status["modules"] if m.get("type") in LEAVERS]
        if not leavers and not busy:
            return time.monotonic() - t0, queue
        if time.monotonic() - t0 > timeout:
            return -1.0, queue
        time.sleep(0.1)


def remove_all(stack: MiniStack, worker: int, baseline_children: int, timeout: float,
               ledger: Ledger | None = None) -> float:
    """rm every module (straight at the service: this is cleanup) and wait until their processes are reaped."""
    t0 = time.monotonic()
    queue, _ = queue_state(stack)
    if queue:
        uids = [e["uid"] for e in queue]
        stack.call("queue", "rm", uids=uids)
        if ledger is not None:
            ledger.removed.update(uids)
    if ledger is not None:  # every module so far is gone: none is expected (nor lost) in a later round
        ledger.settled.update(ledger.added)
        ledger.unresolved_adds.clear()  # (each round's state has its own list)
    while True:
        queue, status = queue_state(stack)
        snap = snapshot(worker)
        if not queue and not status["modules"] and not status["stopping"] and snap["children"] <= baseline_children \
                and not snap["zombies"]:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return -1.0
        time.sleep(0.1)


def check_state(stack: MiniStack, ledger: Ledger) -> dict[str, Any]:
    """After the load: wait for the leavers, then compare the queue with what the clients were told."""
    leave_s, final_queue = wait_leavers_gone(stack, ledger.added, 20)
    _, status = queue_state(stack)
    final = {e["uid"]: e["type"] for e in final_queue}
    gone = ledger.removed | ledger.maybe_removed | ledger.settled
    live = {u: t for u, t in ledger.added.items() if u not in gone}
    lost = sorted(u for u, t in live.items() if t in STAYERS and u not in final)
    ended = {m["uid"]: m for m in status.get("ended", [])}
    return {"leavers_gone_after_s": leave_s, "final_queue": len(final), "added": len(ledger.added),
            "removed": len(ledger.removed), "expected_staying": sum(1 for t in live.values() if t in STAYERS),
            "phantom": sorted(u for u in final if u not in ledger.added),
            "resurrected": sorted(u for u in final if u in ledger.removed or u in ledger.settled),
            "leavers_left": sorted(u for u, t in final.items() if t in LEAVERS),
            "lost": {u: {"type": live[u], "seen": ledger.lost.get(u), "ended": ended.get(u)} for u in lost},
            "unresolved_adds": list(ledger.unresolved_adds),
            "maybe_removed": sorted(ledger.maybe_removed - ledger.settled),
            "unknown_uids_seen_mid_run": sorted(u for u in ledger.seen_in_queue if u not in ledger.added),
            "change_version": status["change_version"]}


def service_log_lines(stack: MiniStack) -> dict[str, collections.Counter[str]]:
    out: dict[str, collections.Counter[str]] = {}
    for name in ("queue", "wsgi"):
        counter: collections.Counter[str] = collections.Counter()
        for line in stack.log_tail(name, 5_000_000).splitlines():
            if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                msg = line.split(": ", 1)[-1] if "]" in line else line
                counter[normalize(re.sub(r"module \S+ \(", "module UID (", msg))] += 1
        out[name] = counter
    return out


# -- report ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    setup_logging()
    raise_nofile()
    warmup = opts.warmup or min(10.0, max(3.0, opts.seconds / 6))
    budget = opts.budget or int(opts.seconds + warmup + 240)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(budget)
    started = time.time()
    t_start = time.monotonic()
    half = opts.seconds / 2
    res: dict[str, Any] = {"seconds": opts.seconds, "clients": opts.clients, "per_client": opts.per_client,
                           "warmup_s": warmup, "types": dict(TYPES)}
    ledger = Ledger()
    crashed: list[str] = []
    try:
        services = {"queue": "bench.soak_apps:make_queue"}
        with MiniStack(services, "shmooze-soak-", {"service_threads": 32}) as stack:
            qport = stack.ports["queue"]
            worker = stack.worker_pid("queue")
            res["cold"] = snapshot(worker, qport)
            base_children = res["cold"]["children"]  # the orphan guard
            res["thread_cap"] = res["cold"]["threads"] + 64 + 32 + 32  # + ladder, command and gthread pools

            log.info("warm-up: %d clients for %g s", opts.clients, warmup)
            run_load(stack, ledger, warmup, opts.clients, opts.per_client, opts.seed + 7)
            wait_leavers_gone(stack, ledger.added, 20)
            if remove_all(stack, worker, base_children, 30) < 0:
                raise RuntimeError("the warm-up's modules did not go within 30 s")
            time.sleep(1.5)
            res["start"] = snapshot(worker, qport)
            res["gateway_start"] = gateway_snapshot(stack)
            res["warmup_errors"] = {f"{'expected' if e else 'UNEXPECTED'}: {k}": n
                                    for (e, k), n in ledger.errors.items()}
            ledger = Ledger()

            stop_ws = threading.Event()
            watcher = EventWatcher(stack.ports["wsgi"], stop_ws)
            watcher.start()
            watcher.ready.wait(10)
            peak = {"children": 0, "threads": 0, "fds": 0, "rss_mib": 0.0}
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(0.25):
                    try:
                        snap = snapshot(worker)
                    except psutil.Error:
                        return
                    for key in peak:
                        peak[key] = max(peak[key], snap[key])

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            elapsed = 0.0
            cpu_s = 0.0
            machine = []
            res["rounds"] = []
            for round_no in (1, 2):
                log.info("soak round %d: %d clients for %g s", round_no, opts.clients, half)
                meter = MachineMeter()
                c0 = psutil.Process(worker).cpu_times()
                took, clients = run_load(stack, ledger, half, opts.clients, opts.per_client, opts.seed + round_no)
                c1 = psutil.Process(worker).cpu_times()
                machine.append(meter.read())
                elapsed += took
                cpu_s += c1.user + c1.system - c0.user - c0.system
                crashed += [f"{c.name}: {c.crashed}" for c in clients if c.crashed]
                log.info("round %d: load stopped; waiting for self-leaving modules; checking the queue", round_no)
                state = check_state(stack, ledger)
                if round_no == 2:
                    # the watcher must reach the service's version before it stops
                    target = state["change_version"]
                    deadline = time.monotonic() + 10
                    while (watcher.version or 0) < target and time.monotonic() < deadline and watcher.is_alive():
                        time.sleep(0.05)
                    stop_ws.set()
                    watcher.join(5)
                    # Events may follow the state read above (a leaver's "stopped" is published after
                    # status stops listing it): the watcher's last version lies between the two reads.
                    state["change_version_after_watch"] = queue_state(stack)[1]["change_version"]
                removed_s = remove_all(stack, worker, base_children, 30, ledger)
                time.sleep(1.5)
                state["remove_all_s"] = removed_s
                state["snapshot"] = snapshot(worker, qport)
                res["rounds"].append(state)
            sampling.set()
            sampler.join(5)
            res["mid"] = res["rounds"][0]["snapshot"]
            res["end"] = res["rounds"][1]["snapshot"]
            res["gateway_end"] = gateway_snapshot(stack)
            res["peak"] = peak
            res["elapsed_s"] = elapsed
            res["queue_cpu_share"] = cpu_s / elapsed
            res["machine"] = machine
            res["watcher"] = {"events": watcher.events, "messages": watcher.messages, "gaps": watcher.gaps[:10],
                              "gap_count": len(watcher.gaps), "resets": watcher.resets, "last_version": watcher.version,
                              "service_version": res["rounds"][1]["change_version"],
                              "service_version_after": res["rounds"][1]["change_version_after_watch"],
                              "problem": watcher.problem,
                              "kinds": dict(watcher.kinds.most_common())}
            res["service_logs"] = {k: dict(v.most_common(15)) for k, v in service_log_lines(stack).items()}
            stack.failed = stack.failed or opts.keep_logs  # (Managed keeps the logs of a failed stack)
    finally:
        signal.alarm(0)
        reap_own_descendants()
    return report(opts, res, ledger, crashed, started, t_start)


def report(opts: argparse.Namespace, res: dict[str, Any], ledger: Ledger, crashed: list[str], started: float,
           t_start: float) -> int:
    checks: list[tuple[str, bool, str]] = []
    unexpected = {k: n for (e, k), n in ledger.errors.items() if not e}
    expected = {k: n for (e, k), n in ledger.errors.items() if e}
    total = sum(ledger.calls.values())
    checks.append(("no unexpected errors", not unexpected and not crashed,
                   f"{sum(unexpected.values())} unexpected" + (f"; crashed clients: {crashed}" if crashed else "")))
    for i, st in enumerate(res["rounds"], 1):
        gone = st["leavers_gone_after_s"]
        checks.append((f"round {i}: self-leaving modules gone after the load", gone >= 0 and not st["leavers_left"],
                       f"in {gone:.1f} s" if gone >= 0 else f"still there after 20 s: {st['leavers_left'][:5]}"))
        checks.append((f"round {i}: queue = staying modules added and not removed",
                       not st["phantom"] and not st["resurrected"] and not st["lost"],
                       f"{st['final_queue']} in the queue, {st['expected_staying']} expected; phantom "
                       f"{len(st['phantom'])}, resurrected {len(st['resurrected'])}, lost {len(st['lost'])}"
                       + (f"; outcome unknown: {len(st['unresolved_adds'])} add(s), {len(st['maybe_removed'])} "
                          "rm(s)" if st["unresolved_adds"] or st["maybe_removed"] else "")))
        checks.append((f"round {i}: all modules removed, children reaped", st["remove_all_s"] >= 0,
                       f"in {st['remove_all_s']:.1f} s" if st["remove_all_s"] >= 0 else "not within 30 s"))
    unknown = res["rounds"][-1]["unknown_uids_seen_mid_run"]
    checks.append(("no uid in any listing that no client added", not unknown, f"{len(unknown)} unknown"))
    w = res["watcher"]
    reached = w["last_version"] is not None and w["service_version"] <= w["last_version"] <= w["service_version_after"]
    checks.append(("WebSocket watcher: every change version, no gap", not w["problem"] and not w["gap_count"]
                   and not w["resets"] and reached,
                   f"{w['events']:,} events in {w['messages']:,} messages; last version {w['last_version']}, the "
                   f"service's {w['service_version']} to {w['service_version_after']} (read before and after it "
                   f"stopped); gaps {w['gap_count']}, resets {w['resets']}"
                   + (f"; {w['problem']}" if w["problem"] else "")))
    start, mid, end = res["start"], res["mid"], res["end"]
    rss_bound = max(RSS_SLACK_MIB, start["rss_mib"] * RSS_SLACK_FRACTION)
    threads_ok = end["threads"] <= start["threads"] + THREAD_SLACK or \
        (end["threads"] <= res["thread_cap"] and end["threads"] - mid["threads"] <= THREAD_SLACK)
    leak_checks = [
        ("children", "child processes", end["children"] <= start["children"] and end["zombies"] == 0,
         "no more than at start (the orphan guard), no zombie"),
        ("fds_other", "open fds (not kept-alive HTTP)", end["fds_other"] <= start["fds_other"] + FD_SLACK,
         f"<= start + {FD_SLACK}"),
        ("keepalive", "kept-alive HTTP connections from the gateway", True,
         "info: the gateway's pool to the service (<= 64 idle per gateway worker)"),
        ("threads", "threads", threads_ok,
         f"<= start + {THREAD_SLACK}, or <= pool cap {res['thread_cap']} and round 2 adds <= {THREAD_SLACK}"),
        ("rss_mib", "RSS (MiB)", end["rss_mib"] <= start["rss_mib"] + rss_bound, f"<= start + {rss_bound:.0f} MiB"),
    ]

    load = Section(f"Soak: {opts.clients} clients for {opts.seconds:g} s through the gateway (2 rounds)")
    load.add(Row("requests served", total, "count", compare=f"{total / res['elapsed_s']:.0f} req/s"))
    load.add(Row("requests/s", total / res["elapsed_s"], "req/s",
                 compare=f"queue service CPU {res['queue_cpu_share'] * 100:.0f} % of a core"))
    for cmd in ("add", "rm", "mv", "queue", "tell_module", "ask_module"):
        lat = ledger.latency.get(cmd) or [0.0]
        load.add(Row(f"{cmd}: calls", ledger.calls[cmd], "count",
                     compare=f"{ledger.failed_calls[cmd]} failed; p50 {percentile(lat, 0.5):.1f} ms, "
                             f"p99 {percentile(lat, 0.99):.1f} ms"))
    leavers_added = sum(1 for t in ledger.added.values() if t in LEAVERS)
    load.add(Row("modules added", len(ledger.added), "count",
                 compare=f"{leavers_added} of them self-leaving; {len(ledger.removed)} rm'ed (clients and cleanup); "
                         f"peak children {res['peak']['children']}"))
    for i, m in enumerate(res["machine"], 1):
        load.add(Row(f"round {i}: other processes on the machine", m["others_cores"], "cores",
                     compare=describe_load(m), verdict="info" if m["others_cores"] < 0.25 else "busy"))

    errs = Section("Soak: errors by kind")
    for (is_expected, kind), n in sorted(ledger.errors.items(), key=lambda kv: (kv[0][0], -kv[1])):
        # (the check "no unexpected errors" fails for these; a row each would count them again)
        errs.add(Row(kind.replace("|", "/"), n, "count",
                     compare=f"expected: {EXPECTED[kind]}" if is_expected else "UNEXPECTED"))
    if not ledger.errors:
        errs.notes.append("no error at all")
    for name, lines in res["service_logs"].items():
        if lines:
            errs.notes.append(f"{name} log warnings/errors: " + "; ".join(
                f"{n}x {m}" for m, n in list(lines.items())[:6]).replace("|", "/"))

    leaks = Section("Soak: queue service worker, all modules removed: start / after round 1 / after round 2")
    for key, label, ok, bound in leak_checks:
        f = (lambda v: f"{v:.1f}") if key == "rss_mib" else (lambda v: f"{v}")
        peak = f" (peak under load {f(res['peak'][key])})" if key in res["peak"] else ""
        leaks.add(Row(label, end[key], "MiB" if key == "rss_mib" else "count", floor=start[key], floor_label="start",
                      compare=f"cold {f(res['cold'][key])} -> start {f(start[key])} -> round 1 {f(mid[key])} -> "
                              f"round 2 {f(end[key])}{peak}; {bound}", verdict="pass" if ok else "FAIL"))
    g0, g1 = res["gateway_start"], res["gateway_end"]
    leaks.add(Row("gateway workers: fds", g1["fds"], "count", floor=g0["fds"], floor_label="start",
                  compare=f"threads {g0['threads']} -> {g1['threads']}; RSS {g0['rss_mib']:.1f} -> "
                          f"{g1['rss_mib']:.1f} MiB"))
    leaks.notes.append("'start' is measured after a warm-up with the same load (cleaned up), so on-demand thread "
                       "pools and caches are warm; 'cold' is right after the service started. Kept-alive HTTP "
                       "connections are the gateway's forwarding pool (bounded), counted apart from other fds. "
                       f"fd kinds at the end: {res['end']['fd_kinds']}")

    check_sec = Section("Soak: checks")
    for name, ok, detail in checks:
        check_sec.add(Row(name, None, "", compare=detail, verdict="pass" if ok else "FAIL"))
    for key, label, ok, bound in leak_checks:
        if key != "keepalive":
            check_sec.add(Row(f"back to start level: {label}", None, "",
                              compare=f"start {start[key]:.4g}, end {end[key]:.4g}; {bound}",
                              verdict="pass" if ok else "FAIL"))

    sections = [load, errs, leaks, check_sec]
    for section in sections:
        sys.stdout.write(markdown(section) + "\n")
    failed = [r.measure for r in check_sec.rows if r.verdict == "FAIL"]
    res.update(requests=total, requests_per_s=total / res["elapsed_s"], calls=dict(ledger.calls),
               failed_calls=dict(ledger.failed_calls), errors_expected=expected, errors_unexpected=unexpected,
               error_examples={f"{'expected' if e else 'UNEXPECTED'}: {k}": v for (e, k), v in ledger.examples.items()},
               crashed_clients=crashed, duration_s=round(time.monotonic() - t_start, 1))
    opts.out.parent.mkdir(exist_ok=True)
    out = {"name": "soak", "quick": opts.quick, "started": started,
           "environment": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
           "results": res, "sections": [s.as_json() for s in sections], "failed_checks": failed}
    opts.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    log.info("done in %.0f s; results in %s; %d check(s) failed%s", res["duration_s"], opts.out, len(failed),
             f": {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
