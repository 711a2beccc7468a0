"""The wire codec, without sockets."""

import json

import pytest

from shmooze import protocol
from shmooze.protocol import BodyError, Command, Invalid, Line, LineBuffer, LineTooLong


def test_single_command_with_and_without_args():
    req = protocol.parse_request(b'{"cmd": "queue"}')
    assert req == protocol.Request([Command("queue", {})], batch=False)
    req = protocol.parse_request('{"cmd": "add", "args": {"type": "text"}}')
    assert req.items == [Command("add", {"type": "text"})]


def test_batch_keeps_order_and_isolates_bad_items():
    req = protocol.parse_request(b'[{"cmd": "a"}, 3, {"args": {}}, {"cmd": "b", "args": [1]}, {"cmd": "c"}]')
    assert req.batch
    assert req.items[0] == Command("a")
    assert isinstance(req.items[1], Invalid) and "object" in req.items[1].error
    assert isinstance(req.items[2], Invalid) and "no 'cmd'" in req.items[2].error
    assert isinstance(req.items[3], Invalid) and "'args'" in req.items[3].error
    assert req.items[4] == Command("c")


def test_empty_batch_is_an_empty_answer():
    req = protocol.parse_request(b"[]")
    assert req.items == [] and protocol.encode_answers(req, []) == b"[]"


@pytest.mark.parametrize("value, fragment", [
    (42, "a number"), ("queue", "a string"), (None, "null"), ({"cmd": 5}, "non-empty string"),
    ({"cmd": ""}, "non-empty string"), ({"cmd": "x", "args": "y"}, "must be an object"),
])
def test_values_that_are_not_commands(value, fragment):
    item = protocol.parse_request(json.dumps(value)).items[0]
    assert isinstance(item, Invalid)
    assert fragment in item.error


def test_extra_top_level_keys_are_ignored_but_args_are_kept():
    """The original framework ignored keys beside cmd and args (a client's tag, an id)."""
    req = protocol.parse_request(b'[{"cmd": "queue", "tag": 1}, {"cmd": "add", "args": {"a": 1}, "id": 7, "x": null}]')
    assert req.items == [Command("queue", {}), Command("add", {"a": 1})]


def test_null_args_mean_no_args():
    assert protocol.parse_request(b'{"cmd": "x", "args": null}').items == [Command("x", {})]


