"""Push benchmark: how fast a module's ``set_parameters`` reaches WebSocket watchers, and what watchers cost.

Usage: ``.venv/bin/python -m bench.push_bench [--quick] [--watchers N] [--workers N] [--no-hog] [--big N]``

One stack: the gateway (gunicorn gevent workers, ``gateway_workers``, default 2), the queue (the jukebox
types plus ``stamp``, bench/push_stamp_module.py), the jukebox pool and volume (so the jukebox page
works), ``static_path`` = examples/jukebox/static. Measured, in order:

1. latency with 1 watcher: a ``stamp`` module sets ``{"seq", "sent": time.time()}`` every 50 ms; each
   watcher (bare sockets on one epoll, bench/push_wire.py) takes the kernel's arrival time of the
   frame that carried it (SO_TIMESTAMPNS, same clock) minus ``sent``. Floor, in rounds interleaved
   with ours (3 by default): a plain `websockets` server broadcasting the same change message to the
   same kind of watchers (bench/push_broadcast_floor.py, its own process);
2. gateway memory per watcher: RSS (and USS) of the gateway's workers before, and with N (1,000)
   idle subscribed watchers, divided by N;
3. latency with N watchers, as in 1, on those same connections, the floor with N watchers of its own;
   then the same rounds again with a CPU hog (a busy loop pinned to one core) running through them
   (``--no-hog`` skips them);
3b. ``--big`` (10,000; quick 1,000) watchers of the gateway and as many of the floor, each fleet in its
   own process (bench/push_fleet.py): the gateway workers' memory per watcher, then latency rounds
   with stamps every 250 ms (``--big 0`` skips them);
4. requests per minute of an idle jukebox page in headless Chromium (Playwright), counted with
   ``page.on("request")`` over an idle window while a stamp module pushes 10 events/s; target 0 while
   the WebSocket is up (the original library polled every 50 ms: 1,200/min, computed, not measured).
   In a full run, also the same page with ``window.WebSocket`` removed (the long-polling fallback).

Prints markdown tables; writes bench/results/push.json. Every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from bench.common import (
    PYTHON,
    Row,
    Section,
    bench_argv,
    child_env,
    free_port,
    markdown,
    rounds_row,
    save_sections,
    setup_logging,
)
from bench.push_fleet import RemoteFleet, run_window, subscribe
from bench.push_stack import MachineMeter, MiniStack, raise_nofile, reap_own_descendants
from bench.push_wire import Fleet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

log = logging.getLogger("bench.push")

JUKEBOX_STATIC = str(ROOT / "examples" / "jukebox" / "static")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ORIGINAL_POLL_PER_MIN = 60_000 / 50  # the original library's page: one request every 50 ms
P99_TARGET_MS = 50.0
BIG_P99_TARGET_MS = 250.0
BIG_KIB_TARGET = 20.0


class BudgetExceeded(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BudgetExceeded("the push benchmark went past its time budget")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter windows, 200 watchers, no polling reference")
    p.add_argument("--watchers", type=int, default=0, help="watchers in the big run (default 1000, quick 200)")
    p.add_argument("--workers", type=int, default=2, help="gateway workers (gateway_workers; default 2)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between stamps (default 0.05)")
    p.add_argument("--seconds", type=float, default=0, help="length of each latency window (default 8, quick 3)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of shmooze and the floor, interleaved (default 3)")
    p.add_argument("--idle", type=float, default=0, help="idle page window in seconds (default 10, quick 5)")
    p.add_argument("--no-browser", action="store_true", help="skip the Chromium idle-page measure")
    p.add_argument("--no-hog", action="store_true", help="skip the N-watcher rounds with a CPU hog on one core")
    p.add_argument("--big", type=int, default=-1, help="watchers in the big rows, each fleet in its own process "
                   "(default 10000, quick 1000; 0 skips them)")
    p.add_argument("--big-rounds", type=int, default=3, help="rounds at --big watchers (default 3)")
    p.add_argument("--big-seconds", type=float, default=0, help="window at --big watchers (default 4, quick 2)")
    p.add_argument("--big-interval", type=float, default=0.25, help="seconds between stamps at --big (default 0.25)")
    p.add_argument("--budget", type=int, default=0, help="hard limit in seconds (default 300 quick, 900 full)")
    return p.parse_args(argv)


# -- helpers ------------------------------------------------------------------------------------

def cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def memory_of(procs: list[psutil.Process]) -> dict[str, float]:
    rss = uss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            rss += info.rss
            uss += info.uss
        except psutil.Error:
            pass
    return {"rss": rss, "uss": uss}


def connections_per_worker(stack: MiniStack) -> list[int]:
    port = stack.ports["wsgi"]
    counts = []
    for w in stack.gateway_workers():
        try:
            conns = w.net_connections("tcp")
        except psutil.Error:
            conns = []
        counts.append(sum(1 for c in conns if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED))
    return counts


# -- measures -----------------------------------------------------------------------------------

def _client_procs(fleet: Fleet | RemoteFleet) -> list[psutil.Process]:
    return [psutil.Process(fleet.pid if isinstance(fleet, RemoteFleet) else os.getpid())]


def latency_phase(stack: MiniStack, fleet: Fleet | RemoteFleet, seconds: float, interval: float) -> dict[str, Any]:
    """A stamp module speaks every ``interval`` s; the fleet records arrivals through the gateway."""
    uid = stack.call("queue", "add", type="stamp", args={"interval": interval})["uid"]
    try:
        run_window(fleet, 0.0, 0.0, 1.0)  # warm up: the module is playing and events flow
        start = time.time() + 0.5
        end = start + seconds
        run_for = end - time.time() + 1.0  # a second more for the last ones to arrive
        workers = stack.gateway_workers()
        service = [psutil.Process(stack.worker_pid("queue"))]
        me = _client_procs(fleet)
        cpu0 = (cpu_of(workers), cpu_of(service), cpu_of(me), time.monotonic())
        meter = MachineMeter()
        out = run_window(fleet, start, end, run_for)
        machine = meter.read()
        cpu1 = (cpu_of(workers), cpu_of(service), cpu_of(me), time.monotonic())
    finally:
        stack.call("queue", "rm", uids=[uid])
    wall = cpu1[3] - cpu0[3]
    out["machine"] = machine
    out["cpu_core_share"] = {"server": (cpu1[0] - cpu0[0]) / wall, "queue_service": (cpu1[1] - cpu0[1]) / wall,
                             "bench_client": (cpu1[2] - cpu0[2]) / wall}
    return out


class BroadcastFloor:
    """bench/push_broadcast_floor.py in its own process: a plain `websockets` server broadcasting stamps."""

    def __init__(self, sample: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="shmooze-push-floor-"))
        (self.dir / "sample.json").write_text(sample)
        self.port = free_port()
        self.proc = subprocess.Popen(bench_argv("push_broadcast_floor", str(self.port), str(self.dir / "sample.json")),
                                     env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.dir / "stderr.log", "wb"), start_new_session=True)
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the broadcast floor did not start: {(self.dir / 'stderr.log').read_text()[-1000:]}")

    def phase(self, fleet: Fleet | RemoteFleet, seconds: float, interval: float) -> dict[str, Any]:
        """The same window as :func:`latency_phase`, the stamps coming from the floor server."""
        start = time.time() + 0.5
        end = start + seconds
        server = [psutil.Process(self.proc.pid)]
        me = _client_procs(fleet)
        self.proc.stdin.write(f"stamp {interval} {seconds + 1.5}\n".encode())  # 0.5 s before, 1 s after
        self.proc.stdin.flush()
        cpu0 = (cpu_of(server), cpu_of(me), time.monotonic())
        meter = MachineMeter()
        out = run_window(fleet, start, end, seconds + 1.5 + 0.5)
        machine = meter.read()
        cpu1 = (cpu_of(server), cpu_of(me), time.monotonic())
        if not self.proc.stdout.readline().startswith(b"done"):
            raise RuntimeError("the broadcast floor did not finish its window")
        wall = cpu1[2] - cpu0[2]
        out.pop("sample", None)
        out["machine"] = machine
        out["cpu_core_share"] = {"server": (cpu1[0] - cpu0[0]) / wall, "bench_client": (cpu1[1] - cpu0[1]) / wall}
        return out

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class CpuHog:
    """A busy loop in a child process pinned to one core (the last this process may use), ended by its pid."""

    def __init__(self) -> None:
        self.core = max(os.sched_getaffinity(0))
        self.proc = subprocess.Popen([PYTHON, "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        os.sched_setaffinity(self.proc.pid, {self.core})

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def hog_rounds(stack: MiniStack, fleet: Fleet, floor: BroadcastFloor, floor_fleet: Fleet, rounds: int,
               seconds: float, interval: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """The N-watcher rounds again, shmooze and the floor in turn, a :class:`CpuHog` running through all of them."""
    hog = CpuHog()
    try:
        ours, floors = [], []
        for r in range(rounds):
            log.info("round %d of %d: %d watchers with a CPU hog on core %d, shmooze then the floor, %g s each",
                     r + 1, rounds, len(fleet.watchers), hog.core, seconds)
            ours.append(latency_phase(stack, fleet, seconds, interval))
            floors.append(floor.phase(floor_fleet, seconds, interval))
    finally:
        hog.close()
    return ours, floors, hog.core


def memory_phase(stack: MiniStack, fleet: Fleet, n: int, deadline: float) -> dict[str, Any]:
    """RSS/USS of the gateway's workers before and with ``n`` idle subscribed watchers."""
    time.sleep(1.0)
    workers = stack.gateway_workers()
    before = memory_of(workers)
    t0 = time.monotonic()
    fleet.connect(n, deadline)
    connect_s = time.monotonic() - t0
    subscribed = subscribe(fleet, deadline)
    fleet.run(2.0, None)  # idle: no change events flow
    after = memory_of(workers)
    return {"watchers": n, "subscribed": subscribed, "connect_s": connect_s, "before": before, "with": after,
            "per_watcher_rss_kib": (after["rss"] - before["rss"]) / n / 1024,
            "per_watcher_uss_kib": (after["uss"] - before["uss"]) / n / 1024,
            "per_worker_connections": connections_per_worker(stack), "workers": len(workers)}


