"""Change events: versioning, waiting, the WebSocket command path, and ``shmz watch``."""

import json
import subprocess
import threading
import time

import pytest

from shmooze.client import Client
from shmooze.events import ChangeLog
from shmooze.testing import WebSocketClient
from tests.helpers import PYTHON, Proc, Stack, free_port, wait_for
from tests.sample_service import Sample


def test_versions_increase_and_since_returns_only_newer():
    log = ChangeLog()
    assert log.since(0) == {"version": 0, "events": []}
    assert log.publish("a", x=1) == 1
    assert log.publish("b") == 2
    result = log.since(1)
    assert result["version"] == 2 and [e["kind"] for e in result["events"]] == ["b"]
    assert [e["version"] for e in log.since(0)["events"]] == [1, 2]


def test_since_waits_for_a_change_or_times_out():
    log = ChangeLog()
    started = time.monotonic()
    assert log.since(0, timeout=0.2)["events"] == []
    assert time.monotonic() - started >= 0.19
    timer = threading.Timer(0.05, lambda: log.publish("late"))
    timer.start()
    result = log.since(0, timeout=5)
    timer.join()
    assert [e["kind"] for e in result["events"]] == ["late"]


def test_a_batch_is_published_in_order_with_its_sizes():
    log = ChangeLog(keep=3)
    log.publish("first")
    assert log.publish_each("removed", [{"uid": f"u{i}", "reason": "rm"} for i in range(3)]) == 4
    events = log.since(1)["events"]
    assert [(e["version"], e["uid"]) for e in events] == [(2, "u0"), (3, "u1"), (4, "u2")]
    # Inside: the sizes the event log keeps for its byte bound: nothing public tells.
    assert list(log._sizes) == [len(json.dumps(e, separators=(",", ":"))) for e in events]  # noqa: SLF001
    assert log.since(0)["reset"] is True  # "first" fell out of the three kept
    log.publish_each("odd", [{"value": object(), "text": "\u00e9"}])  # sized as str() would print it
    assert log._sizes[-1] == len(json.dumps(log.since(4)["events"][0], separators=(",", ":"), default=str))  # noqa: SLF001


def test_reset_when_too_far_behind_or_ahead():
    log = ChangeLog(keep=3)
    for i in range(10):
        log.publish("e", i=i)
    assert log.since(2) == {"version": 10, "events": [], "reset": True}  # events 3..7 were dropped
    assert [e["version"] for e in log.since(7)["events"]] == [8, 9, 10]
    assert log.since(50)["reset"] is True  # a client from before the service restarted


def test_service_changes_command_caps_the_wait():
    svc = Sample()
    svc.changed("x")
    assert svc.changes(since=0)["events"][0]["service"] == "sample"
    svc.max_changes_wait = 0.2  # (60 s in a real service: too long for a test)
    version = svc.events.version
    started = time.monotonic()
    assert svc.changes(since=version, timeout=1e9)["events"] == []  # asked to wait for ages: capped
    assert 0.15 <= time.monotonic() - started < 5
    started = time.monotonic()
    assert svc.changes(since=version, timeout=-5)["events"] == []  # a negative wait is no wait
    assert time.monotonic() - started < 0.15


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("push"), {"volume": "jukebox.volume:Volume", "queue": "tests.apps:make_queue"},
               public=["ports"], allowed_origins=["http://allowed.example"]) as stack:
        yield {"ports": stack.ports, "url": stack.url, "ws": stack.ws}


def receive_json(ws, timeout=5.0):
    text = ws.receive(timeout)
    assert text is not None, "no message in time"
    return json.loads(text)


def test_websocket_commands_and_batches(gateway):
    with WebSocketClient.connect(gateway["ws"], timeout=5) as ws:
        ws.send(json.dumps({"id": 7, "service": "volume", "cmd": "set_volume", "args": {"level": 12}}))
        assert receive_json(ws) == {"success": True, "result": {"level": 12, "muted": False}, "id": 7}
        ws.send(json.dumps({"id": 8, "service": "volume", "batch": [{"cmd": "get_volume"}, {"cmd": "nope"}]}))
        answer = receive_json(ws)
        assert answer["id"] == 8 and answer["answers"][0]["result"]["level"] == 12
        assert answer["answers"][1]["success"] is False
        for bad, fragment in [("{", "not JSON"), ("[1]", "JSON object"),
                              (json.dumps({"id": 9, "service": "nosuch", "cmd": "x"}), "no service named"),
                              (json.dumps({"id": 10, "service": "volume", "batch": 3}), "must be a list"),
                              (json.dumps({"id": 11, "subscribe": {"nosuch": None}}), "no service named")]:
            ws.send(bad)
            answer = receive_json(ws)
            assert answer["success"] is False and fragment in answer["error"], answer
        ws.send(json.dumps({"id": 12, "service": "volume", "cmd": "get_volume"}))
        assert receive_json(ws)["result"]["level"] == 12  # still serving after bad messages


