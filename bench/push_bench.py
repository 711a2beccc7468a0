"""Push benchmark: how fast a module's ``set_parameters`` reaches WebSocket watchers, and what watchers cost,
shmooze side by side with three anchors.

Usage: ``.venv/bin/python -m bench.push_bench [--quick] [--watchers N] [--workers N] [--no-hog] [--big N]
[--no-nchan]``

The servers (bench/push_anchors.py), measured in rounds interleaved server by server (shmooze, then
each anchor), with the same kind of watchers (bare sockets on one epoll, bench/push_wire.py) and the
same change message:

- shmooze: the gateway (gunicorn workers, ``gateway_workers``, default 2) of a stack with the queue
  (the jukebox types plus ``stamp``, bench/push_stamp_module.py: it sets ``{"seq", "sent": time.time()}``
  every interval), the jukebox pool and volume (so the jukebox page works);
- the plain `websockets` broadcast (bench/push_broadcast_floor.py): the Python floor;
- the minimal fan-out floor (bench/push_fanout_floor.py): one loop sending one pre-framed message to
  every socket, the least any sender spends;
- nchan in nginx (bench/push_nchan.py; Debian's nginx and libnginx-mod-nchan, which `dev.py bench`
  installs), stamps posted to its HTTP publisher, watchers subscribed over WebSocket, as many nginx
  workers as the gateway has.

Each arrival's latency is the kernel's arrival time of the frame (SO_TIMESTAMPNS, same clock) minus
``sent``. Measured, in order:

1. 1 watcher of each server, stamps every 50 ms;
2. N (1,000; quick 200) watchers of each server: memory per watcher (RSS of the server's processes,
   watchers idle, over its RSS before any watcher), then latency rounds; then the same rounds with a
   CPU hog (a busy loop pinned to one core) running through them (``--no-hog`` skips them);
3. ``--big`` (10,000; quick 1,000) watchers of each server, each fleet in a process of its own
   (bench/push_fleet.py), each server restarted first (its memory baseline): connect time, memory
   per watcher, latency rounds with stamps every 250 ms
   and the server's CPU per event, then restart rounds: each server stopped by its pid and started
   again while its fleet reconnects, timed until every watcher is subscribed again (``--big 0`` skips);
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
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench.common import (
    PYTHON,
    Row,
    Section,
    anchored_row,
    markdown,
    rounds_row,
    save_sections,
    setup_logging,
)
from bench.push_anchors import Anchor, Gateway, Nchan, StampServer, rss_of
from bench.push_fleet import RemoteFleet
from bench.push_nchan import available as nchan_available
from bench.push_stack import MiniStack, raise_nofile, reap_own_descendants
from bench.push_wire import Fleet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

log = logging.getLogger("bench.push")

JUKEBOX_STATIC = str(ROOT / "examples" / "jukebox" / "static")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ORIGINAL_POLL_PER_MIN = 60_000 / 50  # the original library's page: one request every 50 ms
P99_TARGET_MS = 50.0  # 1,000 watchers, and with a CPU hog on one core (every round)
ONE_HOP_MS = 0.5  # 1 watcher: p50 at most this much above the plain websockets broadcast's
BIG_P99_TARGET_MS = 100.0
BIG_KIB_TARGET = 10.0
RESUBSCRIBED_TARGET_S = 10.0


class BudgetExceeded(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BudgetExceeded("the push benchmark went past its time budget")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter windows, 200 and 1,000 watchers, no polling reference")
    p.add_argument("--watchers", type=int, default=0, help="watchers in the middle rows (default 1000, quick 200)")
    p.add_argument("--workers", type=int, default=2, help="gateway workers (gateway_workers; default 2), and nginx's")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between stamps (default 0.05)")
    p.add_argument("--seconds", type=float, default=0, help="length of each latency window (default 4, quick 2)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each server, interleaved (default 3)")
    p.add_argument("--idle", type=float, default=0, help="idle page window in seconds (default 10, quick 5)")
    p.add_argument("--no-browser", action="store_true", help="skip the Chromium idle-page measure")
    p.add_argument("--no-hog", action="store_true", help="skip the N-watcher rounds with a CPU hog on one core")
    p.add_argument("--no-nchan", action="store_true", help="leave nchan out (it also is when nginx is missing)")
    p.add_argument("--big", type=int, default=-1, help="watchers in the big rows, each fleet in its own process "
                   "(default 10000, quick 1000; 0 skips them)")
    p.add_argument("--big-rounds", type=int, default=3, help="rounds at --big watchers (default 3)")
    p.add_argument("--big-seconds", type=float, default=0, help="window at --big watchers (default 4, quick 2)")
    p.add_argument("--big-interval", type=float, default=0.25, help="seconds between stamps at --big (default 0.25)")
    p.add_argument("--rejoin-limit", type=float, default=30.0, help="seconds a restart round may take (default 30)")
    p.add_argument("--budget", type=int, default=0, help="hard limit in seconds (default 480 quick, 1500 full)")
    return p.parse_args(argv)


# -- measures -----------------------------------------------------------------------------------

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


def keep_alive(fleets: dict[str, Fleet | RemoteFleet]) -> None:
    """Let the fleets of this process answer pings between windows (a remote fleet does it itself)."""
    for fleet in fleets.values():
        if isinstance(fleet, Fleet):
            fleet.pump(0.0, None)


def interleaved(anchors: list[Anchor], fleets: dict[str, Fleet | RemoteFleet], rounds: int, seconds: float,
                interval: float, what: str) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` latency windows of every server, one server after another in each round."""
    out: dict[str, list[dict[str, Any]]] = {a.key: [] for a in anchors}
    for r in range(rounds):
        log.info("round %d of %d: %s, %s in turn, %g s each", r + 1, rounds, what,
                 ", ".join(a.label for a in anchors), seconds)
        for a in anchors:
            out[a.key].append(a.phase(fleets[a.key], seconds, interval))
            keep_alive(fleets)
    return out


