"""A. HTTP: command round trips to a service, directly and through the gateway, beside a bare-WSGI floor."""

from __future__ import annotations

import http.client
import logging
import time
from dataclasses import dataclass

from bench import loadgen
from bench.common import (
    HOST,
    JSON_HEADERS,
    Client,
    ForeignMeter,
    Section,
    child_env,
    cpu_seconds,
    encode_command,
    noise_note,
    percentile,
    rounds_row,
)
from bench.stack import Stack

log = logging.getLogger("bench.http")

GET_VOLUME = encode_command("get_volume")


@dataclass(frozen=True)
class Target:
    """Where one kind of request goes."""

    label: str
    port: int
    path: str
    servers: tuple[str, ...]  # processes that do the work (for server CPU per request)


def targets(stack: Stack) -> dict[str, Target]:
    p = stack.ports
    return {
        "floor": Target("bare WSGI floor", p["floor"], "/", ("floor",)),
        "floor_gevent": Target("bare WSGI floor, gevent", stack.gevent_floor_port, "/", ("floor_gevent",)),
        "direct": Target("volume direct", p["volume"], "/", ("volume",)),
        "gateway": Target("gateway -> volume", p["wsgi"], "/volume", ("wsgi", "volume")),
        "gw_floor": Target("gateway -> floor", p["wsgi"], "/floor", ("wsgi", "floor")),
        "relay": Target("relay floor -> floor", stack.relay_port, "/", ("relay", "floor")),
    }


def one_connection(stack: Stack, n: int, warmup: int) -> dict[str, list[float]]:
    """Sequential requests on one kept-alive connection per target, interleaved; latencies in ms."""
    tg = {k: t for k, t in targets(stack).items() if k != "relay"}  # (the relay's floor is for A2's CPU)
    clients = {k: Client(t.port, t.path) for k, t in tg.items()}
    times: dict[str, list[float]] = {k: [] for k in tg}
    try:
        for _ in range(warmup):
            for c in clients.values():
                c.raw(GET_VOLUME)
        clock = time.perf_counter
        for _ in range(n):
            for k, c in clients.items():
                t0 = clock()
                c.raw(GET_VOLUME)
                times[k].append((clock() - t0) * 1000.0)
    finally:
        for c in clients.values():
            c.close()
    return times


def one_connection_section(stack: Stack, n: int, warmup: int, rounds: int = 3) -> Section:
    times = one_connection(stack, n, warmup)
    size = n // rounds
    cut = {k: [v[i * size:(i + 1) * size] for i in range(rounds)] for k, v in times.items()}

    def q(k: str, p: float) -> list[float]:
        return [percentile(part, p) for part in cut[k]]

    sec = Section(f"A1. HTTP round trip, one kept-alive connection ({rounds} rounds of {size} sequential "
                  f"get_volume per target, one request to each target in turn, after {warmup} warm-up)")
    for p, name in ((.5, "p50"), (.99, "p99")):
        sec.add(rounds_row(f"direct to a service, {name}", q("direct", p), "ms", q("floor", p), "bare WSGI floor"))
    for p, name in ((.5, "p50"), (.99, "p99")):
        sec.add(rounds_row(f"through the gateway, {name}", q("gateway", p), "ms", q("floor", p), "bare WSGI floor"))
    hop = [g - d for g, d in zip(q("gateway", .5), q("direct", .5))]
    sec.add(rounds_row("gateway hop: gateway p50 minus direct p50", hop, "ms", at_most=0.5))
    sec.add(rounds_row("gateway -> bare WSGI floor, p50", q("gw_floor", .5), "ms", q("floor", .5), "bare WSGI floor"))
    sec.add(rounds_row("reference: floor under the gateway's settings (gevent), p50", q("floor_gevent", .5), "ms",
                       q("floor", .5), "bare WSGI floor"))
    sec.notes.append("The floor is floorapp.py under gunicorn gthread, 1 worker, 32 threads (a service's "
                     "settings); the gevent floor is the same app under 2 gevent workers (the gateway's).")
    return sec


@dataclass
class LoadRun:
    """One load run against one target."""

    result: loadgen.LoadResult
    cpu_per_request_ms: float  # all the serving processes together
    cpu_by_server_ms: dict[str, float]  # each of them (gunicorn master and workers)
    other_cores: float  # CPU that processes outside the benchmark used meanwhile

    @property
    def rps(self) -> float:
        return self.result.rps


