"""A service's change events as a kept stream (shmooze.http.changestream), and the gateway following it."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

import pytest

from shmooze import servicekey
from shmooze.client import Client
from shmooze.events import ChangeLog
from shmooze.http import changestream
from shmooze.http.forward import ForwardError, ServiceProxy
from shmooze.servicekey import AUTH_HEADER, Signer
from shmooze.settings import read as read_settings
from shmooze.testing import WebSocketClient
from shmooze.testing.stack import Stack, start_service
from tests.helpers import free_port, wait_for, write_settings


def open_stream(port: int, since: int = 0, key: bytes | None = None) -> socket.socket:
    """A raw connection asking ``changes`` with ``stream``, signed with ``key`` (as a gateway asks it)."""
    body = json.dumps({"cmd": "changes", "args": {"since": since, "stream": True}}).encode()
    auth = f"{AUTH_HEADER}: {Signer(key).sign(body)[0]}\r\n".encode() if key else b""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + auth
                 + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return sock


class Lines:
    """The lines of a stream as they come (with a deadline for each)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head

    def next(self) -> bytes:
        while b"\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"the stream ended (had {self.buf[-200:]!r})"
        self.buf += chunk


def changes_asked(client: Client) -> float:
    """How many ``changes`` commands the volume service ran (its own metrics)."""
    return sum(sample[2] for family in client.volume.metrics() for sample in family["samples"]
               if sample[0] == "shmooze_commands_total" and sample[1].get("command") == "changes")


def test_a_service_streams_each_batch_on_one_connection_and_ends_it_when_it_stops(tmp_path) -> None:
    port = free_port()
    path = write_settings(tmp_path / "s.json", ports={"wsgi": free_port(), "volume": port},
                          services={"volume": "jukebox.volume:Volume"})
    proc = start_service(path, "volume", tmp_path)
    key = servicekey.load(read_settings(path))
    try:
        lines = Lines(open_stream(port, key=key))
        head = lines.head()
        assert head.startswith(b"HTTP/1.1 200") and b"application/x-ndjson" in head, head
        first = json.loads(lines.next())
        assert first["events"] == [] and isinstance(first["version"], int)
        version = first["version"]
        for level in range(1, 21):  # each change is one line, in order, as ``changes`` answers it
            _post(port, {"cmd": "set_volume", "args": {"level": level}})
            batch = json.loads(lines.next())
            assert batch["version"] == version + 1 and batch["events"][-1]["level"] == level, batch
            version = batch["version"]
        # a client that was behind catches up from its version on a new stream, in its first line
        behind = Lines(open_stream(port, since=version - 3, key=key))
        behind.head()
        assert [e["level"] for e in json.loads(behind.next())["events"]] == [18, 19, 20]
        behind.sock.close()
        # stopping the service ends the stream (the reader sees its end) within the service's stop
        lines.sock.settimeout(10)
        proc.stop()
        rest = lines.buf
        while chunk := lines.sock.recv(65536):
            rest += chunk
        assert rest.strip() == b"", rest
    finally:
        proc.kill_everything()


def _post(port: int, body: dict) -> dict:
    import requests

    answer = requests.post(f"http://127.0.0.1:{port}/", json=body, timeout=5).json()
    assert answer["success"], answer
    return answer["result"]


def test_a_stream_that_falls_behind_is_cut_and_never_holds_the_publisher() -> None:
    """A reader that stops reading: the publisher's writes never wait (it publishes on), the stream is cut
    once ``MAX_PENDING`` bytes wait, and a reader that keeps up on another stream gets every batch."""
    events = ChangeLog(keep=10_000, max_bytes=1 << 30, max_answer_bytes=1 << 30)
    stalled, stalled_peer = socket.socketpair()
    reading, reading_peer = socket.socketpair()
    threads = [threading.Thread(target=changestream.serve_stream, args=(sock, events, 0, lambda: None), daemon=True)
               for sock in (stalled, reading)]
    for thread in threads:
        thread.start()
    got: list[bytes] = []

    def read() -> None:
        buf = b""
        while chunk := reading_peer.recv(1 << 20):
            buf += chunk
            *done, buf = buf.split(b"\n")
            got.extend(done)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: len(events._streams) == 2, 5, what="both streams")  # noqa: SLF001
    big = "x" * 50_000
    publishing = 0.0
    for n in range(60):  # 3 MB: over MAX_PENDING and any socket buffer; the reader reads each in turn
        started = time.monotonic()
        events.publish("big", n=n, data=big)
        publishing += time.monotonic() - started
        wait_for(lambda n=n: sum(1 for line in got if b'"kind":"big"' in line) == n + 1, 5, what=f"batch {n}")
    threads[0].join(5)
    assert not threads[0].is_alive(), "the stalled stream was not cut"
    assert stalled_peer.recv(1 << 16).startswith(b"HTTP/1.1 200")  # (it had been sent its head)
    assert [json.loads(line)["events"][0]["n"] for line in got if b'"kind":"big"' in line] == list(range(60))
    assert publishing < 5, f"publishing took {publishing:.1f} s: a stalled reader held it"
    events.close()
    threads[1].join(5)
    assert not threads[1].is_alive()
    for sock in (stalled, stalled_peer, reading, reading_peer):
        sock.close()


