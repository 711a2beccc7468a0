"""Property tests of the module line protocol, from the module's side.

The module type ``raw`` is tests/modules/rawmodule.py: a process that only reports the
service's two ports to this test, which then connects to them itself and writes whatever
bytes a case needs: random bytes, lines over the length limit (``max_line=4096`` here),
partial lines then a close, garbage or double answers on the command stream.

Properties: the service never crashes and keeps answering; every update line gets an
answer, an error for a bad one; a module that breaks the command stream is removed with
a recorded rung and its process is gone; a well-behaved module next to it keeps working.
"""

from __future__ import annotations

import collections
import json
import socket
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmooze import protocol
from shmooze.moduletype import ModuleType
from shmooze.pool import Pool
from shmooze.queue import Queue
from shmooze.system import ladder
from tests.helpers import ROOT, Driver, gone, report_line, wait_for

RAW = str(ROOT / "tests" / "modules" / "rawmodule.py")
MISBEHAVE = str(ROOT / "tests" / "modules" / "misbehave.py")
MAX_LINE = 4096
COUNTS: collections.Counter[str] = collections.Counter()
FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                   HealthCheck.data_too_large])


@pytest.fixture(autouse=True, scope="module")
def report_counts(request):
    yield
    report_line(request, f"fuzz inputs tried (test_fuzz_modules): {sum(COUNTS.values())} total; "
                + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items())))


