"""The wire codec, without sockets."""

import json

import pytest

from shmooze import protocol
from shmooze.protocol import BodyError, Command, Invalid, LineBuffer, LineTooLong


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
    assert list(buf.feed(b'a\nbb\nc')) == [b"a", b"bb"]
    assert buf.pending == 1
    assert list(buf.feed(b"c\n")) == [b"cc"]
    assert buf.pending == 0


def test_line_buffer_refuses_long_lines_and_recovers():
    buf = LineBuffer(max_line=4)
    with pytest.raises(LineTooLong):
        list(buf.feed(b"123456"))
    assert list(buf.feed(b"\nok\n")) == [b"", b"ok"]
    with pytest.raises(LineTooLong):
        list(buf.feed(b"1234567\nok\n"))
    assert list(buf.feed(b"")) == [b"ok"]
