"""The service base and its HTTP side, in-process with Werkzeug's test client."""

import json

import pytest
from werkzeug.test import Client

from shmooze.http.jsonapp import service_app
from tests.sample_service import Sample


@pytest.fixture
def client():
    return Client(service_app(Sample(), max_body_bytes=4096))


def post(client, body, content_type="application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    resp = client.post("/", data=data, content_type=content_type)
    assert resp.headers["Content-Type"] == "application/json"
    return resp.status_code, json.loads(resp.get_data())


def test_command_with_result(client):
    assert post(client, {"cmd": "add", "args": {"a": 2, "b": 3}}) == (200, {"success": True, "result": 5})


def test_args_may_be_left_out_and_none_result_is_left_out(client):
    assert post(client, {"cmd": "nothing"}) == (200, {"success": True})
    assert post(client, {"cmd": "echo"}) == (200, {"success": True, "result": {}})


def test_text_json_is_accepted(client):
    assert post(client, {"cmd": "add", "args": {"a": 1}}, "text/json") == (200, {"success": True, "result": 1})
    assert post(client, {"cmd": "add", "args": {"a": 1}}, "application/json; charset=utf-8")[0] == 200


def test_batch_answers_in_order_and_failures_are_isolated(client):
    status, answers = post(client, [{"cmd": "add", "args": {"a": 1}}, {"cmd": "nope"}, 7,
                                    {"cmd": "refuse"}, {"cmd": "add", "args": {"a": 2}}])
    assert status == 200
    assert answers[0] == {"success": True, "result": 1}
    assert answers[1]["success"] is False and "unknown command" in answers[1]["error"]
    assert answers[2]["success"] is False
    assert answers[3] == {"success": False, "error": "no, because the queue is full"}
    assert answers[4] == {"success": True, "result": 2}


@pytest.mark.parametrize("body, fragment", [
    (42, "must be an object"),
    ({"args": {}}, "no 'cmd'"),
    ({"cmd": "add", "args": [1]}, "must be an object"),
    ({"cmd": "launch_missiles"}, "unknown command 'launch_missiles'"),
    ({"cmd": "_private"}, "unknown command"),
    ({"cmd": "start"}, "unknown command"),
    ({"cmd": "add", "args": {}}, "missing argument 'a'"),
    ({"cmd": "add", "args": {"a": 1, "c": 2}}, "unknown argument 'c'"),
    ({"cmd": "add", "args": {"a": "1"}}, "argument 'a' must be an integer, not a string"),
    ({"cmd": "add", "args": {"a": True}}, "must be an integer, not a boolean"),
    ({"cmd": "typed", "args": {"name": "x", "uids": "abc"}}, "'uids' must be a list of strings"),
    ({"cmd": "typed", "args": {"name": "x", "uids": ["a", 1]}}, "'uids' must be a list"),
    ({"cmd": "typed", "args": {"name": "x", "uids": [], "ratio": "1"}}, "'ratio' must be a number"),
    ({"cmd": "typed", "args": {"name": "x", "uids": [], "extra": 3}}, "'extra' must be an object or null"),
    ({"cmd": "bug"}, "ZeroDivisionError"),
    ({"cmd": "not_json"}, "not JSON"),
])
def test_command_errors_are_success_false_with_http_200(client, body, fragment):
    status, answer = post(client, body)
    assert status == 200
    assert answer["success"] is False
    assert fragment in answer["error"], answer["error"]


def test_typed_accepts_right_types(client):
    status, answer = post(client, {"cmd": "typed", "args": {"name": "x", "uids": ["a"], "ratio": 2, "extra": None}})
    assert answer == {"success": True, "result": {"name": "x", "uids": ["a"], "flag": False, "ratio": 2,
                                                  "extra": None}}


def test_service_keeps_serving_after_errors(client):
    for body in ({"cmd": "bug"}, b"{", {"cmd": "nope"}):
        post(client, body)
    assert post(client, {"cmd": "add", "args": {"a": 5}}) == (200, {"success": True, "result": 5})


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "not JSON"),
    (b"\xff", 400, "not UTF-8"),
    (b"[" * 50000, 400, "nested too deeply"),
    (b"[" * 50000 + b"]" * 50000, 400, "nested too deeply"),
])
def test_bodies_that_are_not_json_are_400(body, status, fragment):
    code, answer = post(Client(service_app(Sample())), body)
    assert code == status and answer["success"] is False and fragment in answer["error"]


def test_wrong_method_is_405_json(client):
    resp = client.get("/")
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "POST"
    assert json.loads(resp.get_data())["success"] is False


@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data", ""])
def test_other_content_types_are_415(client, ctype):
    resp = client.post("/", data=b'{"cmd": "nothing"}', headers={"Content-Type": ctype} if ctype else {})
    assert resp.status_code == 415
    assert "application/json" in json.loads(resp.get_data())["error"]


def test_oversized_body_is_413(client):
    status, answer = post(client, {"cmd": "echo", "args": {"x": "y" * 5000}})
    assert status == 413 and "limit of 4096 bytes" in answer["error"]


def test_oversized_chunked_body_is_413(client):
    body = json.dumps({"cmd": "echo", "args": {"x": "y" * 5000}}).encode()
    resp = client.post("/", input_stream=__import__("io").BytesIO(body),
                       headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                       environ_overrides={"wsgi.input_terminated": True})
    assert resp.status_code == 413


def test_builtin_commands():
    svc = Sample()
    c = Client(service_app(svc))
    _, answer = post(c, {"cmd": "status"})
    assert answer["result"]["service"] == "sample" and answer["result"]["pid"] > 0
    _, answer = post(c, {"cmd": "commands"})
    assert "add" in answer["result"] and "status" in answer["result"] and "_private" not in answer["result"]
    svc.changed("thing", x=1)
    _, answer = post(c, {"cmd": "changes", "args": {"since": 0}})
    assert answer["result"]["version"] == svc.events.base + 1  # versions start at the instance's epoch
    assert answer["result"]["events"][0]["kind"] == "thing" and answer["result"]["events"][0]["x"] == 1
