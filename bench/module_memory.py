"""Where a module's memory goes in the service that holds it: tracemalloc over real adds.

Builds the benchmark's pool service in this process, from a settings file like the benchmark
stack's (so with its journal and module output folder), and adds COUNT real trivial modules from
16 threads, as B5 does. Then:

1. ROUNDS rounds of add and rm: the RSS growth of this process from the booted service to COUNT
   modules running, per module, as B5 counts it (without gunicorn around it), and where it is
   (thread stacks, the malloc heap, other anonymous memory; from ``/proc/self/smaps``);
2. one more round under tracemalloc (the service's bounded histories are full by then): the Python
   heap growth per module, and the allocation sites that hold it, by line and by traceback.

With ``--retained``, what the service keeps once the modules are removed, round after round: the
Python heap (tracemalloc snapshots' difference, and by traceback what it kept), pymalloc's arenas and
free space, and the RSS by kind (issue 27: the worker grew with every module added and removed).

With ``--served``, it runs ``shmooze serve pool`` instead (gunicorn, as in B5) and repeats only B5's
shmooze side: rounds of 1 (after a warm-up), 50 and 200 modules added over HTTP by 16 clients, and
the RSS growth of the service's worker per module, from a baseline read after one cycle of 16
modules, in each 200 round: the B5 memory row's shmooze figures without the peers (a minute instead
of ten), and the worker's CPU per module added and removed. With ``--trace`` too, the served process
reports after each 200 round (all removed): the cyclic garbage it held, pymalloc's and malloc's figures
(``mallinfo2``), the live objects by type, and (unless ``SHMOOZE_MODMEM_FRAMES=0``) its Python heap
compared with the previous round by traceback.

With ``--floor``, the floor: a bare Python process (one malloc arena) holding COUNT ``Popen`` children.

Usage: ``.venv/bin/python -m bench.module_memory [--modules 200] [--top 15] [--frames 6]
[--served [--trace] | --retained | --floor]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import tempfile
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from bench.common import PYTHON, Proc, child_env, free_port, median, setup_logging, wait_until

CONCURRENT_ADDS = 16


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _build(folder: Path) -> Any:
    """The pool service as ``shmooze serve pool`` builds it from the benchmark's settings, started."""
    from shmooze import serve, settings

    path = folder / "settings.json"
    path.write_text(json.dumps({"ports": {"pool": free_port()}, "services": {"pool": "bench.benchapps:make_pool"}}))
    loaded = settings.read(path)
    settings.use(loaded)
    serve.one_malloc_arena()  # as in a service's worker
    service = serve.build_service(loaded, "pool")
    service.start()
    deadline = time.monotonic() + 30
    while service.restoring and time.monotonic() < deadline:
        time.sleep(0.01)
    service.status()  # as the stack does: boots the I/O thread and the orphan guard
    return service


def rss_by_kind(pid: int | str = "self") -> dict[str, int]:
    """Resident bytes of a process by kind of mapping, from ``/proc/PID/smaps``: thread stacks
    (anonymous mappings of 8 MiB less a guard page), the malloc heap (``[heap]``: objects over 512
    bytes, the interpreter's own structures), other anonymous mappings (pymalloc's arenas of 1 MiB,
    large blocks, merged by the kernel when adjacent), files (code, libraries)."""
    kinds: dict[str, int] = {}
    kind = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                size_kib = (end - start) >> 10
                path = fields[5] if len(fields) > 5 else ""
                if path.startswith("/"):
                    kind = "files"
                elif path == "[stack]" or size_kib in (8188, 8192):
                    kind = "thread stacks"
                elif path == "[heap]":
                    kind = "malloc heap"
                else:
                    kind = "other anonymous"
            elif fields[0] == "Rss:":
                kinds[kind] = kinds.get(kind, 0) + int(fields[1]) * 1024
    return kinds


def _kinds_diff(before: dict[str, int], after: dict[str, int], count: int) -> str:
    return ", ".join(f"{k} {(after.get(k, 0) - before.get(k, 0)) / count / 1024:+.2f}"
                     for k in sorted(set(before) | set(after)))