@pytest.mark.parametrize("body, fragment", [
    (b"", "not JSON"), (b"{", "not JSON"), (b"\xff\xfe", "not UTF-8"), (b"NaN", "not valid JSON"),
    (b'{"cmd": "x", "args": {"v": Infinity}}', "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b"1" * 5000, "not accepted"),
])
def test_bodies_that_are_not_json(body, fragment):
    with pytest.raises(BodyError) as info:
        protocol.parse_request(body)
    assert fragment in str(info.value)


def test_answers_encode_compactly():
    assert protocol.ok() == {"success": True}
    assert protocol.ok(None) == {"success": True}
    assert protocol.ok(0) == {"success": True, "result": 0}
    assert protocol.error("no") == {"success": False, "error": "no"}
    req = protocol.parse_request(b'{"cmd": "a"}')
    assert protocol.encode_answers(req, [protocol.ok([1])]) == b'{"success":true,"result":[1]}'
    assert protocol.encode_line({"cmd": "play"}) == b'{"cmd":"play"}\n'
    assert Command("play").to_json() == {"cmd": "play", "args": {}}  # module lines always carry args
    assert Command("init", {"a": 1}).to_json() == {"cmd": "init", "args": {"a": 1}}


def test_parse_answer():
    assert protocol.parse_answer({"success": True, "result": 3}) == (True, 3)
    assert protocol.parse_answer({"success": True}) == (True, None)
    assert protocol.parse_answer({"success": False, "error": "bad"}) == (False, "bad")
    ok, msg = protocol.parse_answer({"success": False})
    assert not ok and "without a message" in msg
    ok, msg = protocol.parse_answer([1])
    assert not ok and "malformed" in msg


def test_line_buffer_splits_and_keeps_partial_lines():
    buf = LineBuffer(max_line=10)
    assert buf.events(b'a\nbb\nc') == [Line(b"a"), Line(b"bb")]
    assert buf.pending == 1 and buf.next_event() is None
    assert buf.events(b"c\n") == [Line(b"cc")]
    assert buf.pending == 0


def test_line_buffer_hands_out_one_event_at_a_time_and_keeps_the_rest():
    buf = LineBuffer(max_line=10)
    buf.feed(b"one\ntwo\nthr")
    assert buf.next_event() == Line(b"one")
    assert buf.pending == len(b"two\nthr")
    assert buf.next_event() == Line(b"two")
    assert buf.next_event() is None
    buf.feed(b"ee\n")
    assert buf.next_event() == Line(b"three")


def test_an_over_long_line_is_one_event_and_its_tail_is_not_a_line():
    buf = LineBuffer(max_line=4)
    assert buf.events(b"123456") == [LineTooLong(4)]  # reported once the limit is passed
    assert buf.pending == 0
    assert buf.events(b"789") == []  # still the same line: dropped
    assert buf.events(b"0\nok\n") == [Line(b"ok")]  # the tail up to its newline is dropped, not answered
    assert buf.events(b"1234567\nok\n") == [LineTooLong(4), Line(b"ok")]  # newline in the same chunk
    assert str(LineTooLong(4)) == "line longer than 4 bytes"


def test_a_line_of_exactly_the_limit_passes():
    buf = LineBuffer(max_line=4)
    assert buf.events(b"1234\n12345\n") == [Line(b"1234"), LineTooLong(4)]
    assert buf.events(b"1234") == [] and buf.events(b"\n") == [Line(b"1234")]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_any_cut_of_the_stream_gives_the_same_events(chunk):
    stream = b"ok\n" + b"x" * 23 + b"\nfine\n" + b"y" * 9 + b"\n\nlast\n"
    buf = LineBuffer(max_line=8)
    events = []
    for i in range(0, len(stream), chunk):
        events += buf.events(stream[i:i + chunk])
    assert events == [Line(b"ok"), LineTooLong(8), Line(b"fine"), LineTooLong(8), Line(b""), Line(b"last")]


def test_a_real_module_sending_over_long_lines_gets_one_error_each_and_goes_on(caplog):
    """Over-long lines on the update stream and on stdout, each cut across several reads."""
    import logging

    from shmooze.moduletype import python_module
    from shmooze.queue import Queue
    from tests.helpers import ROOT, wait_for

    caplog.set_level(logging.INFO, logger="shmooze.hosting.moduleprocess")
    q = Queue([python_module("long", str(ROOT / "tests" / "modules" / "longline.py"), "4096",
                             rm_timeout=2, term_timeout=1)], max_line=4096)
    q.start()
    try:
        answer = q.dispatch(Command("add", {"type": "long"}))
        assert answer["success"], answer
        uid = answer["result"]["uid"]

        def answers():
            return q.ask_module(uid, ["answers"]).get("answers")

        got = wait_for(answers, 10, what="the module's report of its update answers")
        assert got[0] == {"success": False, "error": "update refused: line longer than 4096 bytes"}
        assert got[1] == {"success": True}  # the tail of the long line was not taken for a line
        assert q.ask_module(uid, ["after"]) == {"after": 1}

        def logged():
            return [r.getMessage() for r in caplog.records if f"module {uid} " in r.getMessage()]

        wait_for(lambda: any(m.endswith(": after the long line") for m in logged()), 10, what="the line after")
        lines = [m.rsplit(": ", 1)[1] for m in logged()]
        assert lines.count("[output line over the line limit dropped]") == 1
        assert not any(line.startswith("y") for line in lines)  # no piece of it logged as a line
        assert q.status()["modules"][0]["uid"] == uid  # still running
    finally:
        q.stop()