def big_rounds(stack: MiniStack, floor: BroadcastFloor, res: dict[str, Any], n: int, rounds: int, seconds: float,
               interval: float) -> None:
    """``n`` watchers of the gateway and ``n`` of the floor, each fleet in its own process: memory, then rounds."""
    log.info("%d watchers of the gateway and %d of the floor, each fleet in its own process", n, n)
    workers = stack.gateway_workers()
    ours = RemoteFleet(stack.ports["wsgi"], n, subscribed=True)
    try:
        theirs = RemoteFleet(floor.port, n, subscribed=False)
        try:
            ours.wait_ready()
            theirs.wait_ready()
            time.sleep(1.0)  # idle: no change events flow
            after = memory_of(workers)
            before = res["memory"]["before"] if res.get("memory") else {"rss": 0, "uss": 0}
            res["big_memory"] = {"watchers": n, "connect_s": ours.connect_s, "floor_connect_s": theirs.connect_s,
                                 "before_rss": before["rss"], "with_rss": after["rss"],
                                 "per_watcher_rss_kib": (after["rss"] - before["rss"]) / n / 1024,
                                 "per_watcher_uss_kib": (after["uss"] - before["uss"]) / n / 1024,
                                 "per_worker_connections": connections_per_worker(stack)}
            res["big"], res["big_floor"] = [], []
            for r in range(rounds):
                log.info("round %d of %d: %d watchers, shmooze then the broadcast floor, %g s each", r + 1, rounds,
                         n, seconds)
                res["big"].append(latency_phase(stack, ours, seconds, interval))
                res["big_floor"].append(floor.phase(theirs, seconds, interval))
        finally:
            theirs.close()
    finally:
        ours.close()


