"""What the client policy and a signed-in session cost on the gateway's hop, and what a sign-in costs.

Usage: ``.venv/bin/python -m bench.users_bench [--quick]``

One ``shmooze serve volume`` behind two gateways (``shmooze serve wsgi``, the fast lane as deployed),
both with the same service key:

- ``open``: no ``users``, no ``access_token``: the policy is open to all and not even parsed (the hop
  today, the floor);
- ``policy``: ``users`` and ``command_access`` (``set_volume`` needs a signed-in user); the client
  sends the session cookie with every request, so the gateway checks the cookie (signature, age,
  signed-out ids, password fingerprint) and the policy on each command.

The client is ``http.client``, one kept-alive connection per gateway, requests one after another: a
read (``get_volume``) and a write (``set_volume``) through each. Rounds interleaved (the order
alternating), median with min-max, nothing discarded. Also in process: the CPU of the caller check
and the policy per command (what the hop adds), and of one argon2 verify (a sign-in), beside a
whole ``POST _session`` through the gateway.
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

PASSWORD = "a bench user's passphrase"
GET_VOLUME = encode_command("get_volume")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 rounds of fewer requests")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rounds, n = (3, 1000) if opts.quick else (5, 3000)
    from shmooze import servicekey
    from shmooze.gateway.users import hash_password

    folder = Path(tempfile.mkdtemp(prefix="shmooze-usersbench-"))
    ports = {"volume": free_port(), "open": free_port(), "policy": free_port()}
    common = {"services": {"volume": "jukebox.volume:Volume"}, "service_key_path": str(folder / "service.key"),
              "log_level": "warning", "gateway_workers": 1}
    users = {"bench": {"password_hash": hash_password(PASSWORD), "role": "user"}}
    files = {}
    for name, extra in (("open", {}), ("policy", {"users": users, "command_access": {"volume": {"set_volume": "user"}}})):
        files[name] = folder / f"{name}.json"
        files[name].write_text(json.dumps({"ports": {"wsgi": ports[name], "volume": ports["volume"]},
                                           "run_path": str(folder / f"run-{name}"), **common, **extra}))
    servicekey.make_key(str(folder / "service.key"))
    env = child_env()
    procs = [Proc("volume", [PYTHON, "-m", "shmooze", "serve", "volume", "--settings", str(files["open"])], env,
                  folder / "volume.log")]
    procs += [Proc(name, [PYTHON, "-m", "shmooze", "serve", "wsgi", "--settings", str(files[name])], env,
                   folder / f"{name}.log") for name in ("open", "policy")]
    try:
        for proc, port in zip(procs, ports.values()):
            proc.wait_port(port, 60)
        conns = {name: http.client.HTTPConnection(HOST, ports[name], timeout=30) for name in ("open", "policy")}
        sign_in_us, cookie = _sign_ins(conns["policy"], rounds)
        level = [0]

        def call(name: str, write: bool) -> Callable[[], None]:
            conn = conns[name]
            headers = dict(JSON_HEADERS, Cookie=cookie) if name == "policy" else JSON_HEADERS

            def one() -> None:
                if write:
                    level[0] = (level[0] + 1) % 100
                    body = encode_command("set_volume", level=level[0])
                else:
                    body = GET_VOLUME
                conn.request("POST", "/volume", body, headers)
                answer = conn.getresponse()
                data = answer.read()
                if answer.status != 200 or b'"success": true' not in data and b'"success":true' not in data:
                    raise RuntimeError(f"{name} answered {answer.status} {data[:200]!r}")
            return one

        variants = {f"{name}_{kind}": call(name, kind == "write") for name in ("open", "policy")
                    for kind in ("read", "write")}
        got: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                got[name].append(per_request_us(variants[name], n))
        for conn in conns.values():
            conn.close()
        check_us = _check_cpu_us(files["policy"], cookie, rounds)
        verify_ms = _verify_cpu_ms(users["bench"]["password_hash"], rounds)
    finally:
        for proc in procs:
            proc.stop()
    sec = Section(f"The client policy and a signed-in session on the gateway's hop (one kept-alive connection per "
                  f"gateway, {n} requests a round, {rounds} rounds interleaved, the order alternating)")
    sec.add(rounds_row("read through the gateway, policy + session cookie, per request", got["policy_read"], "us",
                       got["open_read"], "the same read, no policy (open to all)"))
    sec.add(rounds_row("write through the gateway, policy + session cookie (needs a user), per request",
                       got["policy_write"], "us", got["open_write"], "the same write, no policy"))
    sec.add(rounds_row("caller check + policy, CPU per command (in-process, goal under 50 us)", check_us, "us",
                       at_most=50))
    sec.add(rounds_row("sign-in: POST _session through the gateway (argon2 verify + cookie)", sign_in_us, "ms"))
    sec.add(rounds_row("argon2 verify alone, CPU (in-process)", verify_ms, "ms"))
    sys.stdout.write(markdown(sec) + "\n")
    save_sections("users", [sec], opts.quick, rounds=got, check_cpu_us=check_us, verify_cpu_ms=verify_ms)
    return 0


def _sign_ins(conn: http.client.HTTPConnection, rounds: int, n: int = 10) -> tuple[list[float], str]:
    """Milliseconds per sign-in, per round; and a session cookie (``name=value``)."""
    body = json.dumps({"user": "bench", "password": PASSWORD}).encode()
    out, cookie = [], ""
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            conn.request("POST", "/_session", body, JSON_HEADERS)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"sign-in answered {answer.status}")
            cookie = (answer.getheader("Set-Cookie") or "").split(";", 1)[0]
        out.append((time.perf_counter() - started) / n * 1e3)
    return out, cookie


def _check_cpu_us(settings_path: Path, cookie: str, rounds: int, n: int = 20000) -> list[float]:
    """What the hop adds, in one process: the caller from the cookie, then the policy of one write."""
    from shmooze.gateway.app import Gateway
    from shmooze.settings import read

    gateway = Gateway(read(str(settings_path)))
    if gateway.declared["volume"].refresh() is not None:  # (the service is up: its commands are learned once)
        raise RuntimeError("the volume service did not say its commands")
    body = encode_command("set_volume", level=5)
    out = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(n):
            caller = gateway.callers.from_headers(cookie, "")
            gateway.check_access("volume", body, "", caller.role)
        out.append((time.process_time() - started) / n * 1e6)
    return out


def _verify_cpu_ms(password_hash: str, rounds: int, n: int = 10) -> list[float]:
    from argon2 import PasswordHasher

    hasher, out = PasswordHasher(), []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(n):
            hasher.verify(password_hash, PASSWORD)
        out.append((time.process_time() - started) / n * 1e3)
    return out


if __name__ == "__main__":
    sys.exit(main())