def _add(service: Any, count: int) -> list[str]:
    uids: list[str] = []
    lock = threading.Lock()

    def add_one(i: int) -> None:
        uid = service.add(type="trivial", args={"title": f"m{i}"})["uid"]
        with lock:
            uids.append(uid)

    with ThreadPoolExecutor(min(CONCURRENT_ADDS, count)) as pool:
        for fut in [pool.submit(add_one, i) for i in range(count)]:
            fut.result()
    return uids


def _settle(service: Any) -> None:
    """Let the I/O thread handle what the modules sent (their updates, answers to play)."""
    done = threading.Event()
    service.loop.call_soon(done.set)
    done.wait(5)
    time.sleep(0.3)
    done.clear()
    service.loop.call_soon(done.set)
    done.wait(5)


def _short(frame: str) -> str:
    """``File "/long/path/shmooze/hosting/host.py", line 311`` as ``shmooze/hosting/host.py:311``."""
    match = re.match(r'File "(.*)", line (\d+)', frame)
    if match is None:
        return frame
    path = Path(match[1])
    return f"{'/'.join(path.parts[-2:])}:{match[2]}"


def _print_top(title: str, stats: list[Any], count: int, top: int) -> None:
    total = sum(s.size_diff for s in stats)
    print(f"\n{title}: {total / count / 1024:.2f} KiB per module in all, {len(stats)} sites; the top {top}:")
    for stat in stats[:top]:
        frames = stat.traceback.format(most_recent_first=True)
        where = "\n        ".join(_short(line.strip()) for line in frames if not line.startswith("    "))
        print(f"  {stat.size_diff / count:8.0f} B/module  {stat.count_diff / count:6.2f} blocks/module  {where}")


TRACE_FIFO = "SHMOOZE_MODMEM_TRACE"  # (environment) with --served --trace: the served pool's request pipe


def traced_pool() -> Any:
    """The benchmark's pool, in a process that takes a tracemalloc snapshot whenever the bench asks: a
    thread reads file names from the pipe named by ``$SHMOOZE_MODMEM_TRACE``, collects the garbage (counting
    what only the cycle collector frees) and dumps a snapshot there (none if ``$SHMOOZE_MODMEM_FRAMES`` is 0),
    with the live objects by type and the figures of pymalloc and malloc (``NAME.types.json``)."""
    from collections import Counter

    from bench.benchapps import make_pool

    frames = int(os.environ.get("SHMOOZE_MODMEM_FRAMES", "8"))
    if frames:
        tracemalloc.start(frames)

    def answer() -> None:
        while True:
            with open(os.environ[TRACE_FIFO]) as requests:
                for line in requests:
                    target = line.strip()
                    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds, kept to be counted
                    gc.collect()
                    gc.set_debug(0)
                    cyclic = Counter(type(o).__qualname__ for o in gc.garbage)
                    gc.garbage.clear()
                    gc.collect()
                    if frames:
                        tracemalloc.take_snapshot().dump(target)
                    types = Counter(type(o).__qualname__ for o in gc.get_objects())
                    stats = {"types": types, "cyclic": cyclic, "pymalloc": _pymalloc(), "malloc": _mallinfo()}
                    Path(target + ".types.json").write_text(json.dumps(stats))
                    Path(target + ".done").touch()

    threading.Thread(target=answer, name="modmem-trace", daemon=True).start()
    return make_pool()