def test_subscribers_get_change_events_pushed(gateway):
    client = Client(gateway["url"])
    with WebSocketClient.connect(gateway["ws"], timeout=5) as ws:
        ws.send(json.dumps({"id": 1, "subscribe": {"volume": None}}))
        first = receive_json(ws)
        version = first["result"]["volume"]["version"]
        client.volume.set_volume(level=33)
        event = receive_json(ws)
        assert event["event"] == "change" and event["service"] == "volume" and event["version"] > version
        assert event["events"][-1]["kind"] == "volume" and event["events"][-1]["level"] == 33


def test_a_command_sent_right_after_a_subscription_is_heard_by_it(gateway):
    """Messages of one WebSocket run concurrently, but a subscription is in effect before any message
    read after it runs: the command's change event is never missed (20 times, each on a new socket)."""
    for level in range(20, 40):
        with WebSocketClient.connect(gateway["ws"], timeout=5) as ws:
            ws.send(json.dumps({"id": 1, "subscribe": {"volume": None}}))
            ws.send(json.dumps({"id": 2, "service": "volume", "cmd": "set_volume", "args": {"level": level}}))
            heard = []
            deadline = time.monotonic() + 10
            while not any(m.get("event") == "change" and m["events"][-1].get("level") == level for m in heard):
                assert time.monotonic() < deadline, f"the event of set_volume {level} never came: {heard}"
                heard.append(receive_json(ws, timeout=max(0.1, deadline - time.monotonic())))


def test_returning_subscriber_catches_up(gateway):
    client = Client(gateway["url"])
    since = client.volume.changes(since=0)["version"]
    client.volume.set_volume(level=44)
    client.volume.set_volume(level=45)
    with WebSocketClient.connect(gateway["ws"], timeout=5) as ws:
        ws.send(json.dumps({"id": 1, "subscribe": {"volume": since}}))
        levels = {}

        def caught_up():
            msg = receive_json(ws)
            for e in msg.get("events", []):
                if e["kind"] == "volume":
                    levels[e["version"]] = e["level"]
            return {44, 45} <= set(levels.values())

        wait_for(caught_up, 10, interval=0, what="the missed events")
        assert [levels[v] for v in sorted(levels)][-2:] == [44, 45]


def test_module_parameters_are_pushed(gateway):
    client = Client(gateway["url"])
    with WebSocketClient.connect(gateway["ws"], timeout=5) as ws:
        ws.send(json.dumps({"id": 1, "subscribe": ["queue"]}))
        receive_json(ws)
        uid = client.queue.add(type="good")["uid"]
        seen = []

        def got_play():
            msg = json.loads(ws.receive(5) or "{}")
            seen.extend(msg.get("events", []))
            return any(e["kind"] == "parameters" and e["uid"] == uid and "play" in e.get("set", {}).get("log", [])
                       for e in seen)

        wait_for(got_play, 10, interval=0, what="the module's play to be pushed")
        assert any(e["kind"] == "added" and e["uid"] == uid for e in seen)
        client.queue.rm(uids=[uid])


def test_foreign_origin_is_refused_and_allowed_one_accepted(gateway):
    from shmooze.http.websocket import HandshakeError

    with pytest.raises(HandshakeError) as info:
        WebSocketClient.connect(gateway["ws"], origin="http://evil.example", timeout=5)
    assert info.value.status == 403
    WebSocketClient.connect(gateway["ws"], origin="http://allowed.example", timeout=5).close()


def test_plain_get_on_the_websocket_endpoint_is_a_json_error(gateway):
    import requests

    resp = requests.get(gateway["url"] + "ws", timeout=5)
    assert resp.status_code == 400 and resp.json()["success"] is False


