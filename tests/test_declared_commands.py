"""Declared commands: only methods marked ``@command`` are commands, each says whether it only
reads, and the gateway learns from the service (not from a list) which commands need the token.

In-process: the services are served over real HTTP by Werkzeug's server on free ports, the
gateway runs under Werkzeug's test client.
"""

from __future__ import annotations

import json
import threading

import pytest
from werkzeug.serving import make_server
from werkzeug.test import Client

from examples.jukebox.app import make_queue
from examples.jukebox.volume import Volume
from shmooze.commands import command
from shmooze.gateway.app import Gateway
from shmooze.http.jsonapp import service_app
from shmooze.service import Service
from shmooze.settings import Settings

TOKEN = "tok-declared"
GOOD = {"Authorization": f"Bearer {TOKEN}"}


class Lamp(Volume):
    """A service with a helper that is not a command, and one read-only command of its own."""

    name = "lamp"

    def apply_to_hardware(self) -> None:
        raise AssertionError("a helper must never be reachable from the wire")

    @command(read_only=True)
    def brightness(self) -> int:
        """The level as a brightness."""
        return self.level

    def mute(self, muted: bool = True) -> dict:  # overridden without the mark: still the command
        return super().mute(muted)


class Script(Service):
    """A quick script's service: every public method is a command."""

    expose_all = True

    def hello(self, who: str = "world") -> str:
        return f"hello {who}"

    def start(self) -> None:  # the base's life hook, overridden: still no command
        super().start()

    @command(read_only=True)
    def peek(self) -> int:
        return 1

    def _hidden(self) -> None:
        raise AssertionError("private")


def call(svc: Service, cmd: str, **args):
    return Client(service_app(svc)).post("/", json={"cmd": cmd, "args": args}).get_json()


def test_a_helper_that_is_not_declared_is_not_a_command():
    lamp = Lamp()
    answer = call(lamp, "apply_to_hardware")
    assert answer["success"] is False
    assert answer["error"].startswith("unknown command 'apply_to_hardware' for lamp (commands: ")
    assert "brightness" in answer["error"] and "apply_to_hardware" not in lamp.commands()
    assert call(lamp, "_lock")["success"] is False  # nor attributes, nor private names
    assert call(lamp, "limit_commands", slots=1)["error"].startswith("unknown command")


def test_commands_tell_each_ones_arguments_and_whether_it_only_reads():
    lamp = Lamp()
    described = lamp.commands()
    assert set(described) == {"status", "changes", "commands", "metrics", "get_volume", "set_volume", "step",
                              "mute", "brightness"}
    assert described["brightness"] == {"args": [], "doc": "The level as a brightness.", "read_only": True}
    assert described["set_volume"]["read_only"] is False
    assert described["set_volume"]["args"] == [{"name": "level", "type": "int", "required": True}]
    assert described["mute"]["read_only"] is False  # kept from Volume's declaration
    assert call(lamp, "mute", muted=True)["result"]["muted"] is True
    assert lamp.read_only_commands == {"status", "changes", "commands", "metrics", "get_volume", "brightness"}


def test_expose_all_makes_every_public_method_a_command():
    script = Script()
    assert call(script, "hello", who="you") == {"success": True, "result": "hello you"}
    assert call(script, "_hidden")["success"] is False
    described = script.commands()
    assert described["hello"]["read_only"] is False and described["peek"]["read_only"] is True
    assert "limit_commands" not in described and "dispatch" not in described  # the base's methods stay out
    assert "start" not in described

    class More(Script):  # a subclass of an exposed class is exposed too
        def wave(self) -> str:
            return "o/"

    assert call(More(), "wave") == {"success": True, "result": "o/"}


def test_the_queue_and_pool_declare_their_commands():
    queue = make_queue()
    try:
        assert queue.read_only_commands == {
            "status", "changes", "commands", "metrics", "modules_available", "backgrounds_available", "queue",
            "bg", "ask_module", "ask_background", "history", "output"}
        changing = set(queue.commands()) - queue.read_only_commands
        assert changing == {"add", "set_bg", "rm", "mv", "tell_module", "tell_background"}
    finally:
        queue.stop()


def test_module_descriptions_reach_clients_through_modules_available():
    queue = make_queue()
    try:
        assert call(queue, "modules_available")["result"] == ["banner", "countdown", "shout", "text"]
        described = call(queue, "modules_available", describe=True)["result"]
        assert {"name": "shout", "description": "a bash module that shouts back"} in described
        assert [d["name"] for d in described] == ["banner", "countdown", "shout", "text"]
        assert call(queue, "backgrounds_available", describe=True)["result"] == [
            {"name": "clock", "description": "the time"}]
    finally:
        queue.stop()


