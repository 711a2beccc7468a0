"""Property tests of the HTTP command surface: the service app and the gateway, in-process.

Random JSON values, random bytes (invalid UTF-8 included), deep nesting, huge numbers,
NaN/Infinity text, batches mixing good and bad items, and a wrong type for every argument
of every queue and pool command. Whatever comes in, the answer is JSON with the fitting
status (200 with ``success`` for JSON, 400 for what is not JSON), never a 500 or a
traceback, a batch answer has the batch's length, and the service still answers
``status`` afterwards.

No module is started here: the fuzzed module type names never match a real one.
The number of inputs tried per surface is printed at the end of the module.
"""

from __future__ import annotations

import collections
import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.serving import make_server
from werkzeug.test import Client

from shmooze import protocol
from shmooze.commands import CommandSpec, declared, spec_of
from shmooze.gateway.app import Gateway
from shmooze.http.jsonapp import service_app
from shmooze.pool import Pool
from shmooze.queue import Queue
from shmooze.service import type_matches
from shmooze.settings import Settings
from tests.apps import TYPES
from tests.helpers import ROOT, report_line
from tests.sample_service import Sample

COUNTS: collections.Counter[str] = collections.Counter()
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
TOKEN = "s3cret-token"
# ``changes`` waits up to ``timeout`` seconds when its arguments are right: fuzzed only with wrong types.
SLOW = {"changes"}


@pytest.fixture(autouse=True, scope="module")
def report_counts(request):
    yield
    report_line(request, f"fuzz inputs tried (test_fuzz_http): {sum(COUNTS.values())} total; "
                + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items())))


# -- the services under test -------------------------------------------------------------

def make_queue() -> Queue:
    from shmooze.moduletype import python_module

    return Queue(TYPES, backgrounds=[python_module("bg", str(ROOT / "tests" / "modules" / "misbehave.py"))])


@pytest.fixture(scope="module")
def services():
    svcs = {"queue": make_queue(), "pool": Pool(TYPES), "sample": Sample()}
    yield svcs
    for svc in svcs.values():
        svc.stop()


@pytest.fixture(scope="module")
def clients(services):
    return {name: Client(service_app(svc, max_body_bytes=64 << 10)) for name, svc in services.items()}