def throughput(stack: Stack, target: Target, procs: int, conns: int, duration: float) -> LoadRun:
    """Requests/s at ``procs * conns`` connections, the servers' CPU ms per request, and the machine's noise."""
    pids = {name: stack.server_pids(name) for name in target.servers}
    cpu0 = {name: cpu_seconds(p) for name, p in pids.items()}
    meter = ForeignMeter()
    result = loadgen.run(target.port, target.path, GET_VOLUME, procs, conns, duration, env=child_env())
    other = meter.cores()
    # The servers' CPU over the whole run includes the workers' few warm-up requests: ignored.
    by_server = {name: (cpu_seconds(p) - cpu0[name]) * 1000.0 / max(result.count, 1) for name, p in pids.items()}
    run = LoadRun(result, sum(by_server.values()), by_server, other)
    log.info("%s: %.0f req/s, %d errors, load generator %.2f cores, servers %.3f ms CPU/req, "
             "other processes %.2f cores", target.label, result.rps, result.errors, result.loadgen_cores,
             run.cpu_per_request_ms, other)
    if result.errors:
        raise RuntimeError(f"{target.label}: {result.errors} failed requests under load")
    return run


def throughput_section(stack: Stack, procs: int, conns: int, duration: float, rounds: int) -> Section:
    """Each target in turn, ``rounds`` times (floor, direct, gateway, ... then again); every round is kept."""
    tg = targets(stack)
    runs: dict[str, list[LoadRun]] = {k: [] for k in tg}
    for _ in range(rounds):
        for k, t in tg.items():
            runs[k].append(throughput(stack, t, procs, conns, duration))
    rps = {k: [r.rps for r in v] for k, v in runs.items()}
    cpu = {k: [r.cpu_per_request_ms for r in v] for k, v in runs.items()}

    def detail(k: str) -> dict[str, object]:
        return {"rounds_other_cores": [round(r.other_cores, 2) for r in runs[k]],
                "rounds_loadgen_cores": [round(r.result.loadgen_cores, 2) for r in runs[k]]}

    sec = Section(f"A2. HTTP throughput, {procs * conns} kept-alive connections ({procs} load processes x "
                  f"{conns}), {rounds} rounds of {duration:g} s per target, targets in turn in every round")
    sec.add(rounds_row("direct to a service", rps["direct"], "req/s", rps["floor"], "bare WSGI floor",
                       **detail("direct")))
    sec.add(rounds_row("through the gateway", rps["gateway"], "req/s", rps["floor"], "bare WSGI floor",
                       **detail("gateway")))
    sec.add(rounds_row("through the gateway vs direct", rps["gateway"], "req/s", rps["direct"], "direct",
                       min_ratio=0.7))
    sec.add(rounds_row("gateway -> bare WSGI floor", rps["gw_floor"], "req/s", rps["floor"], "bare WSGI floor",
                       **detail("gw_floor")))
    sec.add(rounds_row("server CPU per request, direct", cpu["direct"], "ms", cpu["floor"], "bare WSGI floor"))
    sec.add(rounds_row("server CPU per request, gateway + service", cpu["gateway"], "ms", cpu["floor"],
                       "bare WSGI floor"))
    gw_only = [r.cpu_by_server_ms["wsgi"] for r in runs["gw_floor"]]
    sec.add(rounds_row("gateway hop: gateway workers' CPU per request forwarded to the floor", gw_only, "ms",
                       cpu["floor_gevent"], "gevent floor's CPU per request"))
    relay_only = [r.cpu_by_server_ms["relay"] for r in runs["relay"]]
    sec.add(rounds_row("gateway hop: gateway workers' CPU per request forwarded to the floor, against a relay",
                       gw_only, "ms", relay_only, "minimal gevent relay's CPU per request", max_ratio=1.5))
    sec.add(rounds_row("reference: floor under the gateway's settings (gevent)", rps["floor_gevent"], "req/s",
                       rps["floor"], "bare WSGI floor", **detail("floor_gevent")))
    sec.add(rounds_row("reference: load generator CPU", [r.result.loadgen_cores for v in runs.values() for r in v],
                       "cores"))
    sec.add(rounds_row("reference: other processes' CPU during a round", [r.other_cores for v in runs.values()
                                                                           for r in v], "cores"))
    sec.notes.append("The relay floor (relay_floor.py) copies bytes between each client connection and one of "
                     "its own to the floor, understanding nothing of HTTP, in as many gevent processes as the "
                     "gateway has workers: the least any forwarder spends.")
    sec.notes.append("No round is discarded. Server CPU per request is the user+system CPU of the serving "
                     "processes (gunicorn masters and workers) during the run divided by the requests completed; "
                     "2 cores in all.")
    return sec


# -- the forwarding client -------------------------------------------------------------------

def _http_client(port: int) -> tuple[str, object]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)

    def hop() -> None:
        conn.request("POST", "/", GET_VOLUME, JSON_HEADERS)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"http.client hop answered {resp.status}")

    return "http.client keep-alive", (hop, conn.close)