class Served:
    """A service on a real port that can be replaced by another on the same port (a restart)."""

    def __init__(self, svc: Service, port: int = 0):
        self.server = make_server("127.0.0.1", port, service_app(svc), threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def post(gw: Client, body, headers=None, path="/lamp"):
    resp = gw.post(path, data=json.dumps(body), content_type="application/json", headers=headers or {})
    return resp.status_code, resp.get_json()


@pytest.fixture
def lamp_gateway():
    served = Served(Lamp())
    gateway = Gateway(Settings({"ports": {"wsgi": 1, "lamp": served.port}, "access_token": TOKEN}))
    yield served, gateway, Client(gateway)
    served.stop()


def test_the_gateway_learns_read_only_commands_from_the_service(lamp_gateway):
    _, _, gw = lamp_gateway
    for cmd in ("get_volume", "brightness", "status", "commands"):  # the service's own reads need no token
        status, answer = post(gw, {"cmd": cmd})
        assert (status, answer["success"]) == (200, True), (cmd, answer)
    for cmd, args in (("set_volume", {"level": 3}), ("mute", {}), ("step", {})):
        status, answer = post(gw, {"cmd": cmd, "args": args})
        assert status == 401 and "access token" in answer["error"], cmd
        status, answer = post(gw, {"cmd": cmd, "args": args}, GOOD)
        assert (status, answer["success"]) == (200, True), (cmd, answer)
    assert post(gw, [{"cmd": "brightness"}, {"cmd": "step"}])[0] == 401  # a batch with one change
    status, answer = post(gw, {"cmd": "apply_to_hardware"})
    assert status == 401  # not declared read-only: needs the token, and even with it...
    status, answer = post(gw, {"cmd": "apply_to_hardware"}, GOOD)
    assert status == 200 and answer["success"] is False and "unknown command" in answer["error"]


def test_open_commands_setting_still_adds_to_what_services_declare():
    served = Served(Lamp())
    try:
        gw = Client(Gateway(Settings({"ports": {"wsgi": 1, "lamp": served.port}, "access_token": TOKEN,
                                      "open_commands": ["step"]})))
        assert post(gw, {"cmd": "step"})[1]["success"] is True
        assert post(gw, {"cmd": "mute"})[0] == 401
    finally:
        served.stop()


class LampV2(Lamp):
    """The lamp after an upgrade: ``glow`` is a new read, ``step`` became one."""

    @command(read_only=True)
    def glow(self) -> str:
        return "warm"

    @command(read_only=True)
    def step(self, by: int = 5) -> dict:  # now declared read-only (for the test's sake)
        return self.get_volume()


def test_the_gateway_asks_again_after_the_service_restarts(lamp_gateway):
    served, gateway, gw = lamp_gateway
    gateway.declared["lamp"].min_interval = 0.0
    assert post(gw, {"cmd": "brightness"})[1]["success"] is True
    assert post(gw, {"cmd": "step"})[0] == 401
    served.stop()
    gateway.proxies["lamp"].close()  # what the service's death does to the kept-alive connections
    status, answer = post(gw, {"cmd": "brightness"})  # the service is down: the gateway cannot tell
    assert status in (401, 502), answer
    status, answer = post(gw, {"cmd": "status"}, GOOD)
    assert status == 502 and answer["success"] is False
    restarted = Served(LampV2(), served.port)
    try:
        # A command changed to read-only: learned because the forward failed meanwhile.
        assert post(gw, {"cmd": "step"}) == (200, {"success": True, "result": {"level": 50, "muted": False}})
        assert post(gw, {"cmd": "glow"}) == (200, {"success": True, "result": "warm"})
        assert post(gw, {"cmd": "set_volume", "args": {"level": 1}})[0] == 401
    finally:
        restarted.stop()


def test_a_new_command_is_learned_without_a_failure_in_between(lamp_gateway):
    served, gateway, gw = lamp_gateway
    gateway.declared["lamp"].min_interval = 0.0
    assert post(gw, {"cmd": "brightness"})[1]["success"] is True
    served.stop()  # restarted between two requests: the gateway saw no failure
    gateway.proxies["lamp"].close()
    restarted = Served(LampV2(), served.port)
    try:
        assert post(gw, {"cmd": "glow"}) == (200, {"success": True, "result": "warm"})  # unknown name: asked
    finally:
        restarted.stop()


def test_while_the_service_cannot_answer_only_the_base_reads_are_open():
    served = Served(Lamp())
    port = served.port
    served.stop()
    gw = Client(Gateway(Settings({"ports": {"wsgi": 1, "lamp": port}, "access_token": TOKEN})))
    status, answer = post(gw, {"cmd": "get_volume"})  # unknown: fail closed, saying why (the outage, not a 401)
    assert status == 502 and "down" in answer["error"], answer
    status, answer = post(gw, {"cmd": "status"})
    assert status == 502 and "down" in answer["error"]  # a base read passes the token check