@pytest.fixture(scope="module")
def backend(services):
    """The queue served over real HTTP, for the gateway to forward to."""
    server = make_server("127.0.0.1", 0, service_app(services["queue"], max_body_bytes=64 << 10), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(5)


def gateway_client(port: int, **extra) -> Client:
    data = {"ports": {"wsgi": 1, "queue": port}, "static_path": str(ROOT / "tests" / "static"),
            "max_body_bytes": 64 << 10, **extra}
    return Client(Gateway(Settings(data)))


@pytest.fixture(scope="module")
def gateways(backend):
    return {"open": gateway_client(backend), "token": gateway_client(backend, access_token=TOKEN)}


# -- strategies --------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10 ** 300), max_value=10 ** 300)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)

def specs(svc) -> dict[str, CommandSpec]:
    """A service's commands, each with its arguments and their types (what ``commands`` describes)."""
    return {name: spec_of(name, getattr(svc, name)) for name in declared(type(svc))}


QUEUE_COMMANDS = sorted(set(specs(make_queue())) - SLOW)
ARG_NAMES = sorted({p for svc in (make_queue(), Pool(TYPES)) for spec in specs(svc).values() for p in spec.params})


def command_like(names=QUEUE_COMMANDS):
    """Objects that look like commands: real or random names, real or random argument names."""
    args = st.dictionaries(st.sampled_from(ARG_NAMES) | st.text(max_size=8), json_values, max_size=4)
    return st.fixed_dictionaries(
        {"cmd": st.sampled_from(names) | st.text(max_size=12).filter(lambda c: c not in SLOW) | json_values},
        optional={"args": args | json_values, "id": json_values, "extra": json_values})


items = command_like() | json_values
bodies = items | st.lists(items, max_size=6)
CONTENT_TYPES = ["application/json", "text/json", "application/json; charset=utf-8", "text/json; charset=UTF-8"]


# -- checks ------------------------------------------------------------------------------

def post(client: Client, body: bytes, path: str = "/", ctype: str = "application/json", headers=None):
    resp = client.post(path, data=body, content_type=ctype, headers=headers or {})
    assert resp.status_code != 500, resp.get_data()
    assert resp.headers["Content-Type"] == "application/json", (resp.status_code, resp.get_data()[:200])
    data = resp.get_data()
    assert b"Traceback" not in data
    return resp.status_code, json.loads(data)


def check_answer(answer) -> None:
    assert isinstance(answer, dict) and isinstance(answer.get("success"), bool), answer
    if answer["success"]:
        assert set(answer) <= {"success", "result"}
    else:
        assert isinstance(answer["error"], str) and answer["error"], answer


def check_json_reply(status: int, reply, value) -> None:
    """A body that is JSON: 200, one answer or a list of the same length."""
    assert status == 200, (status, reply)
    if isinstance(value, list):
        assert isinstance(reply, list) and len(reply) == len(value)
        for answer in reply:
            check_answer(answer)
    else:
        check_answer(reply)


def is_json(body: bytes) -> bool:
    try:
        protocol.loads(body)
    except protocol.BodyError:
        return False
    return True


def still_serving(client: Client, path: str = "/", headers=None) -> None:
    status, reply = post(client, b'{"cmd": "status"}', path, headers=headers)
    assert status == 200 and reply["success"] is True and reply["result"]["pid"] > 0


# -- the service app -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["queue", "pool", "sample"])
@FUZZ
@given(value=bodies, ctype=st.sampled_from(CONTENT_TYPES))
def test_any_json_body_is_answered(clients, name, value, ctype):
    COUNTS[f"service:{name}:json"] += 1
    body = json.dumps(value).encode()
    status, reply = post(clients[name], body, ctype=ctype)
    check_json_reply(status, reply, value)
    still_serving(clients[name])


@FUZZ
@given(body=st.binary(max_size=300) | st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_bytes_are_400_or_answered(clients, body):
    COUNTS["service:queue:bytes"] += 1
    status, reply = post(clients["queue"], body)
    if is_json(body):
        check_json_reply(status, reply, protocol.loads(body))
    else:
        assert status == 400 and reply["success"] is False and reply["error"].startswith("body is not")
    still_serving(clients["queue"])


NON_JSON_TEXT = [b"NaN", b"Infinity", b"-Infinity", b'{"cmd": "status", "args": {"x": NaN}}',
                 b'[{"cmd": "status"}, Infinity]', b"1e400", b'{"cmd": "add", "args": {"type": -1E999}}',
                 b"\xff", b"\xc3\x28", b'{"cmd": "st\xe9tus"}', b"\xef\xbb\xbf{}", b"", b" ", b"{", b"[", b"]",
                 b'{"cmd": "status"} {"cmd": "status"}', b"'cmd'", b"{'cmd': 'status'}", b"\x00",
                 b'{"cmd": "status",}', b"[1,]", b"tru", b'"\\ud800"x']


@pytest.mark.parametrize("body", NON_JSON_TEXT)
def test_non_json_text_is_400(clients, body):
    COUNTS["service:queue:non-json"] += 1
    status, reply = post(clients["queue"], body)
    assert status == 400 and reply["success"] is False, (body, status, reply)
    still_serving(clients["queue"])


@FUZZ
@given(digits=st.integers(min_value=300, max_value=20000), negative=st.booleans(), where=st.sampled_from(
    ["top", "cmd", "arg", "batch"]), exp=st.sampled_from(["", "e5", "e-400", ".5", "E+400"]))
def test_huge_numbers(clients, digits, negative, where, exp):
    COUNTS["service:queue:huge-number"] += 1
    number = ("-" if negative else "") + "9" * digits + exp
    body = {"top": number, "cmd": f'{{"cmd": {number}}}', "arg": f'{{"cmd": "history", "args": {{"limit": {number}}}}}',
            "batch": f'[{{"cmd": "status"}}, {number}]'}[where].encode()
    status, reply = post(clients["queue"], body)
    if status == 400:  # Python refuses integers of over 4300 digits and numbers that overflow to infinity
        assert "not accepted" in reply["error"] and ("digits" in reply["error"] or "out of range" in reply["error"])
    else:
        check_json_reply(status, reply, protocol.loads(body))
        if where == "arg":
            assert reply["success"] is False
    still_serving(clients["queue"])


def test_deep_nesting_every_depth(clients):
    """Every depth from 1 to 1100 as a body and as an echoed argument: 200 or 400, never 500."""
    for depth in range(1, 1101):
        COUNTS["service:sample:nesting"] += 2
        nested = "[" * depth + "]" * depth
        status, reply = post(clients["sample"], nested.encode())
        assert status in (200, 400)
        if status == 400:
            assert "nested too deeply" in reply["error"]
        status, reply = post(clients["sample"], f'{{"cmd": "echo", "args": {{"x": {nested}}}}}'.encode())
        assert status in (200, 400), (depth, status)
        if status == 200:
            check_answer(reply)
    still_serving(clients["sample"])


@FUZZ
@given(depth=st.integers(min_value=1, max_value=200000), kind=st.sampled_from("[{"))
def test_deep_nesting_random(clients, depth, kind):
    COUNTS["service:queue:nesting"] += 1
    body = ('{"a":' * depth + "1" + "}" * depth) if kind == "{" else ("[" * depth + "]" * depth)
    status, reply = post(clients["queue"], body.encode())
    if status == 413:
        assert len(body) > 64 << 10
    else:
        assert status in (200, 400)
    still_serving(clients["queue"])


VALID = [{"cmd": "status"}, {"cmd": "commands"}, {"cmd": "queue"}, {"cmd": "bg"}, {"cmd": "modules_available"},
         {"cmd": "backgrounds_available"}, {"cmd": "mv", "args": {"uids": []}}, {"cmd": "rm", "args": {"uids": []}},
         {"cmd": "queue", "args": {"parameters": {"good": ["x"]}}}]


@FUZZ
@given(batch=st.lists(st.tuples(st.booleans(), st.sampled_from(VALID), json_values), min_size=1, max_size=12))
def test_batches_mix_valid_and_invalid(clients, batch):
    COUNTS["service:queue:batch"] += 1
    body, expected = [], []
    for valid, command, junk in batch:
        if valid:
            body.append(command)
            expected.append(True)
        else:  # something that is never a successful queue command
            body.append(junk if not isinstance(junk, dict) else {"cmd": "no such command", "args": junk})
            expected.append(False)
    status, reply = post(clients["queue"], json.dumps(body).encode())
    check_json_reply(status, reply, body)
    assert [a["success"] for a in reply] == expected, (body, reply)
    still_serving(clients["queue"])


# -- wrong types for every argument of every command -----------------------------------------

WRONG_CANDIDATES = [None, True, False, 0, -1, 2 ** 70, 1.5, -0.0, "", "x", "0", [], [1], ["a", 1], [None], {}, {"a": 1},
                    {"a": ["b"]}, {"good": "x"}, {"good": [1]}, [[]], [{}]]
PLACEHOLDERS = {str: "nosuchthing", int: 1, float: 0.0, list: [], dict: {}}


def placeholder(hint):
    import typing

    if hint in PLACEHOLDERS:
        return PLACEHOLDERS[hint]
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        return PLACEHOLDERS[origin]
    for arg in typing.get_args(hint):  # Optional[...]
        if arg is not type(None):
            return placeholder(arg)
    return None


def every_argument(services, names=("queue", "pool")):
    out = []
    for name in names:
        for cmd, spec in sorted(specs(services[name]).items()):
            for param in spec.params:
                hint = spec.hints.get(param)
                if hint is not None and any(not type_matches(v, hint) for v in WRONG_CANDIDATES):
                    out.append((name, cmd, param))
    return out


def wrong_type_command(services, name, cmd, param, value):
    spec = specs(services[name])[cmd]
    args = {p: placeholder(spec.hints.get(p)) for p in spec.required}
    args[param] = value
    return {"cmd": cmd, "args": args}


def test_wrong_type_for_every_argument_of_every_command(services, clients):
    combos = every_argument(services)
    covered = {(n, c) for n, c, _ in combos}
    for name in ("queue", "pool"):  # every command with arguments is in there
        with_args = {c for c, s in specs(services[name]).items() if s.params}
        assert with_args <= {c for n, c in covered if n == name}, with_args
    assert len(combos) >= 25
    for name, cmd, param in combos:
        hint = specs(services[name])[cmd].hints[param]
        wrong = [v for v in WRONG_CANDIDATES if not type_matches(v, hint)]
        body = [wrong_type_command(services, name, cmd, param, v) for v in wrong]
        COUNTS[f"service:{name}:wrong-type"] += len(body)
        status, reply = post(clients[name], json.dumps(body).encode())
        check_json_reply(status, reply, body)
        for value, answer in zip(wrong, reply):
            assert answer["success"] is False, (cmd, param, value, answer)
            assert f"argument {param!r} must be" in answer["error"], answer
        still_serving(clients[name])


@FUZZ
@given(data=st.data())
def test_wrong_type_random_values(services, clients, data):
    name, cmd, param = data.draw(st.sampled_from(every_argument(services)))
    hint = specs(services[name])[cmd].hints[param]
    value = data.draw(json_values.filter(lambda v: not type_matches(v, hint)))
    COUNTS[f"service:{name}:wrong-type"] += 1
    status, reply = post(clients[name], json.dumps(wrong_type_command(services, name, cmd, param, value)).encode())
    check_json_reply(status, reply, {})
    assert reply["success"] is False and f"argument {param!r} must be" in reply["error"]
    still_serving(clients[name])


# -- the gateway ---------------------------------------------------------------------------

@FUZZ
@given(value=bodies)
def test_gateway_forwards_any_json_unchanged(gateways, value):
    COUNTS["gateway:json"] += 1
    status, reply = post(gateways["open"], json.dumps(value).encode(), "/queue")
    check_json_reply(status, reply, value)
    still_serving(gateways["open"], "/queue")


@FUZZ
@given(body=st.binary(max_size=200))
def test_gateway_random_bytes(gateways, body):
    COUNTS["gateway:bytes"] += 1
    for kind in ("open", "token"):
        status, reply = post(gateways[kind], body, "/queue", headers={"Authorization": f"Bearer {TOKEN}"})
        if is_json(body):
            check_json_reply(status, reply, protocol.loads(body))
        else:
            assert status == 400 and reply["success"] is False
    still_serving(gateways["token"], "/queue")


@FUZZ
@given(value=bodies, auth=st.sampled_from([None, f"Bearer {TOKEN}", "Bearer wrong", TOKEN + "x", "", "Bearer "]))
def test_gateway_with_token_any_json(gateways, services, value, auth):
    COUNTS["gateway:token-json"] += 1
    headers = {} if auth is None else {"Authorization": auth}
    status, reply = post(gateways["token"], json.dumps(value).encode(), "/queue", headers=headers)
    parsed = [protocol.to_item(v) for v in (value if isinstance(value, list) else [value])]
    needs = any(isinstance(i, protocol.Command) and i.cmd not in services["queue"].read_only_commands for i in parsed)
    if needs and auth != f"Bearer {TOKEN}":
        assert status == 401 and reply["success"] is False and "access token" in reply["error"]
    else:
        check_json_reply(status, reply, value)
    still_serving(gateways["token"], "/queue")


path_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%/", max_size=20)


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
       path=path_text | st.sampled_from(["queue", "settings.json", "ws", "static/", "static/app.css", "static/..%2f"]),
       ctype=st.sampled_from(CONTENT_TYPES + ["text/plain", "application/x-www-form-urlencoded", "", "multipart/form-data"]))
def test_gateway_any_path_and_method(gateways, method, path, ctype):
    COUNTS["gateway:routes"] += 1
    resp = gateways["open"].open("/" + path, method=method, data=b'{"cmd": "status"}', content_type=ctype or None)
    assert resp.status_code < 500, (method, path, resp.status_code, resp.get_data()[:200])
    if resp.headers.get("Content-Type") == "application/json":
        if method != "HEAD":
            answer = json.loads(resp.get_data())
            if resp.status_code != 200:
                assert answer["success"] is False and answer["error"]
    else:  # a static file
        assert resp.status_code in (200, 304) and method in ("GET", "HEAD"), (method, path, resp.status_code)
    still_serving(gateways["open"], "/queue")