class LineSock:
    """One side of a stream, with bounded line reads."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line within {timeout} s (have {self.buf[:100]!r})")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("stream closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def read_json(self, timeout: float = 10.0):
        return json.loads(self.read_line(timeout))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RawModule:
    """The test speaking as a module: ``cmd`` and ``upd`` are its two streams."""

    def __init__(self, report: socket.socket, cmd: LineSock, upd: LineSock, pid: int):
        self.report, self.cmd, self.upd, self.pid = report, cmd, upd, pid
        self.uid: str | None = None

    def expect(self, name: str) -> dict:
        msg = self.cmd.read_json()
        assert msg["cmd"] == name, msg
        return msg

    def answer(self, obj=None, raw: bytes | None = None) -> None:
        self.cmd.send(raw if raw is not None else protocol.encode_line(obj or {"success": True}))

    def close(self) -> None:
        for s in (self.cmd, self.upd):
            s.close()
        try:
            self.report.close()  # the shell process exits
        except OSError:
            pass


class Host(Driver):
    """A service (pool or queue) in-process, with the raw and a good module type."""

    def __init__(self, kind: str = "pool"):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(10)
        port = self.listener.getsockname()[1]
        fast = {"rm_timeout": 0.3, "term_timeout": 0.3, "command_timeout": 0.5}
        types = [ModuleType("raw", (sys.executable, RAW, str(port)), **fast),
                 ModuleType("good", (sys.executable, MISBEHAVE), **fast)]
        # The test itself speaks as the module, from outside the module's processes: the peer check
        # (shmooze.system.peer) would rightly refuse it, so it is off here.
        super().__init__(Pool(types, max_line=MAX_LINE, check_peers=False) if kind == "pool" else
                         Queue(types, max_line=MAX_LINE, check_peers=False))
        self.raws: list[RawModule] = []

    def add_raw(self, play: bool = True) -> RawModule:
        """Add a raw module, answering ``init`` as the test; with ``play``, answer ``play`` too and
        return once ``add`` answered, else return at once (call :meth:`added` after answering ``play``)."""
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(answer=self("add", type="raw")))
        thread.start()
        try:
            report, _ = self.listener.accept()
            report.settimeout(10)
            reader = LineSock(report)
            host, cmd_port, upd_port, pid = reader.read_line().decode().split()
            cmd = LineSock(socket.create_connection((host, int(cmd_port)), timeout=10))
            upd = LineSock(socket.create_connection((host, int(upd_port)), timeout=10))
            raw = RawModule(report, cmd, upd, int(pid))
            raw.thread, raw.result = thread, result
            self.raws.append(raw)
            raw.expect("init")
            raw.answer()
            if play:
                raw.expect("play")
                raw.answer()
        except BaseException:
            thread.join(10)
            raise
        if play:
            self.added(raw)
        return raw

    @staticmethod
    def added(raw: RawModule) -> str:
        raw.thread.join(10)
        answer = raw.result["answer"]
        assert answer["success"] is True, answer
        raw.uid = answer["result"]["uid"]
        return raw.uid

    def uids(self) -> list[str]:
        return [m["uid"] for m in self.ok("status")["modules"]]

    def ended(self, uid: str) -> dict | None:
        for entry in self.ok("status")["ended"]:
            if entry["uid"] == uid:
                return entry
        return None

    def wait_removed(self, raw: RawModule) -> dict:
        """The module is out, its stop recorded with a rung, and its process is gone."""
        entry = wait_for(lambda: raw.uid not in self.uids() and self.ended(raw.uid), 10,
                         what=f"{raw.uid} to be removed")
        assert entry["ended_by"] in ladder.RUNGS, entry
        assert entry["state"] == "stopped"
        wait_for(lambda: gone(raw.pid), 10, what=f"process {raw.pid} to end")
        return entry

    def good_still_works(self, uid: str) -> None:
        assert self.ok("tell_module", uid=uid, cmd="echo", args={"n": 1}) == {"n": 1}
        assert self.ok("status")["pid"] > 0

    def close(self) -> None:
        self.svc.stop()
        for raw in self.raws:
            raw.close()
        self.listener.close()


@pytest.fixture
def host():
    h = Host("pool")
    try:
        yield h
    finally:
        h.close()


# -- the update stream ---------------------------------------------------------------------

good_updates = st.one_of(
    st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=10) | st.booleans(), max_size=3).map(
        lambda p: {"cmd": "set_parameters", "args": {"parameters": p}}),
    st.lists(st.text(max_size=6), max_size=3).map(lambda names: {"cmd": "unset_parameters",
                                                                 "args": {"parameters": names}}),
    st.just({"cmd": "set_parameters", "args": {"parameters": {}}, "junk": 1}),  # extra keys are ignored
)
bad_updates = st.one_of(
    st.just({"cmd": "set_parameters"}), st.just({"cmd": "set_parameters", "args": {"parameters": [1]}}),
    st.just({"cmd": "unset_parameters", "args": {"parameters": [1, 2]}}), st.just({"cmd": 5}), st.just([]),
    st.text(max_size=12).filter(lambda c: c not in ("set_parameters", "unset_parameters", "rm")).map(
        lambda c: {"cmd": c}),
)
raw_lines = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" "))


def expected_success(line: bytes) -> bool:
    """An oracle independent of the service's code: is this line a valid update (not rm)?"""
    try:
        msg = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not isinstance(msg, dict):  # (keys beside cmd and args are ignored, as the original did)
        return False
    args = msg.get("args", {})
    args = {} if args is None else args
    if not isinstance(args, dict) or not isinstance(msg.get("cmd"), str):
        return False
    if msg["cmd"] == "set_parameters":
        return isinstance(args.get("parameters"), dict)
    if msg["cmd"] == "unset_parameters":
        params = args.get("parameters")
        return isinstance(params, list) and all(isinstance(n, str) for n in params)
    return False