def memory_per_watcher(anchors: list[Anchor], fresh: dict[str, int], n: int) -> dict[str, dict[str, float]]:
    """RSS of each server's processes now (its watchers idle) over its RSS before any watcher, per watcher."""
    time.sleep(1.0)  # idle: no change events flow
    out = {}
    for a in anchors:
        now = rss_of(a.processes())
        out[a.key] = {"fresh_rss": fresh[a.key], "with_rss": now, "watchers": n,
                      "per_watcher_kib": (now - fresh[a.key]) / n / 1024}
    return out


def middle_rows(anchors: list[Anchor], res: dict[str, Any], fresh: dict[str, int], n: int, rounds: int,
                seconds: float, interval: float, hog: bool) -> None:
    """N watchers of each server in this process: memory, latency rounds, then with a CPU hog."""
    fleets: dict[str, Fleet | RemoteFleet] = {}
    try:
        for a in anchors:
            fleet = fleets[a.key] = a.fleet()
            t0 = time.monotonic()
            fleet.connect(n, t0 + 120)
            log.info("%d watchers of %s connected in %.2f s", n, a.label, time.monotonic() - t0)
        res["memory"] = memory_per_watcher(anchors, fresh, n)
        res["many"] = interleaved(anchors, fleets, rounds, seconds, interval, f"{n} watchers")
        if hog:
            cpu_hog = CpuHog()
            try:
                res["hog_core"] = cpu_hog.core
                res["hog"] = interleaved(anchors, fleets, rounds, seconds, interval,
                                         f"{n} watchers with a CPU hog on core {cpu_hog.core}")
            finally:
                cpu_hog.close()
    finally:
        for fleet in fleets.values():
            fleet.close()


