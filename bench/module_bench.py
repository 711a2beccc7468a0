"""B. Modules: start, stop and command module processes, beside a bare spawn-and-answer floor and supervisord."""

from __future__ import annotations

import http.client
import logging
import socket
import subprocess
import threading
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from common import (BENCH, HOST, PYTHON, BenchError, Client, ForeignMeter, Proc, Row, Section, child_env,
                    encode_command, limit_row, median, noise_note, percentile, precise_cpu_seconds, ratio_row,
                    wait_until)
from stack import Stack

log = logging.getLogger("bench.modules")

FLOOR_CHILD = str(BENCH / "floor_child.py")
TRIVIAL = "trivial"


# -- the floor: a bare parent that spawns a stdlib child and exchanges one line with it ------------

class FloorParent:
    """Spawns ``floor_child.py`` against its own listening socket, as a module host would, minus everything else."""

    def __init__(self, python_flags: tuple[str, ...] = ()) -> None:
        self.python_flags = list(python_flags)
        self.listener = socket.socket()
        self.listener.bind((HOST, 0))
        self.listener.listen(16)
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.env = child_env()

    def cycle(self) -> tuple[float, float]:
        """One child: (spawn until its answer arrived, exit command until reaped), in ms."""
        t0 = time.perf_counter()
        argv = [PYTHON, *self.python_flags, FLOOR_CHILD, HOST, str(self.port)]
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


def start_stop_section(stack: Stack, n: int, warmup: int) -> Section:
    """Add and rm one module at a time on the queue and the pool, interleaved with floor cycles."""
    floor = FloorParent()
    bare = FloorParent(("-S",))
    try:
        for _ in range(warmup):
            floor.cycle()
            bare.cycle()
        add_rm_cycles(stack.ports["queue"], warmup)
        add_rm_cycles(stack.ports["pool"], warmup)
        f_start, f_stop, q_add, q_rm, p_add, p_rm, bare_start, bare_stop = [], [], [], [], [], [], [], []
        for _ in range(n):  # interleaved, one of each per round
            s, e = floor.cycle()
            f_start.append(s)
            f_stop.append(e)
            s, e = bare.cycle()
            bare_start.append(s)
            bare_stop.append(e)
            a, r = add_rm_cycles(stack.ports["queue"], 1)
            q_add += a
            q_rm += r
            a, r = add_rm_cycles(stack.ports["pool"], 1)
            p_add += a
            p_rm += r
    finally:
        floor.close()
        bare.close()
    fs, fe = median(f_start), median(f_stop)
    sec = Section(f"B1. Module start and stop, one at a time ({n} cycles each, interleaved, after {warmup} warm-up)")
    sec.add(Row("floor: spawn until the child answered, p50", fs, "ms", detail={"p90": percentile(f_start, .9)}))
    sec.add(ratio_row("queue add (until init and play answered), p50", median(q_add), "ms", fs, "floor",
                      max_ratio=1.5, p90=percentile(q_add, .9)))
    sec.add(ratio_row("pool add (until init and play answered), p50", median(p_add), "ms", fs, "floor",
                      max_ratio=1.5, p90=percentile(p_add, .9)))
    sec.add(Row("floor: exit command until reaped, p50", fe, "ms", detail={"p90": percentile(f_stop, .9)}))
    sec.add(limit_row("queue rm (until reaped), p50", median(q_rm), "ms", at_most=10.0, floor=fe,
                      floor_label="floor", p90=percentile(q_rm, .9)))
    sec.add(limit_row("pool rm (until reaped), p50", median(p_rm), "ms", at_most=10.0, floor=fe,
                      floor_label="floor", p90=percentile(p_rm, .9)))
    sec.add(ratio_row("floor child under python -S (no site, no .pth hooks): start, p50", median(bare_start), "ms",
                      fs, "floor"))
    sec.add(ratio_row("floor child under python -S: exit command until reaped, p50", median(bare_stop), "ms",
                      fe, "floor"))
    sec.notes.append("Every child runs the service's interpreter (.venv/bin/python), as python_module() "
                     "does; the -S row shows what the interpreter's site start-up costs of each start.")
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
    sec = Section(f"B2. tell_module round trip through the gateway ({n} each, interleaved, one connection each)")
    sec.add(Row("gateway -> volume get_volume p50", percentile(vol, .5), "ms"))
    sec.add(Row("gateway -> volume get_volume p99", percentile(vol, .99), "ms"))
    sec.add(ratio_row("gateway -> queue tell_module ping p50", percentile(tel, .5), "ms", percentile(vol, .5),
                      "get_volume"))
    sec.add(ratio_row("gateway -> queue tell_module ping p99", percentile(tel, .99), "ms", percentile(vol, .99),
                      "get_volume"))
    return sec