def test_a_stream_from_a_process_without_the_key_is_refused() -> None:
    """A process on the service's port that answers with a stream but cannot prove it holds the key: the
    stream is refused before any line is taken from it."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def impostor() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(changestream.HEAD + b"\r\n" + b'{"version":1,"events":[{"kind":"forged"}]}\n')

    threading.Thread(target=impostor, daemon=True).start()
    proxy = ServiceProxy("volume", "127.0.0.1", port, signer=Signer(b"k" * 32))
    proxy._check_first = False  # noqa: SLF001 - (the connection's own check would refuse it first)
    try:
        with pytest.raises(ForwardError, match="did not prove") as refused:
            proxy.stream(b'{"cmd": "changes", "args": {"stream": true}}')
        assert refused.value.status == 502
    finally:
        server.close()
        proxy.close()


def test_the_gateway_follows_the_stream_instead_of_asking_after_each_batch(tmp_path) -> None:
    """Pushes through the gateway come from the kept stream: 15 changes pushed, and the service was not
    asked ``changes`` once per batch (a long poll is asked again after each)."""
    with Stack(tmp_path, {"volume": "jukebox.volume:Volume"}, gateway_workers=1) as stack, \
            WebSocketClient.connect(stack.ws, timeout=5) as ws:
        client = Client(stack.url, timeout=5)
        ws.send(json.dumps({"id": 1, "subscribe": {"volume": None}}))
        assert json.loads(ws.receive(5))["success"]
        asked = changes_asked(client)
        for level in range(30, 45):
            client.volume.set_volume(level=level)
            while True:
                text = ws.receive(5)
                assert text is not None, "no push"
                message = json.loads(text)
                if message.get("event") == "change" and message["events"][-1].get("level") == level:
                    assert message["service"] == "volume"
                    break
        assert changes_asked(client) - asked < 3, "the gateway asked changes again after each batch"


STREAM_ASKED = r"""
import json, sys, urllib.request
body = json.dumps({"cmd": "changes", "args": {"since": 0, "stream": True}}).encode()
request = urllib.request.Request(sys.argv[1], body, {"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=10) as answer:
    print(answer.headers["Content-Type"], answer.read().decode())
"""


def test_only_a_gateway_gets_a_kept_stream(tmp_path) -> None:
    """A stream holds one of the service's threads for as long as its reader stays: a reader without the
    service key (another local user on the service's port: reads are open to it) and a client through the
    gateway (which signs what it forwards) are answered as a long poll, at once."""
    import shutil
    import subprocess

    with Stack(tmp_path, {"volume": "jukebox.volume:Volume"}, gateway_workers=1) as stack:
        asks = {"through the gateway": [sys.executable, "-c", STREAM_ASKED, stack.url + "volume"],
                "unsigned, on the service's port": [sys.executable, "-c", STREAM_ASKED, stack.direct("volume")]}
        if os.geteuid() == 0 and shutil.which("setpriv"):
            asks["as another user (uid 65534)"] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                                   "/usr/bin/python3", "-c", STREAM_ASKED, stack.direct("volume")]
        for who, argv in asks.items():
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            content_type, _, body = out.stdout.partition(" ")
            assert out.returncode == 0 and content_type.startswith("application/json"), (who, out.stdout, out.stderr)
            answer = json.loads(body)
            assert answer["success"] and answer["result"]["events"] == [], (who, answer)
