"""What a newcomer meets first in ``shmz`` and the Python client: URLs, errors, help.

The volume service and the gateway run as real gunicorn daemons; the resolver failure is
injected in-process (no name is looked up on the network).
"""

import json
import re
import select
import shlex
import signal
import socket
import subprocess
import time

import pytest

from shmooze.cli import shmz as shmz_cli
from shmooze.commands import command
from shmooze.errors import ServiceError, TransportError
from shmooze.service import Service
from shmooze.testing.processes import stuck_state
from tests.helpers import PYTHON, ROOT, Stack, free_port


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("shmz"), {"volume": "jukebox.volume:Volume", "queue": "jukebox.app:make_queue"},
               public=["ports"], gateway_workers=1, stop_timeout=3) as stack:
        yield {"port": stack.ports["wsgi"], "url": stack.url}


def shmz(url, *args):
    return subprocess.run([PYTHON, "-m", "shmooze.cli.shmz", "--url", url, *args],
                          capture_output=True, text=True, timeout=30)


def one_line(stderr):
    assert stderr.endswith("\n") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    return stderr.rstrip("\n")


def test_a_url_without_a_scheme_works(app):
    proc = shmz(f"127.0.0.1:{app['port']}", "volume", "set_volume", "level=21")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"level": 21, "muted": False}