# -- B3: a pool holding many modules ------------------------------------------------------------

def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def _uss(pid: int) -> int:
    return psutil.Process(pid).memory_full_info().uss


def _idle_cpu_share(pid: int, seconds: float) -> float:
    """Share of one core that the process used while nobody sent it anything."""
    c0, t0 = precise_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (precise_cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pool_section(stack: Stack, count: int, clients: int, queries: int, idle_s: float) -> Section:
    port = stack.ports["pool"]
    worker = stack.worker_pid("pool")
    admin = Client(port)
    if admin.call("pool"):
        raise BenchError("the pool is not empty before the many-modules benchmark")
    idle_before = _idle_cpu_share(worker, idle_s)
    rss0, uss0 = _rss(worker), _uss(worker)
    uids: list[str] = []
    lock = threading.Lock()
    local = threading.local()
    opened: list[Client] = []

    def add_one(i: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client(port)
            with lock:
                opened.append(client)
        uid = client.call("add", type=TRIVIAL, args={"title": f"m{i}"})["uid"]
        with lock:
            uids.append(uid)

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(clients) as pool:
            for fut in [pool.submit(add_one, i) for i in range(count)]:
                fut.result()
        add_s = time.perf_counter() - t0
        rss1, uss1 = _rss(worker), _uss(worker)
        status = admin.call("status")
        pids = [m["pid"] for m in status["modules"]]
        if len(pids) != count:
            raise BenchError(f"status shows {len(pids)} modules, not {count}")
        sample = pids[:: max(len(pids) // 10, 1)][:10]
        module_rss = sum(_rss(p) for p in sample) / len(sample)
        module_uss = sum(_uss(p) for p in sample) / len(sample)
        idle_after = _idle_cpu_share(worker, idle_s)

        body = encode_command("pool", parameters={TRIVIAL: ["title"]})
        first = admin.call("pool", parameters={TRIVIAL: ["title"]})
        with_title = sum(1 for m in first if m.get("parameters", {}).get("title"))
        q_ms = []
        for _ in range(queries):
            q0 = time.perf_counter()
            admin.raw(body)
            q_ms.append((time.perf_counter() - q0) * 1000.0)
        s_ms = []
        for _ in range(max(queries // 5, 3)):
            q0 = time.perf_counter()
            admin.call("status")
            s_ms.append((time.perf_counter() - q0) * 1000.0)

        r0 = time.perf_counter()
        admin.call("rm", uids=list(uids))
        rm_s = time.perf_counter() - r0
        uids.clear()
        left = [p for p in pids if _alive(p)]
    finally:
        for client in opened:
            client.close()
        if uids:  # a failure midway: remove what was added
            try:
                admin.call("rm", uids=list(uids))
            except Exception:
                log.exception("removing %d modules after a failure", len(uids))
        admin.close()

    sec = Section(f"B3. A pool holding {count} trivial modules (added by {clients} concurrent clients)")
    sec.add(Row(f"add {count} modules, total", add_s, "s", detail={"per_module_ms": add_s * 1000 / count}))
    sec.add(Row("add throughput", count / add_s, "modules/s"))
    sec.add(Row("pool worker RSS per module", (rss1 - rss0) / count / 1024, "KiB",
                detail={"rss_before": rss0, "rss_after": rss1, "uss_per_module_kib": (uss1 - uss0) / count / 1024}))
    sec.add(Row("module process RSS (mean of 10)", module_rss / 2**20, "MiB",
                detail={"uss_mib": module_uss / 2**20}))
    sec.add(Row("module process USS (mean of 10)", module_uss / 2**20, "MiB"))
    sec.add(Row(f"pool query with parameters, {count} modules, p50", percentile(q_ms, .5), "ms",
                detail={"p99": percentile(q_ms, .99), "modules_with_title": with_title}))
    sec.add(Row(f"status, {count} modules, p50", percentile(s_ms, .5), "ms"))
    sec.add(Row("pool worker idle CPU, empty", idle_before * 100, "% of a core"))
    sec.add(Row(f"pool worker idle CPU, {count} modules", idle_after * 100, "% of a core"))
    sec.add(Row(f"rm all {count} in one rm, total", rm_s, "s", detail={"per_module_ms": rm_s * 1000 / count}))
    sec.add(limit_row("module processes left after rm", float(len(left)), "processes", at_most=0))
    if with_title != count:
        sec.notes.append(f"only {with_title} of {count} modules showed their title parameter in the pool query")
    return sec


# -- B4: supervisord side by side -----------------------------------------------------------------

SUPERVISOR_CONF = """\
[unix_http_server]
file={dir}/supervisor.sock

[supervisord]
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}
nodaemon=true
loglevel=warn

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{dir}/supervisor.sock

[program:floor]
command={python} {child} --term-exits 127.0.0.1 {port}
autostart=false
autorestart=false
startsecs=0
startretries=0
stopsignal=TERM
stopwaitsecs=5
stdout_logfile=NONE
stderr_logfile=NONE

[program:floor_killed]
command={python} {child} 127.0.0.1 {port}
autostart=false
autorestart=false
startsecs=0
startretries=0
stopsignal=TERM
stopwaitsecs=5
stdout_logfile=NONE
stderr_logfile=NONE
"""


def supervisor_section(stack: Stack, n: int, warmup: int) -> Section:
    """Start/stop cycles through supervisord, interleaved with our add/rm cycles on the queue."""
    from supervisor.xmlrpc import SupervisorTransport

    workdir = stack.dir / "supervisor"
    workdir.mkdir()
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(16)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    conf = workdir / "supervisord.conf"
    conf.write_text(SUPERVISOR_CONF.format(dir=workdir, python=PYTHON, child=FLOOR_CHILD, port=port))
    proc = Proc("supervisord", [PYTHON, "-m", "supervisor.supervisord", "-c", str(conf)], child_env(),
                workdir / "stdout.log")

    def connect() -> Any:
        transport = SupervisorTransport(None, None, f"unix://{workdir}/supervisor.sock")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    start_rpc, start_ready, stop_rpc, stop_killed, our_add, our_rm = [], [], [], [], [], []
    try:
        def up() -> bool:
            if proc.popen.poll() is not None:
                raise BenchError(f"supervisord exited:\n{proc.log_tail()}")
            try:
                return connect().supervisor.getState()["statename"] == "RUNNING"
            except (OSError, xmlrpc.client.Error, http.client.HTTPException):
                return False

        wait_until(up, 20, "supervisord to answer")
        rpc = connect()

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
            d = cycle("floor_killed")[2]
            add, rm = add_rm_cycles(stack.ports["queue"], 1)
            if i >= warmup:
                our_add += add
                our_rm += rm
                start_rpc.append(a)
                start_ready.append(b)
                stop_rpc.append(c)
                stop_killed.append(d)
    finally:
        listener.close()
        proc.stop()
    sec = Section(f"B4. Side by side with supervisord (XML-RPC on a unix socket, startsecs=0; {n} start/stop "
                  f"cycles of the floor child, interleaved with {n} queue add/rm cycles, after {warmup} warm-up)")
    sec.add(Row("supervisord startProcess returned, p50", median(start_rpc), "ms"))
    sec.add(Row("supervisord start until the child answered, p50", median(start_ready), "ms"))
    sec.add(Row("supervisord stopProcess (until reaped), child exits in order on SIGTERM, p50", median(stop_rpc),
                "ms"))
    sec.add(Row("supervisord stopProcess, child killed outright by SIGTERM, p50", median(stop_killed), "ms"))
    sec.add(ratio_row("queue add vs supervisord start until answered, p50", median(our_add), "ms",
                      median(start_ready), "supervisord", max_ratio=1.0))
    sec.add(ratio_row("queue rm vs supervisord stopProcess, p50", median(our_rm), "ms", median(stop_rpc),
                      "supervisord", max_ratio=1.0))
    sec.notes.append("supervisord's program is floor_child.py, the B1 floor child; for the compared stop it "
                     "exits on SIGTERM through normal interpreter clean-up (--term-exits), as our module does "
                     "after rm. Our add includes the module's init and play round trips, supervisord's start "
                     "until answered one line exchanged with the child.")
    return sec


def run(stack: Stack, quick: bool) -> list[Section]:
    """Every module benchmark; fewer cycles and a 100-module pool with ``quick``."""
    cycles, warmup = (10, 2) if quick else (30, 3)
    tells = 300 if quick else 1000
    count = 100 if quick else 500
    sup_cycles = 5 if quick else 20
    steps = [
        ("B1: add/rm, %d cycles" % cycles, lambda: start_stop_section(stack, cycles, warmup)),
        ("B2: tell_module, %d round trips" % tells, lambda: tell_section(stack, tells, 50)),
        ("B3: pool of %d modules" % count,
         lambda: pool_section(stack, count, 4, 10 if quick else 30, 1.0 if quick else 2.0)),
        ("B4: supervisord, %d cycles" % sup_cycles, lambda: supervisor_section(stack, sup_cycles, 2)),
    ]
    sections = []
    for what, step in steps:
        log.info("%s", what)
        meter = ForeignMeter()
        sections.append(step())
        noise_note(sections[-1], meter)
    return sections