@settings(max_examples=120, **FUZZ)
@given(data=st.data())
def test_every_update_line_is_answered(data):
    h = HOST_CACHE["update"]
    raw, good = h.shared
    lines = data.draw(st.lists(raw_lines | good_updates.map(protocol.dumps) | bad_updates.map(protocol.dumps),
                               max_size=8))
    seq = COUNTS["modules:update-lines"] = COUNTS["modules:update-lines"] + 1
    stream = b"".join(line + b"\n" for line in lines) + protocol.encode_line(
        {"cmd": "set_parameters", "args": {"parameters": {"seq": seq}}})
    cuts = sorted(c * len(stream) // 10000 for c in data.draw(st.lists(st.integers(0, 10000), max_size=4)))
    start = 0
    for cut in cuts + [len(stream)]:  # partial lines across writes
        if cut > start:
            raw.upd.send(stream[start:cut])
            start = cut
    answers = [raw.upd.read_json() for _ in range(len(lines) + 1)]
    for line, answer in zip(lines, answers):
        assert isinstance(answer, dict) and isinstance(answer.get("success"), bool), answer
        assert answer["success"] is expected_success(line), (line, answer)
        if not answer["success"]:
            assert isinstance(answer["error"], str) and answer["error"]
    assert answers[-1] == {"success": True}
    assert h.ok("ask_module", uid=raw.uid, parameters=["seq"]) == {"seq": seq}
    assert raw.uid in h.uids()
    h.good_still_works(good)


@settings(max_examples=25, **FUZZ)
@given(parts=st.lists(st.one_of(st.integers(MAX_LINE + 1, 40000), st.integers(0, 50)), min_size=1, max_size=5),
       chunk=st.sampled_from([None, 1000, 5000, 70000]))
def test_lines_over_the_limit_are_refused_and_the_rest_applied(parts, chunk):
    """Long lines get error answers; the good lines around them (same chunk or not) are still applied."""
    h = HOST_CACHE["update"]
    raw, good = h.shared
    COUNTS["modules:long-lines"] += 1
    stream, good_count = b"", 0
    for i, size in enumerate(parts):
        if size > MAX_LINE:
            stream += b"x" * size + b"\n"
        else:
            good_count += 1
            stream += protocol.encode_line({"cmd": "set_parameters", "args": {"parameters": {f"g{i}": size}}})
    seq = COUNTS["modules:long-lines"]
    stream += protocol.encode_line({"cmd": "set_parameters", "args": {"parameters": {"long_seq": seq}}})
    step = chunk or len(stream)
    for i in range(0, len(stream), step):
        raw.upd.send(stream[i:i + step])
    trues = falses = 0
    while trues < good_count + 1:
        answer = raw.upd.read_json()
        if answer["success"]:
            trues += 1
        else:
            falses += 1
            assert "line longer than 4096 bytes" in answer["error"], answer  # never its tail as a line
    assert falses == len(parts) - good_count  # one answer per long line, however it was cut
    wanted = {f"g{i}": size for i, size in enumerate(parts) if size <= MAX_LINE}
    assert h.ok("ask_module", uid=raw.uid, parameters=[*wanted, "long_seq"]) == {**wanted, "long_seq": seq}
    h.good_still_works(good)


HOST_CACHE: dict[str, Host] = {}


@pytest.fixture(scope="module", autouse=True)
def update_host():
    h = Host("pool")
    good = h.ok("add", type="good")["uid"]
    raw = h.add_raw()
    h.shared = (raw, good)
    HOST_CACHE["update"] = h
    yield h
    HOST_CACHE.clear()
    h.close()


def test_update_line_flood_with_a_reader_that_never_reads(host):
    """The module never reads its update answers: 20,000 bad lines cost the service nothing."""
    raw = host.add_raw()
    good = host.ok("add", type="good")["uid"]
    COUNTS["modules:flood"] += 20000
    payload = b"not json\n" * 20000 + protocol.encode_line({"cmd": "set_parameters", "args": {"parameters": {"done": 1}}})
    sender = threading.Thread(target=raw.upd.send, args=(payload,), daemon=True)
    sender.start()
    wait_for(lambda: host.ok("ask_module", uid=raw.uid, parameters=["done"]), 20, what="the flood to be read")
    host.good_still_works(good)
    assert raw.uid in host.uids()


@pytest.mark.parametrize("close", ["update", "both", "update-partial"])
def test_partial_line_then_close(host, close):
    good = host.ok("add", type="good")["uid"]
    raw = host.add_raw()
    COUNTS["modules:close"] += 1
    raw.upd.send(b'{"cmd": "set_parameters", "args": {"param')  # never finished
    if close == "both":
        raw.cmd.close()
    raw.upd.close()
    entry = host.wait_removed(raw)
    # with both closed, either close may be noticed first (the I/O thread watches both streams)
    assert ("update stream closed" if close != "both" else "stream closed") in entry["reason"]
    host.good_still_works(good)


def test_command_stream_closed_is_found_at_the_next_command(host):
    good = host.ok("add", type="good")["uid"]
    raw = host.add_raw()
    raw.cmd.send(b'{"success": tr')
    raw.cmd.close()
    answer = host("tell_module", uid=raw.uid, cmd="echo")
    # The I/O thread may notice the close before the command is sent: then the module is already gone.
    assert answer["success"] is False and ("failed and was removed" in answer["error"]
                                           or "no module with uid" in answer["error"]), answer
    host.wait_removed(raw)
    host.good_still_works(good)


# -- the command stream: garbage and double answers ------------------------------------------

def not_a_success(line: bytes) -> bool:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return True
    return not (isinstance(value, dict) and value.get("success") is True)


garbage_answers = st.one_of(
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                 max_leaves=8).map(protocol.dumps),
    st.sampled_from([b'{"success": false}', b'{"success": "yes"}', b'{"cmd": "play"}', b"\xff\xfe",
                     b'{"success": false, "error": "no"}', b"x" * (MAX_LINE + 10)]),
).filter(not_a_success)


