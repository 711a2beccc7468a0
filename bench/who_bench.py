"""What naming the caller and the rate limits cost on the gateway's hop.

Usage: ``.venv/bin/python -m bench.who_bench [--quick]``

One ``shmooze serve volume`` (the loop worker, as deployed) behind two real gateways (``shmooze serve
wsgi``, one worker each, the fast lane) on the same service, differing only in the rate limit:

- ``limited``: every command that changes state is parsed and counted against the client's bucket
  (``rate_limit_exempt`` empty; a rate no client reaches, so nothing is refused);
- ``unlimited``: ``rate_limit`` 0, the limiter off (the caller is named all the same).

A client (``http.client``, one kept-alive connection to each gateway) sends writes (``set_volume``) and
reads (``get_volume``) one after another. Then, in this process, the parts on their own: the
gateway's naming and counting of one client's command (:meth:`shmooze.gateway.clients.Clients.admit`)
with and without the limiter, and a signature and its check with a ``Shmooze-Caller`` and without.

Rounds interleaved (the order alternating), median with min-max, nothing discarded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench.common import (
    HOST,
    JSON_HEADERS,
    PYTHON,
    Proc,
    Section,
    child_env,
    encode_command,
    free_port,
    markdown,
    per_request_us,
    rounds_row,
    save_sections,
)

GET_VOLUME = encode_command("get_volume")


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            got[name].append(variants[name]())
    return got


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 rounds of fewer requests")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rounds, n = (3, 1000) if opts.quick else (5, 3000)

    folder = Path(tempfile.mkdtemp(prefix="shmooze-whobench-"))
    volume = free_port()
    base = {"services": {"volume": "jukebox.volume:Volume"}, "service_key_path": str(folder / "service.key"),
            "log_level": "warning", "gateway_workers": 1}
    gateways = {"limited": {"rate_limit": 1e9, "rate_limit_burst": 1_000_000_000, "rate_limit_exempt": []},
                "unlimited": {"rate_limit": 0}}
    ports = {name: free_port() for name in gateways}
    env = child_env()
    procs = []
    for name, extra in gateways.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps({"ports": {"wsgi": ports[name], "volume": volume}, **base, **extra}))
        procs.append((Proc(name, [PYTHON, "-m", "shmooze", "serve", "wsgi", "--settings", str(path)], env,
                           folder / f"{name}.log"), ports[name]))
    procs.insert(0, (Proc("volume", [PYTHON, "-m", "shmooze", "serve", "volume", "--settings",
                                     str(folder / "limited.json")], env, folder / "volume.log"), volume))
    try:
        for proc, port in procs:
            proc.wait_port(port, 60)
        conns = {name: http.client.HTTPConnection(HOST, port, timeout=30) for name, port in ports.items()}
        level = [0]

        def write(name: str) -> Callable[[], float]:
            conn = conns[name]

            def call() -> None:
                level[0] = (level[0] + 1) % 100
                conn.request("POST", "/volume", encode_command("set_volume", level=level[0]), JSON_HEADERS)
                _ok(conn.getresponse())
            return lambda: per_request_us(call, n)

        def read(name: str) -> Callable[[], float]:
            conn = conns[name]

            def call() -> None:
                conn.request("POST", "/volume", GET_VOLUME, JSON_HEADERS)
                _ok(conn.getresponse())
            return lambda: per_request_us(call, n)

        hop = interleaved({"write_limited": write("limited"), "write_unlimited": write("unlimited"),
                           "read_limited": read("limited"), "read_unlimited": read("unlimited")}, rounds)
        for conn in conns.values():
            conn.close()
    finally:
        for proc, _ in procs:
            proc.stop()
    parts = interleaved(_parts(), rounds)
    sec = Section(f"Naming the caller and rate limits on the gateway's hop (one gateway worker, one kept-alive "
                  f"connection, {n} requests a round, {rounds} rounds interleaved, the order alternating)")
    sec.add(rounds_row("write through the gateway, rate limited (counted), per request", hop["write_limited"], "us",
                       hop["write_unlimited"], "the same write, limiter off"))
    sec.add(rounds_row("read through the gateway, rate limits on (reads are not counted), per request",
                       hop["read_limited"], "us", hop["read_unlimited"], "the same read, limiter off"))
    sec.add(rounds_row("the gateway's naming and counting of one write, CPU (in-process)", parts["admit_limited"],
                       "us", parts["admit_unlimited"], "naming only (limiter off)"))
    sec.add(rounds_row("sign + check a request with a Shmooze-Caller, CPU (in-process)", parts["sign_caller"], "us",
                       parts["sign_plain"], "the same without a caller"))
    sys.stdout.write(markdown(sec) + "\n")
    save_sections("who", [sec], opts.quick, hop=hop, parts=parts)
    return 0


def _parts(n: int = 20000) -> dict[str, Callable[[], float]]:
    """The gateway's and the MAC's CPU per command, each step in this process."""
    from shmooze import protocol, servicekey
    from shmooze.gateway.clients import Clients
    from shmooze.gateway.ratelimit import RateLimiter

    body = encode_command("set_volume", level=5)
    writes = lambda: protocol.parse_request(body) is not None  # noqa: E731 - what the gateway asks: parse the body
    limited = Clients([], RateLimiter(1e9, 1_000_000_000), [])
    unlimited = Clients([], None, [])
    key = b"k" * 32
    signer, verifier = servicekey.Signer(key), servicekey.Verifier(key)
    sender = limited.admit(None, "192.0.2.7", writes)

    def cpu(step: Callable[[], object]) -> Callable[[], float]:
        def measure() -> float:
            started = time.process_time()
            for _ in range(n):
                step()
            return (time.process_time() - started) / n * 1e6
        return measure

    def sign(caller: bytes) -> Callable[[], object]:
        value = caller.decode()

        def step() -> object:
            auth, _ = signer.sign(body, "/", caller)
            return verifier.check(auth, "/", body, value)
        return step

    return {"admit_limited": cpu(lambda: limited.admit(None, "192.0.2.7", writes)),
            "admit_unlimited": cpu(lambda: unlimited.admit(None, "192.0.2.7", writes)),
            "sign_caller": cpu(sign(sender)), "sign_plain": cpu(sign(b""))}


def _ok(resp: http.client.HTTPResponse) -> None:
    body = resp.read()
    if resp.status != 200 or (b'"success": true' not in body and b'"success":true' not in body):
        raise RuntimeError(f"the gateway answered {resp.status} {body[:200]!r}")


if __name__ == "__main__":
    sys.exit(main())
