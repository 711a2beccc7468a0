"""Past one machine, measured: push to many watchers over 2 gateways behind HAProxy against one
gateway, and command latency through HAProxy + gateway against the gateway alone.

Usage (root: it makes network namespaces): ``.venv/bin/python -m bench.multihost_bench [--quick]
[--watchers N] [--rounds R] [--window S]``

Simulated hosts (one network namespace each, shmooze/testing/netns.py): a service host running the queue
(with the push benchmark's ``stamp`` module, bench/push_stamp_module.py, setting ``{"seq", "sent"}``
every second), two gateway hosts (``shmooze serve wsgi``), a load-balancer host (Debian's HAProxy,
round robin over both gateways) and a client host, where this process does its measuring (it
moves itself there with ``setns``). Each round, the two targets are measured one after the other,
in alternating order:

* **push**: N WebSocket watchers (bare sockets on one epoll, bench/push_wire.py) subscribe to the
  queue, through the load balancer (spread over both gateways) or straight at one gateway; latency
  is the kernel's arrival time of each stamp minus its ``sent`` time (p50, p99 over every
  (watcher, stamp)); memory per watcher is the gateways' workers' RSS with the watchers minus
  before, over N, on gateways started afresh for each measure (HAProxy's own RSS is shown beside it);
* **commands**: ``status`` to the queue over one kept-alive connection, through HAProxy + gateway
  and through the gateway alone, alternating request by request.

Rows give the median over rounds with min-max; nothing is discarded. Writes
bench/multihost_results.json. Every process started is ended by its pid; the namespaces are deleted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import child_env, setup_logging
from bench.push_wire import Fleet, StampLog
from shmooze.testing import netns

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

log = logging.getLogger("bench.multihost")
HOSTS = {"lb": 10, "gw1": 11, "gw2": 12, "svc": 21, "client": 30}
PORT, QUEUE_PORT = 8080, 8081
TOKEN = "multihost-bench-token"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 watchers, 3 rounds, 3 s windows")
    p.add_argument("--watchers", type=int, default=None, help="watchers per target (default 10,000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=float, default=None, help="seconds of stamps per push measure (default 5)")
    p.add_argument("--commands", type=int, default=300, help="status commands per target per round")
    p.add_argument("--interval", type=float, default=None,
                   help="seconds between stamps (default 1: on a shared 2-core machine, N watchers x 4 stamps/s "
                        "saturates it, and the latency measured is then the queue's length)")
    args = p.parse_args()
    args.watchers = args.watchers or (2000 if args.quick else 10000)
    args.window = args.window or (3.0 if args.quick else 5.0)
    args.interval = args.interval or 1.0
    return args


class Cluster:
    """The simulated hosts and what runs on them; :meth:`close` ends it all by pid."""

    def __init__(self, tmp: Path, watchers: int):
        self.tmp = tmp
        self.hosts = netns.Hosts(HOSTS)
        self.addr = self.hosts.addresses
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.watchers = watchers

    def settings(self, host: str) -> Path:
        """The same settings for every host but its run folder (the hosts share this filesystem)."""
        path = self.tmp / f"{host}.json"
        path.write_text(json.dumps({
            "ports": {"wsgi": PORT, "queue": QUEUE_PORT}, "hosts": {"queue": self.addr["svc"]},
            "host": "0.0.0.0", "access_token": TOKEN, "service_key": TOKEN + "-services", "connect_timeout": 2, "journal": False,
            "services": {"queue": "bench.push_apps:make_queue"}, "public": ["ports"],
            # One gateway must hold every watcher on its own (the one-gateway target).
            "gateway_workers": 2, "gateway_connections": self.watchers // 2 + 2000,
            "run_path": str(self.tmp / f"run-{host}"), "log_level": "warning",
            # The fleet answers pings only between measures: idle watchers must not be closed meanwhile.
            "ws_ping_interval": 600, "ws_idle_timeout": 1800,
        }))
        return path

    def start(self) -> None:
        self.hosts.create()
        for host, name in (("svc", "queue"), ("gw1", "wsgi"), ("gw2", "wsgi")):
            self.serve(host, name)
        conf = self.tmp / "haproxy.cfg"
        conf.write_text(f"""global
    maxconn {self.watchers + 500}
    stats socket {self.tmp / 'haproxy.sock'}
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout check 5s
    retries 3
    option redispatch
frontend shmooze
    bind {self.addr['lb']}:{PORT}
    maxconn {self.watchers + 500}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk
    http-check send meth GET uri /healthz
    http-check expect status 200
    default-server check inter 2s fall 2 rise 1
    server gw1 {self.addr['gw1']}:{PORT}
    server gw2 {self.addr['gw2']}:{PORT}
