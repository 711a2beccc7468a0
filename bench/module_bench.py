"""B. Modules: start, stop and command module processes, beside a bare spawn-and-answer floor and supervisord."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import time

from bench import peers_bench
from bench.common import (
    BENCH,
    HOST,
    PYTHON,
    BenchError,
    Client,
    ForeignMeter,
    Section,
    child_env,
    encode_command,
    median,
    noise_note,
    percentile,
    rounds_row,
)
from bench.stack import Stack
from shmooze.system.containment import CGROUP, Containment

log = logging.getLogger("bench.modules")

FLOOR_CHILD = str(BENCH / "floor_child.py")
TRIVIAL = "trivial"


# -- the floor: a bare parent that spawns a stdlib child and exchanges one line with it ------------

class FloorParent:
    """Spawns ``floor_child.py`` against its own listening socket, as a module host would, minus everything else."""

    def __init__(self, python_flags: tuple[str, ...] = (), child_flags: tuple[str, ...] = ("--fast-exit",),
                 containment: Containment | None = None) -> None:
        self.python_flags = list(python_flags)
        self.child_flags = list(child_flags)
        self.containment = containment  # each child in a box of its own, as a module is (a cgroup, made and removed)
        self.boxes = itertools.count()
        self.listener = socket.socket()
        self.listener.bind((HOST, 0))
        self.listener.listen(16)
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.env = child_env()

    def cycle(self) -> tuple[float, float]:
        """One child: (spawn until its answer arrived, exit command until reaped), in ms."""
        t0 = time.perf_counter()
        argv = [PYTHON, *self.python_flags, FLOOR_CHILD, *self.child_flags, HOST, str(self.port)]
        box = self.containment.box(f"floor-{next(self.boxes)}") if self.containment is not None else None
        if box is not None:
            argv = box.wrap(argv)
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        conn = None
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(10)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(b'{"cmd":"init"}\n')
            _read_line(conn)
            t1 = time.perf_counter()
            conn.sendall(b"exit\n")
            proc.wait(10)
            if box is not None:
                box.release()
            t2 = time.perf_counter()
            return (t1 - t0) * 1000.0, (t2 - t1) * 1000.0
        finally:
            if conn is not None:
                conn.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def close(self) -> None:
        self.listener.close()


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        data = conn.recv(4096)
        if not data:
            raise BenchError("the floor child closed before answering")
        buf += data
    return buf


# -- B1: add and rm one module at a time ------------------------------------------------------

def add_rm_cycles(port: int, n: int) -> tuple[list[float], list[float]]:
    """``n`` cycles of add (timed) then rm (timed) on one service; ms."""
    client = Client(port)
    adds, rms = [], []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            uid = client.call("add", type=TRIVIAL)["uid"]
            t1 = time.perf_counter()
            client.call("rm", uids=[uid])
            t2 = time.perf_counter()
            adds.append((t1 - t0) * 1000.0)
            rms.append((t2 - t1) * 1000.0)
    finally:
        client.close()
    return adds, rms


def per_round(values: list[float], rounds: int) -> list[float]:
    """The median of each of ``rounds`` consecutive slices of ``values`` (cycles were interleaved)."""
    size = max(len(values) // rounds, 1)
    return [median(values[i * size:(i + 1) * size]) for i in range(rounds) if values[i * size:(i + 1) * size]]


def start_stop_section(stack: Stack, n: int, warmup: int, rounds: int = 3) -> Section:
    """Add and rm one module at a time on the queue and the pool, interleaved with floor cycles.

    The floor child exits with ``os._exit`` (as our Python module does after ``rm``); a child that
    exits through the interpreter's teardown is measured alongside, for reference.
    """
    floor = FloorParent()
    slow = FloorParent(child_flags=())
    bare = FloorParent(("-S",))
    # The floor with what containment costs the kernel: each child started in a cgroup of its own (made, the
    # launcher moves itself in and execs the child, removed), through the same boxes as the modules'.
    containment = Containment(f"{os.getpid()}-bench-floor", "auto")
    boxed = FloorParent(containment=containment) if containment.kind == CGROUP else None
    t: dict[str, list[float]] = {k: [] for k in ("f_start", "f_stop", "slow_stop", "q_add", "q_rm", "p_add", "p_rm",
                                                  "bare_start", "bare_stop", "box_start")}
    try:
        for _ in range(warmup):
            floor.cycle()
            slow.cycle()
            bare.cycle()
            if boxed is not None:
                boxed.cycle()
        add_rm_cycles(stack.ports["queue"], warmup)
        add_rm_cycles(stack.ports["pool"], warmup)
        for _ in range(n):  # interleaved, one of each per cycle
            s, e = floor.cycle()
            t["f_start"].append(s)
            t["f_stop"].append(e)
            t["slow_stop"].append(slow.cycle()[1])
            s, e = bare.cycle()
            t["bare_start"].append(s)
            t["bare_stop"].append(e)
            if boxed is not None:
                t["box_start"].append(boxed.cycle()[0])
            a, r = add_rm_cycles(stack.ports["queue"], 1)
            t["q_add"] += a
            t["q_rm"] += r
            a, r = add_rm_cycles(stack.ports["pool"], 1)
            t["p_add"] += a
            t["p_rm"] += r
    finally:
        floor.close()
        slow.close()
        bare.close()
        if boxed is not None:
            boxed.close()
        containment.close()
    r = {k: per_round(v, rounds) for k, v in t.items() if v}
    sec = Section(f"B1. Module start and stop, one at a time ({rounds} rounds of {n // rounds} cycles, "
                  f"interleaved, after {warmup} warm-up; per round the median cycle)")
    sec.add(rounds_row("queue add (until init and play answered)", r["q_add"], "ms", r["f_start"],
                       "spawn until the floor child answered", max_ratio=1.3))
    sec.add(rounds_row("pool add (until init and play answered)", r["p_add"], "ms", r["f_start"],
                       "spawn until the floor child answered", max_ratio=1.3))
    if "box_start" in r:
        sec.add(rounds_row("reference: floor child started in a cgroup of its own (made, entered by the launcher, "
                           "removed), start", r["box_start"], "ms", r["f_start"], "floor child"))
    sec.add(rounds_row("queue rm (until reaped)", r["q_rm"], "ms", r["f_stop"], "exit command until reaped, os._exit"))
    sec.add(rounds_row("pool rm (until reaped)", r["p_rm"], "ms", r["f_stop"], "exit command until reaped, os._exit"))
    sec.add(rounds_row("reference: floor child exiting through interpreter teardown, exit until reaped",
                       r["slow_stop"], "ms", r["f_stop"], "os._exit"))
    sec.add(rounds_row("reference: floor child under python -S (no site, no .pth hooks): start", r["bare_start"],
                       "ms", r["f_start"], "floor child"))
    sec.notes.append("Every child runs the service's interpreter (.venv/bin/python), as python_module() "
                     "does. Both sides exit with os._exit (our module after rm, the floor child on its exit "
                     "line); the -S row shows what the interpreter's site start-up costs of each start.")
    return sec


# -- B2: tell_module through the gateway --------------------------------------------------------

def tell_section(stack: Stack, n: int, warmup: int) -> Section:
    admin = Client(stack.ports["queue"])
    uid = admin.call("add", type=TRIVIAL)["uid"]
    gw_volume = Client(stack.ports["wsgi"], "/volume")
    gw_queue = Client(stack.ports["wsgi"], "/queue")
    get_volume = encode_command("get_volume")
    tell = encode_command("tell_module", uid=uid, cmd="ping", args={})
    vol, tel = [], []
    try:
        for _ in range(warmup):
            gw_volume.raw(get_volume)
            gw_queue.raw(tell)
        if b'"pong"' not in gw_queue.raw(tell):
            raise BenchError("tell_module ping did not answer pong")
        clock = time.perf_counter
        for _ in range(n):
            t0 = clock()
            gw_volume.raw(get_volume)
            t1 = clock()
            gw_queue.raw(tell)
            t2 = clock()
            vol.append((t1 - t0) * 1000.0)
            tel.append((t2 - t1) * 1000.0)
    finally:
        gw_volume.close()
        gw_queue.close()
        try:
            admin.call("rm", uids=[uid])
        finally:
            admin.close()
    rounds = 3
    size = len(vol) // rounds
    cut = [(vol[i * size:(i + 1) * size], tel[i * size:(i + 1) * size]) for i in range(rounds)]
    sec = Section(f"B2. tell_module round trip through the gateway ({rounds} rounds of {size}, each request "
                  "interleaved with a get_volume, one connection each)")
    for q, name in ((.5, "p50"), (.99, "p99")):
        sec.add(rounds_row(f"gateway -> queue tell_module ping {name}", [percentile(t, q) for _, t in cut], "ms",
                           [percentile(v, q) for v, _ in cut], f"gateway -> volume get_volume {name}"))
    return sec


# -- B4: supervisord side by side -----------------------------------------------------------------

def supervisor_section(stack: Stack, n: int, warmup: int) -> Section:
    """Start/stop cycles through supervisord, interleaved with our add/rm cycles on the queue."""
    workdir = stack.dir / "supervisor"
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(16)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    sup = peers_bench.Supervisord(workdir, peers_bench.supervisor_program("floor", "--fast-exit", port)
                                  + peers_bench.supervisor_program("floor_teardown", "--term-exits", port))
    start_rpc, start_ready, stop_rpc, stop_teardown, our_add, our_rm = [], [], [], [], [], []
    try:
        rpc = sup.rpc

        def cycle(program: str) -> tuple[float, float, float]:
            t0 = time.perf_counter()
            rpc.supervisor.startProcess(program, True)
            t1 = time.perf_counter()
            conn, _ = listener.accept()
            try:
                conn.settimeout(10)
                conn.sendall(b'{"cmd":"init"}\n')
                _read_line(conn)
                t2 = time.perf_counter()
                rpc.supervisor.stopProcess(program, True)
                t3 = time.perf_counter()
            finally:
                conn.close()
            return (t1 - t0) * 1000.0, (t2 - t0) * 1000.0, (t3 - t2) * 1000.0

        for i in range(warmup + n):
            a, b, c = cycle("floor")
            d = cycle("floor_teardown")[2]
            add, rm = add_rm_cycles(stack.ports["queue"], 1)
            if i >= warmup:
                our_add += add
                our_rm += rm
                start_rpc.append(a)
                start_ready.append(b)
                stop_rpc.append(c)
                stop_teardown.append(d)
    finally:
        listener.close()
        sup.close()
    rounds = 3
    sec = Section(f"B4. One at a time beside supervisord (XML-RPC on a unix socket, startsecs=0; {rounds} rounds "
                  f"of {n // rounds} start/stop cycles of the floor child, interleaved with queue add/rm cycles, "
                  f"after {warmup} warm-up)")
    sec.add(rounds_row("queue add vs supervisord start until the child answered", per_round(our_add, rounds), "ms",
                       per_round(start_ready, rounds), "supervisord", max_ratio=1.0))
    sec.add(rounds_row("queue rm vs supervisord stopProcess until reaped (both exit with os._exit)",
                       per_round(our_rm, rounds), "ms", per_round(stop_rpc, rounds), "supervisord", max_ratio=1.0))
    sec.add(rounds_row("reference: supervisord stopProcess, child exits through interpreter teardown",
                       per_round(stop_teardown, rounds), "ms", per_round(stop_rpc, rounds), "same, os._exit"))
    sec.add(rounds_row("reference: supervisord startProcess call returned", per_round(start_rpc, rounds), "ms"))
    sec.notes.append("supervisord's program is floor_child.py, the B1 floor child; for the compared stop it "
                     "exits with os._exit on SIGTERM (--fast-exit), as our module does after rm. Our add "
                     "includes the module's init and play round trips, supervisord's start until answered "
                     "one line exchanged with the child.")
    return sec


def run(stack: Stack, quick: bool, lifecycle: bool = False) -> list[Section]:
    """Every module benchmark; fewer cycles and fewer modules with ``quick``; with ``lifecycle`` only B1 and
    B5 (50 and 200 modules beside supervisord)."""
    cycles, warmup = (9, 2) if quick else (30, 3)
    tells = 300 if quick else 1500
    sup_cycles = 6 if quick else 21
    steps = [
        (f"B1: add/rm, {cycles} cycles", lambda: start_stop_section(stack, cycles, warmup)),
        (f"B2: tell_module, {tells} round trips", lambda: tell_section(stack, tells, 50)),
        (f"B4: supervisord, {sup_cycles} cycles", lambda: supervisor_section(stack, sup_cycles, 2)),
        ("B5: many modules beside supervisord and circus", lambda: peers_bench.run(stack, quick)[0]),
    ]
    if lifecycle:
        steps = [steps[0], ("B5: 50 and 200 modules beside supervisord",
                            lambda: peers_bench.peers_section(stack, [50, 200], 3, peers=("supervisord",)))]
    sections = []
    for what, step in steps:
        log.info("%s", what)
        meter = ForeignMeter()
        sections.append(step())
        noise_note(sections[-1], meter)
    return sections