@pytest.fixture(scope="module")
def garbage_host():
    h = Host("pool")
    h.shared = h.ok("add", type="good")["uid"]
    HOST_CACHE["garbage"] = h
    yield h
    h.close()


@settings(max_examples=15, **FUZZ)
@given(garbage=garbage_answers)
def test_garbage_answer_to_play_removes_the_module(garbage_host, garbage):
    h = garbage_host
    COUNTS["modules:garbage-answer"] += 1
    raw = h.add_raw(play=False)
    raw.expect("play")
    raw.answer(raw=garbage + b"\n")
    h.added(raw)  # add answers: the module was placed, then failed play
    entry = h.wait_removed(raw)
    assert "failed play" in entry["reason"], entry
    h.good_still_works(h.shared)


@pytest.mark.parametrize("kind", ["pool", "queue"])
def test_two_answers_to_play_remove_the_module_at_its_next_command(kind):
    h = Host(kind)
    try:
        raw = h.add_raw(play=False)
        raw.expect("play")
        # Both answers in one write, so the second is with the service before the next command is
        # sent (an extra answer that arrives later is indistinguishable from a real one).
        raw.answer(raw=protocol.encode_line({"success": True})
                   + protocol.encode_line({"success": True, "result": "a second answer"}))
        h.added(raw)
        COUNTS["modules:double-answer"] += 1
        good = h.ok("add", type="good")["uid"]  # in the queue it goes below the raw one, suspended
        answer = h("tell_module", uid=raw.uid, cmd="echo", args={"n": 2})
        assert answer["success"] is False and "answered a command twice" in answer["error"], answer
        h.wait_removed(raw)
        h.good_still_works(good)
    finally:
        h.close()


def test_answer_split_across_writes_and_late_answer(host):
    """An answer in pieces is fine; an answer that comes after the timeout breaks the module."""
    good = host.ok("add", type="good")["uid"]
    raw = host.add_raw()
    result = {}
    thread = threading.Thread(target=lambda: result.update(a=host("tell_module", uid=raw.uid, cmd="x")))
    thread.start()
    raw.expect("do_x")
    for piece in (b'{"succ', b'ess": tr', b'ue, "result": [1, ', b'2]}\n'):
        raw.answer(raw=piece)
    thread.join(10)
    assert result["a"] == {"success": True, "result": [1, 2]}
    COUNTS["modules:split-answer"] += 1
    thread = threading.Thread(target=lambda: result.update(b=host("tell_module", uid=raw.uid, cmd="y")))
    thread.start()
    raw.expect("do_y")
    thread.join(10)  # command_timeout is 0.5 s
    assert result["b"]["success"] is False and "no answer to do_y within 0.5 s" in result["b"]["error"]
    host.wait_removed(raw)
    host.good_still_works(good)