def idle_page(stack: MiniStack, idle: float, polling_reference: bool) -> dict[str, Any]:
    """Requests an idle jukebox page makes, in headless Chromium, while change events flow."""
    if not os.path.exists(CHROMIUM):
        return {"skipped": f"{CHROMIUM} not found"}
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "playwright is not installed"}
    url = f"http://127.0.0.1:{stack.ports['wsgi']}/"
    uid = stack.call("queue", "add", type="stamp", args={"interval": 0.1})["uid"]
    out: dict[str, Any] = {"url": url, "idle_s": idle, "events_per_s": 10}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
            try:
                out["websocket"] = _watch_page(browser, url, idle, None)
                if polling_reference:
                    out["polling"] = _watch_page(browser, url, idle, "window.WebSocket = undefined;")
            finally:
                browser.close()
    finally:
        stack.call("queue", "rm", uids=[uid])
    return out


def _watch_page(browser: Any, url: str, idle: float, init_script: str | None) -> dict[str, Any]:
    context = browser.new_context()
    try:
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        requests: list[tuple[float, str, str]] = []
        frames = {"received": 0, "sent": 0, "sockets": 0}

        def on_ws(ws: Any) -> None:
            frames["sockets"] += 1
            ws.on("framereceived", lambda _payload: frames.__setitem__("received", frames["received"] + 1))
            ws.on("framesent", lambda _payload: frames.__setitem__("sent", frames["sent"] + 1))

        page.on("request", lambda r: requests.append((time.monotonic(), r.method, r.url)))
        page.on("websocket", on_ws)
        t0 = time.monotonic()
        page.goto(url, wait_until="load", timeout=20_000)
        mode = "polling" if init_script else "websocket"
        page.wait_for_function(f"window.jukeboxReady === true && window.shmooze && shmooze.mode === '{mode}' "
                               "&& shmooze.connected === true", timeout=15_000)
        load_s = time.monotonic() - t0
        page.wait_for_timeout(1500)  # let the first loads settle
        n0, f0 = len(requests), dict(frames)
        stats0 = page.evaluate("Object.assign({}, shmooze.stats)")
        t1 = time.monotonic()
        page.wait_for_timeout(idle * 1000)
        t2 = time.monotonic()
        stats1 = page.evaluate("Object.assign({}, shmooze.stats)")
        window = requests[n0:]
        minutes = (t2 - t1) / 60.0
        return {"mode": page.evaluate("shmooze.mode"), "load_s": load_s, "window_s": t2 - t1,
                "requests_at_load": n0, "requests_in_window": len(window),
                "requests_per_min": len(window) / minutes,
                "js_http_requests_per_min": (stats1["httpRequests"] - stats0["httpRequests"]) / minutes,
                "ws_frames_received_per_min": (frames["received"] - f0["received"]) / minutes,
                "ws_frames_sent_per_min": (frames["sent"] - f0["sent"]) / minutes,
                "websockets_opened": frames["sockets"], "reconnects": stats1.get("reconnects"),
                "sample_urls": sorted({u for _, _, u in window})[:5]}
    finally:
        context.close()


