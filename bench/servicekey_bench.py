"""What the service key costs on the hop: signed requests and proven answers against the same hop
without them, on a real service process.

Usage: ``.venv/bin/python -m bench.servicekey_bench [--quick]``

One ``shmooze serve volume`` (the loop worker, as deployed). The client is the gateway's forwarder
(:class:`shmooze.http.forward.ServiceProxy`), one kept-alive connection, requests one after another:

- a read (``get_volume``) unsigned (the floor: the same hop with no key) and signed (the gateway's
  way: signature checked and answer proven);
- a write (``set_volume``) signed, against the same write from this user's own process unsigned
  (the service asks the kernel who holds the peer socket);
- the bare loopback round trip of the same bytes (``http.client`` to the bare-WSGI floor), as the
  floor under everything.

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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 rounds of fewer requests")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rounds, n = (3, 1000) if opts.quick else (5, 3000)
    from shmooze import servicekey
    from shmooze.http.forward import ServiceProxy

    folder = Path(tempfile.mkdtemp(prefix="shmooze-keybench-"))
    ports = {"volume": free_port(), "floor": free_port()}
    settings = folder / "settings.json"
    settings.write_text(json.dumps({"ports": {"volume": ports["volume"]}, "services": {"volume": "jukebox.volume:Volume"},
                                    "service_key_path": str(folder / "service.key"), "log_level": "warning"}))
    key = servicekey.make_key(str(folder / "service.key"))
    env = child_env()
    procs = [Proc("volume", [PYTHON, "-m", "shmooze", "serve", "volume", "--settings", str(settings)], env,
                  folder / "volume.log"),
             Proc("floor", [PYTHON, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", "4", "--keep-alive",
                            "120", "--no-control-socket", "--log-level", "warning", "-b",
                            f"{HOST}:{ports['floor']}", "bench.floorapp:app"], env, folder / "floor.log")]
    try:
        for proc, port in zip(procs, ports.values()):
            proc.wait_port(port, 60)
        plain = ServiceProxy("volume", HOST, ports["volume"])
        signed = ServiceProxy("volume", HOST, ports["volume"], signer=servicekey.Signer(key))
        floor = http.client.HTTPConnection(HOST, ports["floor"], timeout=30)
        level = [0]

        def bare() -> None:
            floor.request("POST", "/", GET_VOLUME, JSON_HEADERS)
            floor.getresponse().read()

        def read(proxy: ServiceProxy) -> Callable[[], None]:
            return lambda: _ok(proxy.post(GET_VOLUME).body)

        def write(proxy: ServiceProxy) -> Callable[[], None]:
            def call() -> None:
                level[0] = (level[0] + 1) % 100
                _ok(proxy.post(encode_command("set_volume", level=level[0])).body)
            return call

        variants = {"bare": bare, "read": read(plain), "read_signed": read(signed), "write": write(plain),
                    "write_signed": write(signed)}
        got: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                got[name].append(per_request_us(variants[name], n))
        cpu = _sign_cpu_us(key, rounds)
        floor.close()
        plain.close()
        signed.close()
    finally:
        for proc in procs:
            proc.stop()
    sec = Section(f"The service key on the hop (one kept-alive connection, {n} requests a round, {rounds} rounds "
                  "interleaved, the order alternating)")
    sec.add(rounds_row("read through the forwarder, signed and proven, per request", got["read_signed"], "us",
                       got["read"], "the same read unsigned"))
    sec.add(rounds_row("write through the forwarder, signed and proven, per request", got["write_signed"], "us",
                       got["write"], "the same write unsigned, this user's own process (kernel lookup)"))
    sec.add(rounds_row("read unsigned, per request", got["read"], "us", got["bare"],
                       "bare loopback round trip to the bare-WSGI floor"))
    sec.add(rounds_row("sign + check + prove + check proof, CPU per request (in-process)", cpu, "us"))
    sys.stdout.write(markdown(sec) + "\n")
    save_sections("servicekey", [sec], opts.quick, rounds=got, sign_cpu_us=cpu)
    return 0


def _ok(body: bytes) -> None:
    if b'"success": true' not in body and b'"success":true' not in body:
        raise RuntimeError(f"the service answered {body[:200]!r}")


def _sign_cpu_us(key: bytes, rounds: int, n: int = 20000) -> list[float]:
    """The four HMAC steps of one hop, in one process: the client's and the service's CPU together."""
    from shmooze import servicekey

    signer, verifier = servicekey.Signer(key), servicekey.Verifier(key)
    body, answer = GET_VOLUME, b'{"success": true, "result": {"level": 50}}'
    out = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(n):
            auth, nonce = signer.sign(body)
            verifier.check(auth, "/", body)
            proof = verifier.proof(nonce, 200, answer)
            signer.proven(nonce, 200, answer, proof)
        out.append((time.process_time() - started) / n * 1e6)
    return out


if __name__ == "__main__":
    sys.exit(main())