def _service_proxy(port: int) -> tuple[str, object]:
    from shmooze.http.forward import ServiceProxy

    proxy = ServiceProxy("floor", HOST, port)

    def hop() -> None:
        if proxy.post(GET_VOLUME).status != 200:
            raise RuntimeError("ServiceProxy hop failed")

    return "shmooze ServiceProxy (kept-alive sockets)", (hop, proxy.close)


def _urllib3(port: int) -> tuple[str, object]:
    import urllib3

    pm = urllib3.PoolManager(maxsize=4)
    url = f"http://{HOST}:{port}/"

    def hop() -> None:
        resp = pm.request("POST", url, body=GET_VOLUME, headers=JSON_HEADERS, retries=False)
        if resp.status != 200:
            raise RuntimeError(f"urllib3 hop answered {resp.status}")

    return "urllib3.PoolManager", (hop, pm.clear)


def _requests(port: int) -> tuple[str, object]:
    import requests

    session = requests.Session()
    url = f"http://{HOST}:{port}/"

    def hop() -> None:
        resp = session.post(url, data=GET_VOLUME, headers=JSON_HEADERS)
        if resp.status_code != 200:
            raise RuntimeError(f"requests hop answered {resp.status_code}")

    return "requests.Session", (hop, session.close)


def _gateway_app(port: int) -> tuple[str, object]:
    """The gateway's WSGI app called in this process (werkzeug request/response plus the ServiceProxy hop)."""
    import io

    from shmooze.gateway.app import Gateway
    from shmooze.settings import Settings

    gateway = Gateway(Settings({"ports": {"wsgi": 1, "floor": port}}))
    base = {"REQUEST_METHOD": "POST", "PATH_INFO": "/floor", "SCRIPT_NAME": "", "QUERY_STRING": "",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(GET_VOLUME)), "SERVER_NAME": HOST,
            "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "HTTP_HOST": HOST}
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        statuses.append(status)

    def hop() -> None:
        environ = dict(base, **{"wsgi.input": io.BytesIO(GET_VOLUME)})
        b"".join(gateway(environ, start_response))
        if not statuses.pop().startswith("200"):
            raise RuntimeError("the gateway app did not answer 200")

    def close() -> None:
        for proxy in gateway.proxies.values():
            proxy.close()

    return "gateway WSGI app in-process (werkzeug + ServiceProxy)", (hop, close)


def forwarding_section(stack: Stack, n: int, warmup: int, rounds: int = 5) -> Section:
    """CPU time per hop to the floor server for each HTTP client library, interleaved in rounds."""
    port = stack.ports["floor"]
    makers = [_http_client, _service_proxy, _gateway_app, _urllib3, _requests]
    clients = [m(port) for m in makers]
    cpu: dict[str, list[float]] = {label: [] for label, _ in clients}
    try:
        for _, (hop, _close) in clients:
            for _ in range(warmup):
                hop()
        per_round = max(n // rounds, 1)
        for _ in range(rounds):
            for label, (hop, _close) in clients:
                c0 = time.process_time()
                for _ in range(per_round):
                    hop()
                cpu[label].append((time.process_time() - c0) * 1000.0 / per_round)
    finally:
        for _, (_hop, close) in clients:
            close()
    base_label = clients[0][0]
    sec = Section(f"A3. Forwarding client: client-side CPU per hop to the floor server ({rounds} rounds of "
                  f"{per_round} hops each, clients in turn, time.process_time)")
    for label, _ in clients[1:]:
        sec.add(rounds_row(label, cpu[label], "ms", cpu[base_label], base_label))
    sec.notes.append("The gateway forwards with shmooze.http.forward.ServiceProxy: a pool of kept-alive "
                     "sockets, one sendall per request, the answer read by its Content-Length; the "
                     "in-process gateway row is its whole WSGI app without gunicorn and gevent.")
    return sec


def run(stack: Stack, quick: bool) -> list[Section]:
    """Every HTTP benchmark; fewer requests and shorter windows with ``quick``."""
    n, warmup = (600, 100) if quick else (1500, 200)
    duration, rounds = (1.0, 3) if quick else (3.0, 3)
    hops = 1000 if quick else 1500
    sections = []
    log.info("A1: one connection, %d requests per target", n)
    meter = ForeignMeter()
    sections.append(one_connection_section(stack, n, warmup))
    noise_note(sections[-1], meter)
    log.info("A2: throughput, %d x %g s per target", rounds, duration)
    meter = ForeignMeter()
    sections.append(throughput_section(stack, 4, 4, duration, rounds))
    noise_note(sections[-1], meter)
    log.info("A3: forwarding clients, %d hops each", hops)
    meter = ForeignMeter()
    sections.append(forwarding_section(stack, hops, 100, 3))
    noise_note(sections[-1], meter)
    return sections