""")
        self.procs["lb"] = subprocess.Popen(self.hosts.argv("lb", [shutil.which("haproxy") or "haproxy", "-db", "-f",
                                                                   str(conf)]),
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=open(self.tmp / "lb.log", "wb"), start_new_session=True)

    def serve(self, host: str, name: str) -> None:
        argv = self.hosts.argv(host, [sys.executable, "-m", "shmooze", "serve", name, "--settings",
                                      str(self.settings(host))])
        with open(self.tmp / f"{host}.log", "ab") as err:
            self.procs[host] = subprocess.Popen(argv, env=child_env(), stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

    def fresh_gateways(self, deadline: float) -> None:
        """Start both gateways afresh (so each memory figure starts from an empty gateway) and wait
        until HAProxy's checks see both up."""
        for host in ("gw1", "gw2"):
            proc = self.procs[host]
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(30)
            self.serve(host, "wsgi")
        for host in ("gw1", "gw2"):
            wait_up(self.addr[host], deadline)
        while sorted(self.haproxy_up()) != ["gw1", "gw2"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"HAProxy sees only {self.haproxy_up()} up")
            time.sleep(0.2)

    def haproxy_up(self) -> list[str]:
        """The gateways HAProxy's health checks say are UP (its stats socket, CSV)."""
        import socket

        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.tmp / "haproxy.sock"))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = [line.split(",") for line in data.decode().splitlines() if line.startswith("gateways,")]
        return [row[1] for row in rows if row[1] in ("gw1", "gw2") and row[17] == "UP"]

    def gateway_pids(self, hosts: list[str]) -> list[int]:
        pids = []
        for host in hosts:
            try:
                pids += [p.pid for p in psutil.Process(self.procs[host].pid).children()]
            except psutil.NoSuchProcess:
                pass
        return pids

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for host, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop: killing its group", host)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.hosts.remove()


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def post(conn: http.client.HTTPConnection, path: str, body: dict[str, Any]) -> dict[str, Any]:
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                   "Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{path}: HTTP {resp.status}: {data[:200]!r}")
    return json.loads(data)


def wait_up(host: str, deadline: float) -> None:
    while True:
        try:
            conn = http.client.HTTPConnection(host, PORT, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host} did not become healthy")
        time.sleep(0.2)