class _Tracer:
    """The bench's side of :func:`traced_pool`: snapshots of the served process, compared round to round."""

    def __init__(self, folder: Path, top: int):
        self.folder = folder
        self.fifo = folder / "trace.fifo"
        os.mkfifo(self.fifo)
        self.top = top
        self.taken: list[tuple[tracemalloc.Snapshot | None, dict[str, int]]] = []

    def take(self, label: str) -> None:
        target = self.folder / f"snap{len(self.taken)}"
        with open(self.fifo, "w") as f:
            f.write(f"{target}\n")
        wait_until(Path(f"{target}.done").exists, 60, "the served pool's snapshot", 0.05)
        stats = json.loads(Path(f"{target}.types.json").read_text())
        types = stats["types"]
        py, libc = stats["pymalloc"], stats["malloc"]
        print(f"  {label}: pymalloc {py['arenas']} arenas, {py['allocated'] / 1024:.0f} KiB in blocks, "
              f"{(py['free blocks'] + py['free pools']) / 1024:.0f} KiB free in them; malloc: "
              + ", ".join(f"{k} {v / 1024:.0f} KiB" if k != "free chunks" else f"{k} {v}" for k, v in libc.items()),
              flush=True)
        cyclic = stats["cyclic"]
        print(f"    cyclic garbage (freed by this collection only): {sum(cyclic.values())} objects; "
              + ", ".join(f"{k} {v}" for k, v in sorted(cyclic.items(), key=lambda kv: -kv[1])[:8]))
        snap = tracemalloc.Snapshot.load(str(target)) if Path(target).exists() else None
        if self.taken:
            old, old_types = self.taken[-1]
            print("    objects grown: " + ", ".join(
                f"{k} {v - old_types.get(k, 0):+d}" for k, v in
                sorted(types.items(), key=lambda kv: old_types.get(kv[0], 0) - kv[1])[:12]
                if v != old_types.get(k, 0)))
            if snap is not None and old is not None:
                grown = [s for s in snap.compare_to(old, "traceback") if s.size_diff > 0]
                total = sum(s.size_diff for s in snap.compare_to(old, "filename"))
                print(f"    the Python heap {total / 1024:+.1f} KiB since the last snapshot")
                _print_top(f"  grown since the last snapshot ({label})", grown, 1, self.top)
        self.taken.append((snap, types))


