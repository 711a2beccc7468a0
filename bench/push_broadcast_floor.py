"""The push benchmark's Python floor: a plain `websockets` server that broadcasts stamp events itself.

Usage: ``python -m bench.push_broadcast_floor PORT SAMPLE_FILE``. SAMPLE_FILE holds one change message as
the shmooze gateway sent it for a stamp module; every stamp sent here is that message with its
``time``, ``seq`` and ``sent`` filled in anew (``sent``: now, or the time the stamp was due when the
server is behind: bench.push_wire.stamp_time), so the payload is the same size and shape. Every
connection is a watcher (no subscribe step). Commands on standard input, one a line:

- ``stamp INTERVAL SECONDS``: broadcast a stamp every INTERVAL s for SECONDS s, then print ``done N``;
- end of input: close every connection and exit.

It prints ``ready`` once it listens. No compression, no pings: the framing the gateway uses.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.push_wire import stamp_template, stamp_time

clients: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    clients.add(ws)
    try:
        await ws.wait_closed()
    finally:
        clients.discard(ws)


async def stamp(pieces: tuple[str, str, str, str], seq: int, interval: float, seconds: float) -> int:
    """Broadcast stamps on a fixed schedule; returns the last sequence number."""
    loop = asyncio.get_running_loop()
    a, b, c, d = pieces
    due = loop.time()
    end = due + seconds
    wall = time.time() - due  # loop time -> time.time()
    busy_until = 0.0
    while due < end:
        seq += 1
        now = repr(stamp_time(due + wall, busy_until))
        broadcast(clients, f"{a}{now}{b}{seq}{c}{now}{d}")
        busy_until = time.time()
        due += interval
        await asyncio.sleep(max(due - loop.time(), 0.0))
    return seq


async def main(port: int, sample: bytes) -> None:
    pieces = stamp_template(sample)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    seq = 0
    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None, max_queue=None,
                     backlog=4096):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while line := await reader.readline():
            words = line.split()
            if words and words[0] == b"stamp":
                seq = await stamp(pieces, seq, float(words[1]), float(words[2]))
                sys.stdout.write(f"done {seq}\n")
                sys.stdout.flush()
        for ws in list(clients):
            await ws.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2]).read_bytes()))