def push_measure(cluster: Cluster, host: str, gateways: list[str], n: int, window: float) -> dict[str, Any]:
    cluster.fresh_gateways(time.monotonic() + 120)
    pids = cluster.gateway_pids(gateways)
    before = rss(pids)
    lb_before = rss([cluster.procs["lb"].pid]) if len(gateways) > 1 else 0
    fleet = Fleet(PORT, host=host)
    try:
        started = time.monotonic()
        fleet.connect(n, time.monotonic() + 300)
        mid = fleet.send_all({"subscribe": {"queue": None}})
        subscribed = fleet.wait_answers(mid, time.monotonic() + 120)
        connect_s = time.monotonic() - started
        fleet.run(1.0, lambda *a: None)  # let every watcher settle
        after = rss(pids)
        lb_after = rss([cluster.procs["lb"].pid]) if len(gateways) > 1 else 0
        start = time.time() + 0.2
        stamps = StampLog(start, start + window, n)
        fleet.run(window + 1.5, stamps.on_text)
        lat = sorted(stamps.kernel)
        complete = sum(1 for c in stamps.per_watcher if c == len(stamps.seqs))
        return {"watchers": n, "subscribed": subscribed, "connect_s": connect_s, "closed": fleet.closed_by_server,
                "p50_ms": lat[len(lat) // 2] if lat else None, "p99_ms": lat[int(len(lat) * 0.99)] if lat else None,
                "arrivals": len(lat), "stamps": len(stamps.seqs), "complete": complete,
                "bytes_per_watcher": (after - before) / n, "lb_bytes_per_watcher": (lb_after - lb_before) / n}
    finally:
        fleet.close()


def command_measure(cluster: Cluster, count: int) -> dict[str, float]:
    """Median ms of ``status`` to the queue via HAProxy + gateway and via the gateway alone, alternating."""
    deadline = time.monotonic() + 60
    while sorted(cluster.haproxy_up()) != ["gw1", "gw2"]:  # after a push measure the checks may lag
        if time.monotonic() > deadline:
            raise TimeoutError(f"HAProxy sees only {cluster.haproxy_up()} up")
        time.sleep(0.2)
    via = {"lb": http.client.HTTPConnection(cluster.addr["lb"], PORT, timeout=10),
           "gw": http.client.HTTPConnection(cluster.addr["gw1"], PORT, timeout=10)}
    times: dict[str, list[float]] = {"lb": [], "gw": []}
    try:
        for key in via:  # warm: connections open, kept alive
            post(via[key], "/queue", {"cmd": "status"})
        for i in range(count * 2):
            key = ("lb", "gw")[i % 2]
            t0 = time.perf_counter()
            post(via[key], "/queue", {"cmd": "status"})
            times[key].append((time.perf_counter() - t0) * 1000)
    finally:
        for conn in via.values():
            conn.close()
    return {key: statistics.median(values) for key, values in times.items()}


def summary(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    args = parse_args()
    setup_logging()
    why = netns.why_not() or (None if shutil.which("haproxy") else "no haproxy (scripts/dev.py test installs it)")
    if why:
        print(f"multihost benchmark skipped: {why}")
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # HAProxy holds two descriptors per watcher (browser side, gateway side), under the same hard
    # limit (a container may not raise it): fewer watchers where it is too low, said in the output.
    if hard != resource.RLIM_INFINITY and hard < args.watchers * 2 + 1500:
        capped = (hard - 1500) // 2
        log.warning("RLIMIT_NOFILE hard limit %d: %d watchers instead of %d", hard, capped, args.watchers)
        args.capped_from = args.watchers
        args.watchers = capped
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the gateways and HAProxy
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="shmooze-multihost-"))
    cluster = Cluster(tmp, args.watchers)
    rounds: list[dict[str, Any]] = []
    try:
        cluster.start()
        netns.enter(cluster.hosts.ns("client"))
        deadline = time.monotonic() + 120
        for host in ("gw1", "gw2", "lb"):
            wait_up(cluster.addr[host], deadline)
        cluster.haproxy_up()  # the stats socket answers
        control = http.client.HTTPConnection(cluster.addr["gw1"], PORT, timeout=30)
        answer = post(control, "/queue", {"cmd": "add", "args": {"type": "stamp", "args": {"interval": args.interval}}})
        if not answer.get("success"):
            raise RuntimeError(f"cannot add the stamp module: {answer}")
        targets = [("2 gateways behind HAProxy", cluster.addr["lb"], ["gw1", "gw2"]),
                   ("1 gateway", cluster.addr["gw1"], ["gw1"])]
        for r in range(args.rounds):
            result: dict[str, Any] = {}
            for label, host, gateways in (targets if r % 2 == 0 else targets[::-1]):
                log.info("round %d: %s, %d watchers", r + 1, label, args.watchers)
                result[label] = push_measure(cluster, host, gateways, args.watchers, args.window)
            result["commands"] = command_measure(cluster, args.commands)
            log.info("round %d: %s", r + 1, json.dumps(result))
            rounds.append(result)
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [f"## Past one machine: {args.watchers:,} watchers, a stamp every {args.interval * 1000:.0f} ms, "
             f"{args.rounds} rounds "
             f"({platform.machine()}, {os.cpu_count()} cores, shared)", "",
             "| measure | 2 gateways behind HAProxy | 1 gateway (floor) | ratio |", "|---|---|---|---|"]
    two, one = "2 gateways behind HAProxy", "1 gateway"
    for key, name in (("p50_ms", "push latency p50 (ms)"), ("p99_ms", "push latency p99 (ms)"),
                      ("bytes_per_watcher", "gateway RSS per watcher (bytes)"), ("connect_s", "connect + subscribe (s)")):
        a = [r[two][key] for r in rounds]
        b = [r[one][key] for r in rounds]
        ratio = statistics.median(a) / statistics.median(b) if all(v for v in a + b) else float("nan")
        lines.append(f"| {name} | {summary(a)} | {summary(b)} | {ratio:.2f} |")
    lb = [r[two]["lb_bytes_per_watcher"] for r in rounds]
    lines.append(f"| HAProxy RSS per watcher (bytes) | {summary(lb)} | - | - |")
    a = [r["commands"]["lb"] for r in rounds]
    b = [r["commands"]["gw"] for r in rounds]
    lines.append(f"| `status` command latency (ms) | {summary(a)} | {summary(b)} | "
                 f"{statistics.median(a) / statistics.median(b):.2f} |")
    complete = [(r[t]["complete"], r[t]["watchers"], r[t]["closed"]) for r in rounds for t in (two, one)]
    lines += ["", "Median over rounds (min-max). Every watcher got every stamp in "
              f"{sum(1 for c, n, _ in complete if c == n)}/{len(complete)} measures; watchers closed by a server: "
              f"{sum(c for _, _, c in complete)}. The command row's floor is the same gateway without HAProxy."]
    if getattr(args, "capped_from", None):
        lines.append(f"{args.watchers:,} watchers, not {args.capped_from:,}: the hard limit on open files here "
                     "(HAProxy holds two per watcher).")
    print("\n".join(lines))
    (HERE / "multihost_results.json").write_text(json.dumps({"args": vars(args), "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