def fresh_servers(anchors: list[Anchor]) -> dict[str, int]:
    """Restart every server (what earlier rows left in its memory is gone), have a few watchers come and
    go (its workers up and serving), then its RSS: the baseline of the memory per watcher."""
    for a in anchors:
        a.stop()
        a.start()
        warm = a.fleet()
        try:
            warm.connect(8, time.monotonic() + 60)
        finally:
            warm.close()
    time.sleep(1.0)
    return {a.key: rss_of(a.processes()) for a in anchors}


def big_rows(anchors: list[Anchor], res: dict[str, Any], n: int, rounds: int, seconds: float, interval: float,
             rejoin_limit: float) -> None:
    """``n`` watchers of each server, each fleet in its own process, after a restart of each: connect,
    memory, latency, restarts."""
    fleets: dict[str, Fleet | RemoteFleet] = {}
    fresh = fresh_servers(anchors)
    try:
        for a in anchors:  # one at a time: each connect time is the server's alone
            fleet = fleets[a.key] = a.remote_fleet(n)
            fleet.wait_ready()
            log.info("%d watchers of %s connected in %.1f s", n, a.label, fleet.connect_s)
        res["big_connect_s"] = {a.key: fleets[a.key].connect_s for a in anchors}  # type: ignore[union-attr]
        res["big_memory"] = memory_per_watcher(anchors, fresh, n)
        res["big"] = interleaved(anchors, fleets, rounds, seconds, interval, f"{n} watchers")
        res["restart"] = {a.key: [] for a in anchors}
        for r in range(rounds):
            log.info("round %d of %d: restart each server under %d watchers", r + 1, rounds, n)
            for a in anchors:
                fleet = fleets[a.key]
                assert isinstance(fleet, RemoteFleet)
                got = a.restart(fleet, rejoin_limit)
                log.info("%s: stopped in %.2f s; all %d back %s s after its start", a.label, got["stop_s"],
                         n, "n/a" if got["resubscribed_s"] is None else f"{got['resubscribed_s']:.2f}")
                res["restart"][a.key].append(got)
    finally:
        for fleet in fleets.values():
            fleet.close()


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

def _anchor_rounds(res: dict[str, Any], key: str, fig: Any) -> list[tuple[str, list[float]]]:
    """(label, one figure per round) of every anchor (not shmooze) for the rounds in ``res[key]``."""
    phases = res[key]
    return [(label, [fig(p) for p in phases[k]]) for k, label in res["anchors"][1:] if k in phases]


def _ours(res: dict[str, Any], key: str, fig: Any) -> list[float]:
    return [fig(p) for p in res[key]["shmooze"]]


def _row(sec: Section, res: dict[str, Any], key: str, measure: str, fig: Any, unit: str, **target: Any) -> Row:
    return sec.add(anchored_row(measure, _ours(res, key, fig), unit, _anchor_rounds(res, key, fig), **target))


def arrivals_row(res: dict[str, Any], key: str, label: str) -> Row:
    """Arrivals over all rounds: stamps x watchers, for shmooze (the verdict) and each anchor."""
    def count(k: str) -> tuple[int, int]:
        return sum(p["arrivals"] for p in res[key][k]), sum(p["arrivals_expected"] for p in res[key][k])

    got, expected = count("shmooze")
    anchors = [{"label": lbl, "value": count(k)[0], "rounds": []} for k, lbl in res["anchors"][1:] if k in res[key]]
    text = "; ".join(f"{lbl} {count(k)[0]:,} of {count(k)[1]:,}" for k, lbl in res["anchors"] if k in res[key])
    return Row(f"{label}: arrivals (stamps x watchers, all rounds)", got, "count", anchors[0]["value"] if anchors else None,
               anchors[0]["label"] if anchors else "", compare=text, anchors=anchors,
               verdict="pass" if got == expected else "FAIL")