def test_shmz_watch_prints_events(gateway, tmp_path):
    watcher = Proc([PYTHON, "-m", "shmooze.cli.shmz", "--url", gateway["url"], "watch", "volume"],
                   log_path=tmp_path / "watch.log")
    try:
        client = Client(gateway["url"])

        def printed():
            client.volume.set_volume(level=77)
            return any(json.loads(line).get("level") == 77 for line in watcher.log().splitlines() if line.startswith("{"))

        wait_for(printed, 15, interval=0.2, what="shmz watch to print the change")
    finally:
        watcher.stop(timeout=10)
    proc = subprocess.run([PYTHON, "-m", "shmooze.cli.shmz", "--url", f"http://127.0.0.1:{free_port()}/",
                           "watch", "volume"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "connection refused" in proc.stderr


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200000])
def test_text_frame_is_what_a_websocket_client_decodes(size):
    from wsproto import ConnectionType
    from wsproto.connection import Connection
    from wsproto.events import TextMessage

    from shmooze.http.websocket import text_frame

    text = "é" * (size // 2) + "x" * (size % 2)
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(text_frame(text))
    events = list(client.events())
    assert len(events) == 1 and isinstance(events[0], TextMessage) and events[0].data == text


def test_http_long_polls_wait_at_the_gateway_not_on_service_threads(gateway):
    """More long polls than the service has threads (32): commands still answer at once, and every
    poll returns when a change comes."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    url = gateway["url"] + "volume"
    since = Client(gateway["url"]).volume.changes(since=0)["version"]

    def poll():
        resp = requests.post(url, json={"cmd": "changes", "args": {"since": since, "timeout": 20}}, timeout=30)
        return resp.json()["result"]

    with ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(poll) for _ in range(40)]
        client = Client(gateway["url"], timeout=3)
        started = time.monotonic()
        for _ in range(5):
            client.volume.get_volume()  # would wait for a free thread if the polls held the service's
        assert time.monotonic() - started < 2.5
        assert not any(f.done() for f in futures)  # they are still waiting for a change
        client.volume.set_volume(level=61)
        results = [f.result(timeout=15) for f in futures]
    assert all(r["version"] > since and r["events"][-1]["level"] == 61 for r in results)


class Heard:
    """A listener of a gateway's watcher: the frames it was pushed."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def push(self, frame: bytes) -> None:
        self.frames.append(frame)


def test_a_nudged_watcher_tries_its_service_again_at_once(monkeypatch):
    """After a failure the watcher pauses before its next try; ``nudge`` (the service's address changed,
    or it is back) ends the pause: with a pause of a minute, the service is heard within a second."""
    from werkzeug.serving import make_server

    from shmooze.gateway import fanout
    from shmooze.http.forward import ServiceProxy
    from shmooze.http.jsonapp import service_app

    monkeypatch.setattr(fanout, "RETRY_FIRST", 60.0)
    monkeypatch.setattr(fanout, "RETRY_MAX", 60.0)
    port = free_port()
    watcher = fanout.ServiceWatcher(ServiceProxy("sample", "127.0.0.1", port, timeout=30))
    heard = Heard()
    watcher.subscribe(heard)
    assert watcher.current_version() is None  # nothing listens on the port: it failed, and pauses
    svc = Sample()
    server = make_server("127.0.0.1", port, service_app(svc), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        nudged = time.monotonic()
        watcher.nudge()
        wait_for(lambda: watcher.version is not None, 5, what="the watcher to reach the service")
        assert time.monotonic() - nudged < 1.0
        svc.changed("x")
        wait_for(lambda: heard.frames, 5, what="the event")
        frame = heard.frames[-1]
        header = {126: 4, 127: 10}.get(frame[1] & 0x7F, 2)  # (a server's frame: unmasked)
        assert json.loads(frame[header:])["events"][-1]["kind"] == "x"
    finally:
        watcher.unsubscribe(heard)
        svc.changed("end")  # ends the watcher's long poll: it sees nobody listens and stops
        server.shutdown()
        thread.join(5)


def test_pushes_resume_within_a_second_of_a_service_restarted_on_its_port(tmp_path):
    """A refused connection costs microseconds, so the gateway tries a service that went away again every
    half second at most: a service restarted on its port (real processes) pushes to the WebSockets that
    stayed subscribed within a second of listening again (the reset first, then its events)."""
    from shmooze.testing.stack import start_service

    with Stack(tmp_path, {"volume": "jukebox.volume:Volume"}) as stack, \
            WebSocketClient.connect(stack.ws, timeout=5) as ws:
        ws.send(json.dumps({"id": 1, "subscribe": {"volume": None}}))
        assert receive_json(ws)["success"]
        stack.procs["volume"].stop()
        wait_for(lambda: "watching volume" in stack.procs["wsgi"].log(), 10, what="the watcher to lose the service")
        stack.procs["volume"] = start_service(stack.path, "volume", tmp_path)  # (returns once it listens)
        listening = time.monotonic()
        reset = receive_json(ws)
        assert reset["event"] == "change" and reset.get("reset") is True, reset
        assert time.monotonic() - listening < 1.0, "the restarted service was heard late"
        Client(stack.url).volume.set_volume(level=21)
        event = receive_json(ws)
        assert event["events"][-1]["kind"] == "volume" and event["events"][-1]["level"] == 21


def test_a_stopping_gateway_tells_its_websockets_it_is_going_away(tmp_path):
    """Idle WebSockets are held by a loop, not by requests the stopping worker waits for: it still closes
    each with "going away" (1001) before it exits, so pages reconnect at once (to another gateway)."""
    with Stack(tmp_path, {"volume": "jukebox.volume:Volume"}) as stack:
        sockets = [WebSocketClient.connect(stack.ws, timeout=5) for _ in range(6)]
        for ws in sockets:
            ws.send(json.dumps({"id": 1, "subscribe": {"volume": None}}))
            assert receive_json(ws)["success"]
        stack.procs["wsgi"].stop()
        for ws in sockets:
            assert ws.receive(10) is None and ws.closed
            assert ws.close_code == 1001, (ws.close_code, ws.close_reason)
            ws.close()


def test_idle_watchers_cost_the_gateway_a_few_kilobytes_each(tmp_path):
    """An idle subscribed WebSocket is an entry of its worker's loop, not a greenlet and a request (which
    cost about 37 KiB each): 800 more idle watchers add under 16 KiB each to the worker's memory (RSS,
    measured past the first 400 so that what the first ones bring along is not counted)."""
    import psutil

    from shmooze.testing.stack import server_workers

    with Stack(tmp_path, {"volume": "jukebox.volume:Volume"}, gateway_workers=1) as stack:
        (pid,) = wait_for(lambda: server_workers(stack.procs["wsgi"]), 10, what="the gateway's worker")
        worker = psutil.Process(pid)
        sockets: list[WebSocketClient] = []

        def watchers(count: int) -> int:
            """Open ``count`` more subscribed watchers; return the worker's RSS once they are all answered."""
            opened = [WebSocketClient.connect(stack.ws, timeout=10) for _ in range(count)]
            sockets.extend(opened)
            for ws in opened:
                ws.send(json.dumps({"id": 1, "subscribe": {"volume": None}}))
            for ws in opened:
                assert receive_json(ws, 10)["success"]
            return worker.memory_info().rss

        try:
            before = watchers(400)
            after = watchers(800)
            assert (after - before) / 800 < 16 * 1024, f"{(after - before) / 800 / 1024:.1f} KiB per watcher"
            Client(stack.url).volume.set_volume(level=3)  # and every one of them hears the next event
            for ws in sockets:
                assert receive_json(ws, 10)["events"][-1]["level"] == 3
        finally:
            for ws in sockets:
                ws.drop()  # (no close handshake for each of 1,200)


def test_a_nudge_leaves_a_question_that_hangs_and_asks_again():
    """A watcher whose service stopped answering (its host is gone, say) asks again as soon as it is
    nudged (its address changed), not after the forward timeout: a second connection within a second."""
    import socket

    from shmooze.gateway import fanout
    from shmooze.http.forward import ServiceProxy

    silent = socket.create_server(("127.0.0.1", 0))  # takes connections, never answers
    accepted: list[socket.socket] = []

    def accept() -> None:
        while len(accepted) < 2:
            accepted.append(silent.accept()[0])

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    watcher = fanout.ServiceWatcher(ServiceProxy("silent", "127.0.0.1", silent.getsockname()[1], timeout=30))
    heard = Heard()
    watcher.subscribe(heard)
    try:
        wait_for(lambda: len(accepted) == 1, 5, what="the watcher's question")
        nudged = time.monotonic()
        watcher.nudge()
        wait_for(lambda: len(accepted) == 2, 5, what="the question asked again")
        assert time.monotonic() - nudged < 1.0
    finally:
        watcher.unsubscribe(heard)
        for sock in accepted:
            sock.close()  # (the questions fail: the watcher sees nobody listens and stops)
        silent.close()
        acceptor.join(5)