# -- report -------------------------------------------------------------------------------------

def latency_rows(sec: Section, phases: list[dict[str, Any]], floors: list[dict[str, Any]],
                 p99_target: float | None, label: str = "") -> None:
    """p50, p99, max, arrivals, publish, server CPU and other processes' CPU over interleaved rounds."""
    n = phases[0]["watchers"]
    label = label or ("1 watcher" if n == 1 else f"{n:,} watchers")
    floor_label = "plain websockets broadcast"
    for q in ("p50", "p99"):
        extra = {"at_most": p99_target} if p99_target and q == "p99" else {}
        sec.add(rounds_row(f"{label}: {q}", [p["latency_ms"][q] for p in phases], "ms",
                           [f["latency_ms"][q] for f in floors], floor_label, **extra))
    sec.add(rounds_row(f"{label}: max", [p["latency_ms"]["max"] for p in phases], "ms",
                       [f["latency_ms"]["max"] for f in floors], floor_label))
    got, expected = sum(p["arrivals"] for p in phases), sum(p["arrivals_expected"] for p in phases)
    f_got, f_expected = sum(f["arrivals"] for f in floors), sum(f["arrivals_expected"] for f in floors)
    sec.add(Row(f"{label}: arrivals (of stamps x watchers, all rounds)", got, "count", f_got, floor_label,
                compare=f"{got:,} of {expected:,}; floor {f_got:,} of {f_expected:,}",
                verdict="pass" if got == expected else "FAIL"))
    sec.add(rounds_row(f"{label}: reference: module -> service publish, p50",
                       [p["module_to_service_ms"].get("p50", 0.0) for p in phases], "ms"))
    sec.add(rounds_row(f"{label}: server CPU (share of one core)", [p["cpu_core_share"]["server"] * 100
                                                                    for p in phases], "%",
                       [f["cpu_core_share"]["server"] * 100 for f in floors], floor_label))
    sec.add(rounds_row(f"{label}: reference: other processes on the machine",
                       [p["machine"]["others_cores"] for p in phases], "cores",
                       [f["machine"]["others_cores"] for f in floors], "during the floor's rounds"))