def latency_rows(sec: Section, res: dict[str, Any], key: str, label: str, **p99_target: Any) -> None:
    """p50, p99, max, arrivals, server CPU and other processes' CPU over the interleaved rounds."""
    _row(sec, res, key, f"{label}: p50", lambda p: p["latency_ms"]["p50"], "ms")
    _row(sec, res, key, f"{label}: p99", lambda p: p["latency_ms"]["p99"], "ms", **p99_target)
    _row(sec, res, key, f"{label}: max", lambda p: p["latency_ms"]["max"], "ms")
    sec.add(arrivals_row(res, key, label))
    _row(sec, res, key, f"{label}: server CPU (share of one core)", lambda p: p["cpu_core_share"]["server"] * 100, "%")
    _row(sec, res, key, f"{label}: reference: other processes on the machine",
         lambda p: p["machine"]["others_cores"], "cores")


def anchors_note(res: dict[str, Any]) -> str:
    names = " / ".join(label for _, label in res["anchors"][1:])
    missing = f" nchan is missing from this run: {res['nchan_missing']}." if res.get("nchan_missing") else ""
    return (f"Anchors, in the order of the floor/peer column and of the ratios: {names}. Each runs in its own "
            "process(es) on this machine and sends the same change message (same size and shape, its own "
            "time.time() as the stamp) to the same kind of watchers, in rounds interleaved with shmooze's; "
            "the plain `websockets` and fan-out floors stamp in the server itself (no hop), nchan's publisher "
            "posts each stamp over HTTP (one hop), shmooze's goes module -> queue service -> gateway (the "
            f"publish row).{missing}")