def served(folder: Path, count: int, rounds: int, old_baseline: bool, tracer: _Tracer | None = None) -> None:
    """B5's shmooze side alone: the pool service under gunicorn, modules added over HTTP."""
    from bench.peers_bench import Shmooze, _cpu, _gone, _rss

    port = free_port()
    path = folder / "settings.json"
    factory = "bench.module_memory:traced_pool" if tracer else "bench.benchapps:make_pool"
    path.write_text(json.dumps({"ports": {"pool": port}, "services": {"pool": factory}}))
    env = child_env({TRACE_FIFO: str(tracer.fifo)} if tracer else None)
    proc = Proc("pool", [PYTHON, "-m", "shmooze", "serve", "pool", "--settings", str(path)], env,
                folder / "pool.log")
    try:
        proc.wait_port(port, 60)
        stack: Any = type("OnePool", (), {"ports": {"pool": port}, "worker_pid": lambda self, name: proc.pid})()
        pool = Shmooze(stack)
        pool.pid = pool.admin.call("status")["pid"]  # the worker
        if not old_baseline:  # as B5: the baseline after one cycle at full concurrency
            pool.start(CONCURRENT_ADDS)
            pool.stop(CONCURRENT_ADDS)
        if tracer:
            tracer.take("baseline")
        before, kinds = _rss(pool.pid), rss_by_kind(pool.pid)
        print(f"before: RSS {before / 2**20:.1f} MiB, {len(psutil.Process(pool.pid).threads())} threads")
        figures, cpu = [], []
        for n, warm in ((1, 1), (count // 4, 0), (count, 0)):
            for r in range(rounds + warm):
                base = {p.pid for p in psutil.Process(pool.pid).children()}
                c0 = _cpu(pool.pid)
                pool.start(n)
                c1 = _cpu(pool.pid)
                started = [p.pid for p in psutil.Process(pool.pid).children() if p.pid not in base]
                if n == count:
                    figures.append((_rss(pool.pid) - before) / n / 1024)
                    print(f"{n} modules, round {r + 1}: {figures[-1]:.2f} KiB per module "
                          f"({_kinds_diff(kinds, rss_by_kind(pool.pid), n)}); "
                          f"{len(psutil.Process(pool.pid).threads())} threads", flush=True)
                    pool.sample(n)  # as B5 does next: status and pool queries
                c2 = _cpu(pool.pid)
                pool.stop(n)
                if n == count:
                    wait_until(lambda pids=started: _gone(pids), 60, "the modules to be reaped", 0.005)
                    cpu.append(((c1 - c0) + (_cpu(pool.pid) - c2)) * 1000 / n)
                if tracer and n == count:
                    time.sleep(1)  # (the removed modules' ends are handled)
                    tracer.take(f"after round {r + 1}")
        print(f"memory per module in the pool's worker, {count} modules: {median(figures):.2f} KiB "
              f"({min(figures):.2f}-{max(figures):.2f}); its CPU per module added and removed: {median(cpu):.2f} ms "
              f"({min(cpu):.2f}-{max(cpu):.2f})")
        pool.close()
    finally:
        proc.stop()


def _mallinfo() -> dict[str, int]:
    """glibc's malloc figures (``mallinfo2``): bytes in the heap (``arena``), in use, free in it, in mmapped blocks."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return {"heap": info.arena, "in use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd,
            "free chunks": info.ordblks}


def floor(count: int, rounds: int) -> None:
    """The floor of memory per child in a Python process: this process (one malloc arena, as a service) holding
    COUNT ``Popen`` children with three unbuffered pipes each, started by 16 threads, and nothing else: its RSS
    growth per child with COUNT running, from a baseline read after one cycle of 16, in each of ROUNDS rounds."""
    import subprocess

    from shmooze import serve

    serve.one_malloc_arena()

    def start(n: int) -> list[subprocess.Popen[bytes]]:
        pipe = subprocess.PIPE
        with ThreadPoolExecutor(min(CONCURRENT_ADDS, n)) as pool:
            return list(pool.map(lambda _i: subprocess.Popen(["cat"], stdin=pipe, stdout=pipe, stderr=pipe,
                                                             bufsize=0), range(n)))

    def stop(children: list[subprocess.Popen[bytes]]) -> None:
        for child in children:
            child.communicate(timeout=30)

    stop(start(CONCURRENT_ADDS))
    gc.collect()
    rss0, kinds0 = _rss(), rss_by_kind()
    figures = []
    for r in range(rounds):
        children = start(count)
        figures.append((_rss() - rss0) / count / 1024)
        print(f"round {r + 1}: {figures[-1]:.2f} KiB per child ({_kinds_diff(kinds0, rss_by_kind(), count)})",
              flush=True)
        stop(children)
        del children
    print(f"floor: a Python process holding {count} Popen children: {median(figures):.2f} KiB per child "
          f"({min(figures):.2f}-{max(figures):.2f})")


def _pymalloc() -> dict[str, int]:
    """pymalloc's arenas (1 MiB each), the bytes in its allocated blocks and in its free blocks and pools
    (from ``sys._debugmallocstats``, which writes to the C stderr: read back through a pipe)."""
    import ctypes
    import sys

    read, write = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write, 2)
        os.close(write)
        sys._debugmallocstats()  # noqa: SLF001 - CPython's one report of pymalloc's arenas
        ctypes.CDLL(None).fflush(None)  # (C stdio buffers what it writes to a pipe)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    with os.fdopen(read, "r") as f:
        text = f.read()
    figures = {"arenas": r"# arenas allocated current\s*=\s*([\d,]+)",
               "allocated": r"# bytes in allocated blocks\s*=\s*([\d,]+)",
               "free blocks": r"# bytes in available blocks\s*=\s*([\d,]+)",
               "free pools": r"unused pools \* \d+ bytes\s*=\s*([\d,]+)"}
    out = {}
    for name, pattern in figures.items():
        match = re.search(pattern, text)
        out[name] = int(match[1].replace(",", "")) if match else 0
    return out


def retained(service: Any, count: int, rounds: int, top: int, frames: int) -> None:
    """What a service keeps of modules once they are removed: ROUNDS rounds of COUNT added then removed,
    after a warm-up round (the bounded histories fill); after each, the RSS by kind and pymalloc's arenas
    and free space; then ROUNDS more under tracemalloc: the Python heap after each, and what it kept."""
    _add_rm(service, count)
    gc.collect()
    rss0, kinds0 = _rss(), rss_by_kind()
    for r in range(rounds):
        _add_rm(service, count)
        time.sleep(0.6)  # (the reaper trims the heap within half a second of the last end)
        gc.collect()
        py = _pymalloc()
        print(f"after round {r + 1} (all {count} removed): RSS {(_rss() - rss0) / 1024:+.0f} KiB "
              f"({_kinds_diff(kinds0, rss_by_kind(), 1)}); pymalloc: {py['arenas']} arenas, "
              f"{py['allocated'] / 2**20:.1f} MiB in blocks, {(py['free blocks'] + py['free pools']) / 2**20:.1f} "
              "MiB free in them", flush=True)
    tracemalloc.start(frames)
    base = tracemalloc.take_snapshot()
    for r in range(rounds):
        _add_rm(service, count)
        gc.collect()
        snap = tracemalloc.take_snapshot()
        heap = sum(s.size_diff for s in snap.compare_to(base, "filename"))
        # (The first round replaces the histories' entries made before tracing began, which count as growth:
        # what is kept per module is what the later rounds add.)
        print(f"traced round {r + 1}: the Python heap {heap / 1024:+.1f} KiB since tracing began", flush=True)
    tracemalloc.stop()
    kept = [s for s in snap.compare_to(base, "traceback") if s.size_diff > 0]
    _print_top(f"kept after {rounds} traced rounds, by traceback", kept, count * rounds, top)


def _add_rm(service: Any, count: int) -> None:
    uids = _add(service, count)
    _settle(service)
    service.rm(uids=uids)
    _settle(service)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of RSS figures before the traced one")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--frames", type=int, default=6, help="traceback depth of the by-traceback table")
    parser.add_argument("--served", action="store_true", help="B5's shmooze side: the pool under gunicorn")
    parser.add_argument("--retained", action="store_true",
                        help="what the service keeps once modules are removed: the heap, pymalloc and RSS by round")
    parser.add_argument("--floor", action="store_true",
                        help="the floor: RSS per child of a bare Python process holding COUNT Popen children")
    parser.add_argument("--trace", action="store_true",
                        help="with --served: tracemalloc in the served pool, its heap compared after each round")
    parser.add_argument("--old-baseline", action="store_true",
                        help="with --served: the baseline before any module (as B5 read it before issue 14)")
    opts = parser.parse_args()
    os.environ.update(child_env())  # the modules' interpreter finds pymodule and the bench folder
    setup_logging(30)
    count = opts.modules
    with tempfile.TemporaryDirectory(prefix="shmooze-modmem-") as tmp:
        if opts.floor:
            floor(count, opts.rounds)
            return
        if opts.served:
            tracer = _Tracer(Path(tmp), opts.top) if opts.trace else None
            served(Path(tmp), count, opts.rounds, opts.old_baseline, tracer)
            return
        service = _build(Path(tmp))
        if opts.retained:
            try:
                retained(service, count, opts.rounds, opts.top, opts.frames)
            finally:
                service.stop()
            return
        try:
            gc.collect()
            rss0, kinds0 = _rss(), rss_by_kind()
            for r in range(opts.rounds):  # as B5 counts: RSS with COUNT running less RSS before the first round
                uids = _add(service, count)
                _settle(service)
                rss1, kinds1 = _rss(), rss_by_kind()
                print(f"round {r + 1}: RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB with {count} modules: "
                      f"{(rss1 - rss0) / count / 1024:.2f} KiB per module ({_kinds_diff(kinds0, kinds1, count)}); "
                      f"threads {threading.active_count()}")
                service.rm(uids=uids)
            _settle(service)
            gc.collect()
            tracemalloc.start(opts.frames)
            before = tracemalloc.take_snapshot()
            rss2 = _rss()
            uids = _add(service, count)
            _settle(service)
            gc.collect()
            after = tracemalloc.take_snapshot()
            rss3 = _rss()
            tracemalloc.stop()
            print(f"warm round (under tracemalloc): RSS +{(rss3 - rss2) / count / 1024:.2f} KiB per module")
            keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
            before, after = before.filter_traces(keep), after.filter_traces(keep)
            by_line = [s for s in after.compare_to(before, "lineno") if s.size_diff > 0]
            _print_top("Python heap growth by line", by_line, count, opts.top)
            by_file = [s for s in after.compare_to(before, "filename") if s.size_diff > 0]
            _print_top("by file", by_file, count, opts.top)
            by_tb = [s for s in after.compare_to(before, "traceback") if s.size_diff > 0]
            _print_top(f"by traceback ({opts.frames} frames)", by_tb, count, opts.top)
            service.rm(uids=uids)
        finally:
            service.stop()


if __name__ == "__main__":
    main()