def build_sections(res: dict[str, Any]) -> list[Section]:
    sections = []
    rounds = res["rounds"]
    lat = Section(f"Push latency: module set_parameters -> change event at each WebSocket watcher ({rounds} rounds "
                  f"of {res['window_s']:g} s, shmooze and the broadcast floor in turn)")
    for key in ("one", "many"):
        phases, floors = res.get(key), res.get(f"{key}_floor")
        if phases:
            latency_rows(lat, phases, floors, P99_TARGET_MS if key == "many" else None)
    lat.notes.append(
        "Value: kernel arrival time (SO_TIMESTAMPNS) of the WebSocket frame minus the module's time.time() "
        f"when it set the parameter, one sample per (watcher, stamp); stamps every {res['interval_s'] * 1000:.0f} "
        "ms. Floor: a plain `websockets` server (bench/push_broadcast_floor.py, its own process) broadcasting "
        "the same change message (same size and shape, its own time.time() as the stamp) to the same kind of "
        "clients on this machine, in rounds interleaved with ours: what any Python WebSocket fan-out costs. "
        "Ours also pays module -> service -> gateway (the publish row). Server CPU: the gateway's workers, or "
        "the floor server. 'other processes' is CPU taken by processes that are not this benchmark's.")
    sections.append(lat)

    if res.get("hog"):
        sec = Section(f"Push with a CPU hog on one core: {res['hog'][0]['watchers']:,} watchers ({len(res['hog'])} "
                      f"rounds of {res['window_s']:g} s, shmooze and the broadcast floor in turn)")
        latency_rows(sec, res["hog"], res["hog_floor"], P99_TARGET_MS, f"{res['hog'][0]['watchers']:,} watchers, hog")
        sec.notes.append(f"A busy loop (`while True: pass`) in a child process pinned to core {res['hog_core']} with "
                         "os.sched_setaffinity ran through every round here, shmooze's and the floor's alike; "
                         "nothing else is pinned. Same watchers, stamps and floor as above.")
        sections.append(sec)

    big = res.get("big")
    if big:
        n = big[0]["watchers"]
        sec = Section(f"Push to {n} watchers over {res['gateway_workers']} gateway workers: {len(big)} rounds of "
                      f"{res['big_window_s']:g} s, stamps every {res['big_interval_s'] * 1000:.0f} ms, "
                      "shmooze and the broadcast floor in turn")
        latency_rows(sec, big, res["big_floor"], BIG_P99_TARGET_MS)
        bm = res["big_memory"]
        sec.add(rounds_row("memory per watcher (RSS)", [bm["per_watcher_rss_kib"]], "KiB",
                           at_most=BIG_KIB_TARGET))
        sec.rows[-1].compare += (f"; USS {bm['per_watcher_uss_kib']:.1f} KiB; workers' RSS {bm['before_rss'] / 2**20:.0f}"
                                 f" MiB fresh, {bm['with_rss'] / 2**20:.0f} MiB with them; connections per worker "
                                 f"{bm['per_worker_connections']} (of {n:,}); connect {bm['connect_s']:.0f} s")
        sec.notes.append("Each fleet (the gateway's, the floor's) is its own client process (bench/push_fleet.py), "
                         "both connected throughout. Memory per watcher: the gateway workers' RSS with these "
                         "watchers subscribed and idle, minus their RSS when fresh (before any watcher of this "
                         "run), over the number of watchers; so it also counts whatever earlier watchers left.")
        sections.append(sec)

    mem = res.get("memory")
    if mem:
        sec = Section(f"Gateway memory: {mem['watchers']:,} idle subscribed watchers (one measurement)")
        sec.add(Row("RSS of the gateway workers before", mem["before"]["rss"] / 2**20, "MiB",
                    compare=f"{mem['workers']} workers; USS {mem['before']['uss'] / 2**20:.1f} MiB"))
        sec.add(Row(f"RSS with {mem['watchers']:,} watchers", mem["with"]["rss"] / 2**20, "MiB",
                    compare=f"USS {mem['with']['uss'] / 2**20:.1f} MiB; connections per worker "
                            f"{mem['per_worker_connections']}; connect {mem['connect_s']:.1f} s"))
        sec.add(Row("memory per watcher (RSS)", mem["per_watcher_rss_kib"], "KiB",
                    compare=f"USS {mem['per_watcher_uss_kib']:.1f} KiB per watcher"))
        sections.append(sec)

    page = res.get("page")
    if page:
        sec = Section("Idle page: HTTP requests from the jukebox page in headless Chromium")
        if page.get("skipped"):
            sec.notes.append(f"skipped: {page['skipped']}")
        else:
            ws = page["websocket"]
            sec.add(rounds_row("requests/min while the WebSocket is up (one window)", [ws["requests_per_min"]],
                               "req/min", at_most=0))
            sec.rows[-1].compare += (f"; the original library: {ORIGINAL_POLL_PER_MIN:,.0f}/min, computed from its "
                                     "50 ms polling loop, not measured")
            sec.add(Row("change frames pushed to the page", ws["ws_frames_received_per_min"], "frames/min",
                        compare=f"{ws['requests_at_load']} requests at load; {ws['websockets_opened']} WebSocket(s); "
                                f"frames sent by the page {ws['ws_frames_sent_per_min']:.0f}/min"))
            poll = page.get("polling")
            if poll:
                sec.add(Row("reference: same page without WebSocket (long-poll fallback)", poll["requests_per_min"],
                            "req/min", compare="one long poll answered per change batch, plus re-queries"))
            sec.notes.append(f"Idle window {ws['window_s']:.0f} s after load, a stamp module pushing "
                             f"{page['events_per_s']} change events/s meanwhile; counted with Playwright's "
                             "page.on('request') (HTTP only: WebSocket frames are counted apart).")
        sections.append(sec)
    return sections


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    setup_logging()
    n = opts.watchers or (200 if opts.quick else 1000)
    seconds = opts.seconds or (3.0 if opts.quick else 8.0)
    rounds = opts.rounds
    idle = opts.idle or (5.0 if opts.quick else 10.0)
    budget = opts.budget or (300 if opts.quick else 900)
    big = opts.big if opts.big >= 0 else (1000 if opts.quick else 10000)
    big_seconds = opts.big_seconds or (2.0 if opts.quick else 4.0)
    nofile = raise_nofile(max(20000, 2 * n + 1000))
    if nofile < max(2 * n, big) + 200:
        log.error("RLIMIT_NOFILE %d is too low for %d (and %d) watchers", nofile, n, big)
        return 2
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(budget)
    started = time.time()
    t0 = time.monotonic()
    res: dict[str, Any] = {"quick": opts.quick, "interval_s": opts.interval, "window_s": seconds,
                           "gateway_workers": opts.workers, "rounds": rounds, "big_window_s": big_seconds,
                           "big_interval_s": opts.big_interval}
    fleet: Fleet | None = None
    try:
        services = {"queue": "bench.push_apps:make_queue", "pool": "jukebox.app:make_pool",
                    "volume": "jukebox.volume:Volume"}
        extra = {"static_path": JUKEBOX_STATIC, "public": ["ports", "wsgi_prefix", "app_name"],
                 "app_name": "shmooze jukebox (push bench)", "gateway_workers": opts.workers,
                 "gateway_connections": max(4000, n + 500, big + 500)}
        with MiniStack(services, "shmooze-push-", extra) as stack:
            fleet = Fleet(stack.ports["wsgi"])
            fleet.connect(1, time.monotonic() + 10)
            subscribe(fleet, time.monotonic() + 10)
            log.info("sample change message, 1 s")
            sample = latency_phase(stack, fleet, 1.0, opts.interval)["sample"]
            if not sample:
                raise RuntimeError("no stamp event reached the watcher")
            floor = BroadcastFloor(sample)
            floor_fleet = Fleet(floor.port)
            try:
                floor_fleet.connect(1, time.monotonic() + 10)
                res["one"], res["one_floor"] = [], []
                for r in range(rounds):
                    log.info("round %d of %d: 1 watcher, shmooze then the broadcast floor, %g s each", r + 1,
                             rounds, seconds)
                    res["one"].append(latency_phase(stack, fleet, seconds, opts.interval))
                    res["one_floor"].append(floor.phase(floor_fleet, seconds, opts.interval))
                fleet.close()
                floor_fleet.close()
                log.info("memory: %d idle watchers", n)
                fleet = Fleet(stack.ports["wsgi"])
                res["memory"] = memory_phase(stack, fleet, n, time.monotonic() + 60)
                floor_fleet = Fleet(floor.port)
                floor_fleet.connect(n, time.monotonic() + 60)
                res["many"], res["many_floor"] = [], []
                for r in range(rounds):
                    log.info("round %d of %d: %d watchers, shmooze then the broadcast floor, %g s each", r + 1,
                             rounds, n, seconds)
                    res["many"].append(latency_phase(stack, fleet, seconds, opts.interval))
                    res["many_floor"].append(floor.phase(floor_fleet, seconds, opts.interval))
                if not opts.no_hog:
                    res["hog"], res["hog_floor"], res["hog_core"] = hog_rounds(stack, fleet, floor, floor_fleet,
                                                                               rounds, seconds, opts.interval)
                fleet.close()
                fleet = None
                floor_fleet.close()
                if big:
                    big_rounds(stack, floor, res, big, opts.big_rounds, big_seconds, opts.big_interval)
            finally:
                floor_fleet.close()
                floor.close()
            if not opts.no_browser:
                log.info("idle page in Chromium, %g s", idle)
                res["page"] = idle_page(stack, idle, polling_reference=not opts.quick)
            res["gateway_log_warnings"] = [line for line in stack.log_tail("wsgi", 20000).splitlines()
                                           if " WARNING " in line or " ERROR " in line][-10:]
    finally:
        signal.alarm(0)
        if fleet is not None:
            fleet.close()
        reap_own_descendants()
    res["duration_s"] = round(time.monotonic() - t0, 1)
    sections = build_sections(res)
    for section in sections:
        sys.stdout.write(markdown(section) + "\n")
    sys.stdout.flush()
    failed = [f"{s.title.split(':')[0]}: {r.measure}" for s in sections for r in s.rows if r.verdict == "FAIL"]
    out = save_sections("push", sections, opts.quick, started=started, results=res, failed_targets=failed,
                        environment={"python": sys.version.split()[0], "platform": platform.platform(),
                                     "cpus": os.cpu_count()})
    log.info("done in %.0f s; results in %s; %d target(s) missed%s", res["duration_s"], out, len(failed),
             f": {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