def build_sections(res: dict[str, Any]) -> list[Section]:
    sections = []
    rounds = res["rounds"]
    if res.get("one"):
        lat = Section(f"Push latency: module set_parameters -> change event at each WebSocket watcher ({rounds} rounds "
                      f"of {res['window_s']:g} s, each server in turn)")
        latency_rows(lat, res, "one", "1 watcher")
        ours = _ours(res, "one", lambda p: p["latency_ms"]["p50"])
        plain = [p["latency_ms"]["p50"] for p in res["one"]["websockets"]]
        lat.add(rounds_row("1 watcher: p50 above the plain websockets broadcast's (one hop allowed)",
                           [a - b for a, b in zip(ours, plain)], "ms", at_most=ONE_HOP_MS))
        lat.add(rounds_row("1 watcher: reference: module -> service publish, p50",
                           _ours(res, "one", lambda p: p["module_to_service_ms"].get("p50", 0.0)), "ms"))
        if res.get("many"):
            n = res["many"]["shmooze"][0]["watchers"]
            latency_rows(lat, res, "many", f"{n:,} watchers", at_most=P99_TARGET_MS)
            mem = res["memory"]
            lat.add(anchored_row(f"{n:,} watchers: memory per watcher (RSS, idle)",
                                 [mem["shmooze"]["per_watcher_kib"]], "KiB",
                                 [(label, [mem[k]["per_watcher_kib"]]) for k, label in res["anchors"][1:]]))
        lat.notes.append(
            "Value: kernel arrival time (SO_TIMESTAMPNS) of the WebSocket frame minus the stamp's time.time() "
            f"when it was sent, one sample per (watcher, stamp); stamps every {res['interval_s'] * 1000:.0f} ms. "
            "Server CPU: the gateway's processes, or the anchor's server (nginx's master and workers). Memory: "
            "the server's RSS with these watchers idle minus its RSS before any watcher of this run, per "
            "watcher (one measurement). 'other processes' is CPU taken by processes that are not this "
            "benchmark's.")
        lat.notes.append(anchors_note(res))
        sections.append(lat)

    if res.get("hog"):
        n = res["hog"]["shmooze"][0]["watchers"]
        sec = Section(f"Push with a CPU hog on one core: {n:,} watchers ({rounds} rounds of {res['window_s']:g} s, "
                      "each server in turn)")
        latency_rows(sec, res, "hog", f"{n:,} watchers, hog", each_at_most=P99_TARGET_MS)
        sec.notes.append(f"A busy loop (`while True: pass`) in a child process pinned to core {res['hog_core']} with "
                         "os.sched_setaffinity ran through every round here, shmooze's and the anchors' alike; "
                         "nothing else is pinned. Same watchers, stamps and anchors as above.")
        sections.append(sec)

    if res.get("big"):
        n = res["big"]["shmooze"][0]["watchers"]
        sec = Section(f"Push to {n} watchers on one gateway host: {len(res['big']['shmooze'])} rounds of "
                      f"{res['big_window_s']:g} s, stamps every {res['big_interval_s'] * 1000:.0f} ms, each server "
                      "in turn")
        latency_rows(sec, res, "big", f"{n:,} watchers", at_most=BIG_P99_TARGET_MS)
        _row(sec, res, "big", f"{n:,} watchers: server CPU per event", lambda p: p["server_cpu_ms_per_event"], "ms")
        _row(sec, res, "big", f"{n:,} watchers: reference: the bench's watcher process (share of one core)",
             lambda p: p["cpu_core_share"]["bench_client"] * 100, "%")
        mem, connect = res["big_memory"], res["big_connect_s"]
        row = sec.add(anchored_row(f"{n:,} watchers: memory per watcher (RSS of the server's processes, idle)",
                                   [mem["shmooze"]["per_watcher_kib"]], "KiB",
                                   [(label, [mem[k]["per_watcher_kib"]]) for k, label in res["anchors"][1:]],
                                   at_most=BIG_KIB_TARGET))
        row.compare += (f"; gateway RSS {mem['shmooze']['fresh_rss'] / 2**20:.0f} MiB fresh, "
                        f"{mem['shmooze']['with_rss'] / 2**20:.0f} MiB with them")
        sec.add(anchored_row(f"{n:,} watchers: reference: connect and subscribe all (one fleet, from nothing)",
                             [connect["shmooze"]], "s", [(label, [connect[k]]) for k, label in res["anchors"][1:]]))
        restart = res.get("restart")
        if restart:
            limit = res["rejoin_limit_s"]

            def back(p: dict[str, Any]) -> float:
                return p["resubscribed_s"] if p["resubscribed_s"] is not None else limit

            _row(sec, res, "restart", f"{n:,} watchers: after a restart, all subscribed again (s from the new "
                 "server's start)", back, "s", at_most=RESUBSCRIBED_TARGET_S)
            _row(sec, res, "restart", f"{n:,} watchers: reference: restart's stop (SIGTERM until the server exited)",
                 lambda p: p["stop_s"], "s")
            unfinished = {k: sum(1 for p in v if p["resubscribed_s"] is None) for k, v in restart.items()}
            if any(unfinished.values()):
                sec.notes.append(f"Restart rounds in which not every watcher was back within {limit:g} s, counted as "
                                 f"{limit:g} s (a lower bound): {unfinished}; watchers back at the end of each: "
                                 f"{ {k: [p['subscribed'] for p in v] for k, v in restart.items()} }.")
        sec.notes.append(
            "Each server's fleet is its own client process (bench/push_fleet.py: bare sockets on one epoll, the same "
            "pre-built handshake for every watcher, up to 400 handshakes in flight, a whole change frame per recv "
            "read without the general parser), every fleet connected throughout. Each server was restarted before "
            "its fleet connected: memory per watcher is its RSS with the watchers idle minus its RSS then (after 8 "
            "watchers came and went), per watcher. CPU per event: the server's CPU time over a window divided by "
            "the stamps that arrived in it. Restart: the server is stopped by its pid "
            "(SIGTERM: what a service manager's restart sends; the gateway's arbiter, nginx's master) and started "
            "again on the same port while its fleet reconnects every watcher it lost (retrying every 50 ms while "
            "refused) and subscribes it again; the figure runs from the new server's start until the last "
            "watcher's subscribe is answered (for the anchors, its handshake).")
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