def test_an_unresolvable_host_is_one_whole_line(monkeypatch, capsys):
    def no_such_host(host, *rest, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    assert shmz_cli.main(["--url", "jukebox.example:8080", "--timeout", "5", "volume", "status"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == ("shmz: cannot reach http://jukebox.example:8080/volume: "
                    "cannot find host 'jukebox.example' (Name or service not known)")


def test_command_errors_name_the_command_once(app):
    proc = shmz(app["url"], "volume", "set_volume")
    assert proc.returncode == 1
    assert one_line(proc.stderr) == "shmz: volume set_volume: missing argument 'level'"
    proc = shmz(app["url"], "volume", "set_volume", "level=400")
    assert proc.returncode == 1
    assert one_line(proc.stderr) == "shmz: volume set_volume: level must be from 0 to 100, not 400"


def test_a_service_alone_says_the_command_is_missing(app):
    proc = shmz(app["url"], "volume")
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert "which command of volume" in line and "shmz volume commands" in line and "args" not in line
    proc = shmz(app["url"], "watch")
    assert proc.returncode == 2 and "watch which service" in one_line(proc.stderr)


def test_bad_json_in_a_value_is_a_usage_error(app):
    proc = shmz(app["url"], "volume", "set_volume", "args={bad")
    assert proc.returncode == 2
    assert one_line(proc.stderr).startswith("shmz: args: not valid JSON (")
    assert shmz_cli.parse_args(["text=hello", "n=3", "x=[1]"]) == {"text": "hello", "n": 3, "x": [1]}


def test_commands_show_arguments_types_and_defaults(app):
    proc = shmz(app["url"], "volume", "commands")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "set_volume(level: int)" in lines
    assert "step(by: int = 5)" in lines
    assert "mute(muted: bool = true)" in lines
    assert "changes(since: int = 0, timeout: float = 0.0, stream: bool = false)" in lines
    assert lines[lines.index("set_volume(level: int)") + 1] == "    Set the level; it must be from 0 to 100."
    raw = json.loads(shmz(app["url"], "--json", "volume", "commands").stdout)
    assert raw["step"] == {"args": [{"name": "by", "type": "int", "required": False, "default": 5}],
                           "doc": "Raise (or, with a negative step, lower) the level, staying within 0 to 100.",
                           "read_only": False}
    assert raw["get_volume"]["read_only"] is True


def test_help_shows_one_commands_description(app):
    proc = shmz(app["url"], "volume", "help", "step")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "step(by: int = 5)"
    assert "Raise (or, with a negative step, lower) the level" in proc.stdout
    proc = shmz(app["url"], "volume", "help", "nosuch")
    assert proc.returncode == 2 and "no command 'nosuch'" in one_line(proc.stderr)
    assert "set_volume" in proc.stderr
    proc = shmz(app["url"], "volume", "help")
    assert proc.returncode == 2 and "shmz volume help CMD" in one_line(proc.stderr)


class Described(Service):
    name = "described"

    @command(read_only=True)
    def fetch(self, uid: str, fields: list[str], limit: int | None = None, **more):
        """Fetch a thing.

        Longer text.
        """


def test_commands_answer_describes_each_command():
    answer = Described().commands()
    assert answer["fetch"] == {
        "args": [{"name": "uid", "type": "str", "required": True},
                 {"name": "fields", "type": "list[str]", "required": True},
                 {"name": "limit", "type": "int | None", "required": False, "default": None}],
        "doc": "Fetch a thing.\n\nLonger text.", "more_args": True, "read_only": True}
    assert {"status", "changes", "commands", "fetch"} <= set(answer)
    json.dumps(answer)  # it goes over the wire as it is


def test_client_from_the_package_top_level_keeps_module_imports_light():
    code = ("import sys, shmooze, shmooze.modules; assert 'requests' not in sys.modules, 'imported too early'; "
            "from shmooze import Client, ShmoozeError; c = Client('127.0.0.1:9'); print(c.url, ShmoozeError.__name__)")
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["http://127.0.0.1:9/", "ShmoozeError"]


def test_client_errors_for_a_refused_connection_stay_short():
    from shmooze import Client

    with pytest.raises(TransportError) as info:
        Client(f"127.0.0.1:{free_port()}", timeout=5).volume.status()
    assert str(info.value).endswith("/volume: connection refused")


def readme_block(heading, language, page="README.md"):
    """The first ``language`` code block after ``heading`` in the README (or another page)."""
    text = (ROOT / page).read_text()
    start = text.index(heading)
    match = re.compile(r"^( *)```" + language + r"\n(.*?)^ *```", re.S | re.M).search(text, start)
    indent = len(match.group(1))
    return "\n".join(line[indent:] for line in match.group(2).splitlines())


def test_the_readmes_terminal_example_works_and_shows_something_lasting(app):
    lines = [shlex.split(line, comments=True) for line in readme_block("## The demo", "sh").splitlines()]
    commands = [words[1:] for words in lines if words and words[0] == ".venv/bin/shmz"]
    assert len(commands) >= 3 and ["watch", "queue"] in commands
    base = [PYTHON, "-m", "shmooze.cli.shmz", "--url", app["url"]]
    for words in commands:
        if words[0] == "watch":
            continue
        proc = subprocess.run(base + words, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, (words, proc.stderr)
    # The countdown added above is still there for the next commands, and watch shows it count down.
    queue = json.loads(shmz(app["url"], "--json", "queue", "queue", 'parameters={"countdown": ["remaining"]}').stdout)
    assert [item["type"] for item in queue] == ["countdown"] and queue[0]["parameters"]["remaining"] > 30
    popen = subprocess.Popen(base + ["watch", "queue"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen, deadline = [], time.monotonic() + 20
        while len(seen) < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([popen.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                line = popen.stdout.readline()
                assert line, popen.stderr.read()
                event = json.loads(line)
                if "remaining" in event.get("set", {}):
                    seen.append(event["set"]["remaining"])
        assert len(seen) == 3 and seen == sorted(seen, reverse=True), seen
        popen.send_signal(signal.SIGINT)
        try:
            assert popen.wait(timeout=10) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError(f"shmz watch did not stop within 10 s of SIGINT: {stuck_state(popen.pid)}") from None
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    client_module_clear(app)


def client_module_clear(app):
    from shmooze import Client

    queue = Client(app["url"]).queue
    queue.rm(uids=[item["uid"] for item in queue.queue()])


def test_the_readmes_python_client_example_runs(app):
    code = readme_block("- **Python**", "python", "docs/services.md").replace('"127.0.0.1:8080"', repr(app["url"]))
    names = {}
    exec(compile(code, "README.md", "exec"), names)
    assert isinstance(names["uid"], str)
    assert isinstance(names["listing"].result, list) and names["wrong"].ok is False
    with pytest.raises(ServiceError, match="uids"):
        _ = names["wrong"].result
    client_module_clear(app)


@pytest.mark.parametrize("content, told", [(None, False), ('{"ports": ', True), ('{"ports": {"queue": 1}}', True)])
def test_the_default_url_falls_back_to_8080_and_tells_why_unless_there_are_no_settings(
        tmp_path, monkeypatch, capsys, content, told):
    from shmooze import settings

    path = tmp_path / "settings.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.delenv("SHMOOZE_URL", raising=False)
    monkeypatch.setenv("SHMOOZE_SETTINGS", str(path))
    monkeypatch.setattr(settings, "_current", None)
    assert shmz_cli.default_url() == "http://127.0.0.1:8080/"
    err = capsys.readouterr().err
    assert (str(path) in err and "using http://127.0.0.1:8080/" in err) if told else err == ""
    path.write_text('{"ports": {"wsgi": 8123}}')
    monkeypatch.setattr(settings, "_current", None)
    assert shmz_cli.default_url() == "http://127.0.0.1:8123/"