def sample_message(gateway: Gateway, interval: float) -> str:
    """One change message the gateway sent for a stamp: what every anchor sends, with new values."""
    fleet = gateway.fleet()
    try:
        fleet.connect(1, time.monotonic() + 10)
        sample = gateway.phase(fleet, 1.0, interval)["sample"]
    finally:
        fleet.close()
    if not sample:
        raise RuntimeError("no stamp event reached the watcher")
    return sample


def measure(stack: MiniStack, opts: argparse.Namespace, res: dict[str, Any], n: int, big: int) -> None:
    gateway = Gateway(stack)
    log.info("sample change message, 1 s")
    sample = sample_message(gateway, opts.interval)
    anchors: list[Anchor] = [gateway]
    try:
        anchors.append(StampServer("websockets", "plain websockets broadcast", "push_broadcast_floor", sample))
        anchors.append(StampServer("fanout", "fan-out floor", "push_fanout_floor", sample))
        res["nchan_missing"] = "left out (--no-nchan)" if opts.no_nchan else nchan_available()
        if not res["nchan_missing"]:
            anchors.append(Nchan(sample, opts.workers, max(big, n) + 1000))
        res["anchors"] = [(a.key, a.label) for a in anchors]
        fresh = {a.key: rss_of(a.processes()) for a in anchors}
        fleets: dict[str, Fleet | RemoteFleet] = {}
        try:
            for a in anchors:
                fleet = fleets[a.key] = a.fleet()
                fleet.connect(1, time.monotonic() + 10)
            res["one"] = interleaved(anchors, fleets, opts.rounds, res["window_s"], opts.interval, "1 watcher")
        finally:
            for fleet in fleets.values():
                fleet.close()
        middle_rows(anchors, res, fresh, n, opts.rounds, res["window_s"], opts.interval, not opts.no_hog)
        if big:
            big_rows(anchors, res, big, opts.big_rounds, res["big_window_s"], opts.big_interval, opts.rejoin_limit)
    finally:
        for a in anchors[1:]:
            a.close()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    setup_logging()
    n = opts.watchers or (200 if opts.quick else 1000)
    idle = opts.idle or (5.0 if opts.quick else 10.0)
    budget = opts.budget or (480 if opts.quick else 1500)
    big = opts.big if opts.big >= 0 else (1000 if opts.quick else 10000)
    nofile = raise_nofile(max(20000, 4 * n + 1000, big + 1000))
    if nofile < max(4 * n, big) + 200:  # (each fleet of --big watchers is a process of its own)
        log.error("RLIMIT_NOFILE %d is too low for %d watchers of each of four servers here, or for a fleet of %d",
                  nofile, n, big)
        return 2
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(budget)
    started = time.time()
    t0 = time.monotonic()
    res: dict[str, Any] = {"quick": opts.quick, "interval_s": opts.interval,
                           "window_s": opts.seconds or (2.0 if opts.quick else 4.0),
                           "gateway_workers": opts.workers, "rounds": opts.rounds,
                           "big_window_s": opts.big_seconds or (2.0 if opts.quick else 4.0),
                           "big_interval_s": opts.big_interval, "rejoin_limit_s": opts.rejoin_limit}
    try:
        services = {"queue": "bench.push_apps:make_queue", "pool": "jukebox.app:make_pool",
                    "volume": "jukebox.volume:Volume"}
        extra = {"static_path": JUKEBOX_STATIC, "public": ["ports", "wsgi_prefix", "app_name"],
                 "app_name": "shmooze jukebox (push bench)", "gateway_workers": opts.workers,
                 "gateway_connections": max(4000, n + 500, big + 500)}
        with MiniStack(services, "shmooze-push-", extra) as stack:
            measure(stack, opts, res, n, big)
            if not opts.no_browser:
                log.info("idle page in Chromium, %g s", idle)
                res["page"] = idle_page(stack, idle, polling_reference=not opts.quick)
            res["gateway_log_warnings"] = [line for line in stack.log_tail("wsgi", 20000).splitlines()
                                           if " WARNING " in line or " ERROR " in line][-10:]
    finally:
        signal.alarm(0)
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
