"""What a newcomer meets in the first hour, second pass (issue 29): a module that fails to start says
why, ``shmz logs`` of a quiet module, ``--version``, help and completion, argument errors that name the
element and say how to send text, ``commands`` in whole plain sentences, a plain service's CPU and
memory, ``status --json`` of a stopped app, and the package's ``py.typed``.

The services and the gateway run as real processes (:class:`tests.helpers.Stack`); ``shmz`` and
``shmooze`` run as the user runs them.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from shmooze import __version__
from shmooze.client import Client
from shmooze.commands import plain, summary
from shmooze.errors import ServiceError, telling_line
from shmooze.service import mismatch
from tests.helpers import PYTHON, ROOT, Stack, free_port, shmooze_argv, wait_for, write_settings


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("firsthour")
    with Stack(tmp, {"queue": "tests.apps:make_first_hour_queue", "volume": "jukebox.volume:Volume"},
               public=["ports"], run_path=str(tmp / "run"), gateway_workers=1, stop_timeout=3) as stack:
        yield {"url": stack.url, "client": Client(stack.url)}


def shmz(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "shmooze.cli.shmz", "--url", url, *args], capture_output=True, text=True,
                          timeout=30)


# -- 1. a module that fails to start says why -------------------------------------------------------------


@pytest.mark.parametrize("kind,cause", [
    ("crasher", "it printed: ModuleNotFoundError: No module named 'nope_not_here'"),
    ("missing", "can't open file"),
    ("init-crash", "exited with status 4; it printed: crashing in init"),  # a crash after connecting
])
def test_a_module_that_fails_to_start_says_why_in_the_answer(app, kind, cause):
    with pytest.raises(ServiceError) as failed:
        app["client"].queue.call("add", {"type": kind})
    message = str(failed.value)
    assert cause in message, message
    assert message.count("exited with status") == 1, message  # the clause once
    uid = message.split("(uid ", 1)[1].split(")", 1)[0]
    assert f"module {kind!r} (uid {uid}) failed to start: " in message
    ended = [m for m in app["client"].queue.status()["ended"] if m["uid"] == uid]
    assert ended and cause in ended[0]["reason"], ended  # status says the same


def test_a_module_that_answers_why_its_init_failed_is_not_second_guessed(app):
    with pytest.raises(ServiceError) as failed:
        app["client"].queue.call("add", {"type": "init-error"})
    assert str(failed.value).endswith("failed to start: init failed (--init-error)"), str(failed.value)


def test_the_telling_line_of_some_output():
    traceback = ["Traceback (most recent call last):", '  File "app.py", line 1, in <module>',
                 "    import nope", "ModuleNotFoundError: No module named 'nope'"]
    assert telling_line(traceback) == "ModuleNotFoundError: No module named 'nope'"
    assert telling_line(["shmooze.errors.SettingsError: 'app' has no 'make_queu'", "[INFO] Worker exiting"]) == \
        "SettingsError: 'app' has no 'make_queu'"
    node = ["node:internal/modules/cjs/loader:1080", "  throw err;", "Error: Cannot find module '/x.js'",
            "    at Module._resolveFilename", "", "Node.js v18.19.0"]
    assert telling_line(node) == "Error: Cannot find module '/x.js'"
    assert telling_line(["just a line"]) == "just a line" and telling_line([]) is None


def test_a_typo_in_a_factory_is_the_first_line_of_a_failed_run(tmp_path):
    (tmp_path / "myapp.py").write_text("def make_queue():\n    raise RuntimeError('not reached')\n")
    path = write_settings(tmp_path / "settings.json", ports={"wsgi": free_port(), "queue": free_port()},
                          services={"queue": "myapp:make_queu"}, run_path=str(tmp_path / "run"), stop_timeout=3)
    run = subprocess.run(shmooze_argv("run", str(path)), capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert run.returncode == 1, run.stdout + run.stderr
    said = [line for line in (run.stdout + run.stderr).splitlines() if "failed to start" in line]
    assert said and said[0].startswith("shmooze: service 'queue' failed to start (") and \
        said[0].split("): ", 1)[1].startswith("SettingsError: 'myapp' has no 'make_queu'"), run.stdout + run.stderr


def test_every_bad_module_types_value_is_reported(tmp_path):
    path = write_settings(tmp_path / "settings.json", ports={"queue": free_port()},
                          services={"queue": "tests.apps:make_queue"},
                          module_types={"a": {"restart": "sometimes"}, "b": {"limit_memory": "lots", "limit_cpu": -1}})
    status = subprocess.run(shmooze_argv("status", "--settings", str(path)), capture_output=True, text=True,
                            timeout=30)
    assert status.returncode == 2
    err = status.stderr
    assert "3 problems" in err and "module_types['a']: restart must be one of never, on-failure, always" in err, err
    assert "module_types['b']: limit_memory: not a size: 'lots'" in err and "limit_cpu must be positive" in err, err


# -- 2. shmz logs of a module that printed nothing ---------------------------------------------------------


def test_logs_of_a_quiet_running_module_are_empty_with_a_note(app):
    uid = app["client"].queue.call("add", {"type": "quiet"})["uid"]
    try:
        proc = shmz(app["url"], "logs", uid)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "" and f"module {uid} has printed nothing yet" in proc.stderr
        answer = app["client"].queue.call("output", {"uid": uid})
        assert answer["lines"] == [] and "printed nothing yet" in answer["note"]
        proc = shmz(app["url"], "logs", "nobody-1")
        assert proc.returncode == 2 and "no service has a module 'nobody-1'" in proc.stderr  # unknown: still told
    finally:
        app["client"].queue.call("rm", {"uids": [uid]})


# -- 3. --version, help, completion ------------------------------------------------------------------------


def test_version_help_and_bash_completion(app, tmp_path):
    for argv in (shmooze_argv("--version"), [PYTHON, "-m", "shmooze.cli.shmz", "--version"]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and proc.stdout.strip().endswith(__version__), proc.stdout + proc.stderr
    help_text = subprocess.run([PYTHON, "-m", "shmooze.cli.shmz", "--help"], capture_output=True, text=True,
                               timeout=30).stdout
    assert "shmz [OPTIONS] logs UID" in help_text and "watch SERVICE" in help_text
    bare = subprocess.run([PYTHON, "-m", "shmooze.cli.shmz"], capture_output=True, text=True, timeout=30)
    assert bare.returncode == 2 and bare.stderr.strip().endswith("required: SERVICE"), bare.stderr  # not ARGS
    script = subprocess.run(shmooze_argv("completion", "bash"), capture_output=True, text=True, timeout=30)
    assert script.returncode == 0 and "complete -o default -F _shmz shmz" in script.stdout
    (tmp_path / "completion.sh").write_text(script.stdout)
    bin_dir = str(Path(PYTHON).parent) if (Path(PYTHON).parent / "shmz").exists() else None
    probe = (f"source {tmp_path / 'completion.sh'}\n"
             "COMP_WORDS=(shmooze st); COMP_CWORD=1; _shmooze; echo \"${COMPREPLY[*]}\"\n"
             "COMP_WORDS=(shmooze status --j); COMP_CWORD=2; _shmooze; echo \"${COMPREPLY[*]}\"\n"
             f"COMP_WORDS=(shmz --url {app['url']} vo); COMP_CWORD=3; _shmz; echo \"${{COMPREPLY[*]}}\"\n"
             f"COMP_WORDS=(shmz --url {app['url']} volume set_v); COMP_CWORD=4; _shmz; echo \"${{COMPREPLY[*]}}\"\n")
    env = None if bin_dir is None else {"PATH": bin_dir + ":/usr/bin:/bin"}
    lines = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60, env=env).stdout.splitlines()
    assert lines[:2] == ["status stop", "--json"], lines
    if bin_dir is not None:  # shmz on PATH: the services and commands come from the gateway
        assert lines[2:] == ["volume", "set_volume"], lines


# -- 4. argument errors ------------------------------------------------------------------------------------


def test_argument_errors_name_the_element_and_say_how_to_send_text(app):
    assert mismatch("tags", ["a", 1], list[str] | None) == \
        "argument 'tags' must be a list of strings or null, but tags[1] is a number, not a string"
    proc = shmz(app["url"], "queue", "mv", 'uids=["a", 1]')
    assert proc.returncode == 1 and "uids[1] is a number, not a string" in proc.stderr, proc.stderr
    proc = shmz(app["url"], "queue", "add", "type=123")
    assert proc.returncode == 1
    assert "argument 'type' must be a string, not a number" in proc.stderr
    assert """type='"123"'""" in proc.stderr, proc.stderr  # how to send it as text
    proc = shmz(app["url"], "volume", "set_volume", "level=loud")  # a number asked: no text hint
    assert proc.returncode == 1 and "quote it" not in proc.stderr


# -- 6. status --json of a stopped application; 7. a plain service's CPU and memory -----------------------


def test_status_json_of_a_stopped_app_is_json(tmp_path):
    path = write_settings(tmp_path / "settings.json", ports={"queue": free_port()},
                          services={"queue": "tests.apps:make_queue"}, run_path=str(tmp_path / "run"))
    proc = subprocess.run(shmooze_argv("status", "--json", "--settings", str(path)), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["running"] is False and report["services"] == {} and report["settings"] == str(path)


def test_a_plain_service_reports_its_cpu_and_memory(app):
    client = app["client"]
    first = client.volume.status()
    assert first["cpu_seconds"] > 0 and first["rss_bytes"] > 1 << 20, first  # what the dashboard shows
    wait_for(lambda: isinstance(client.volume.status()["cpu_percent"], float), 10, interval=0.6,
             what="a CPU % over an interval")


def test_the_dashboard_shows_a_plain_services_cpu_memory_and_worker_pid(app, request):
    from tests.test_browser import CHROMIUM

    if not CHROMIUM:  # pragma: no cover - depends on the machine
        pytest.skip("no Chromium")
    browser = request.getfixturevalue("browser")
    page = browser.new_page()
    try:
        page.goto(app["url"] + "_shmooze/")
        page.wait_for_selector(".card[data-service=volume] .dot.up", timeout=10_000)
        shown = page.evaluate("""() => { const out = {};
            document.querySelectorAll(".card[data-service=volume] dt").forEach(dt => {
                out[dt.textContent] = dt.nextElementSibling.textContent; });
            return out; }""")
    finally:
        page.close()
    assert shown["memory"].endswith("MiB") and shown["CPU"].split(" s")[0].replace(".", "").isdigit(), shown
    assert shown["worker pid"] == str(app["client"].volume.status()["pid"]), shown  # as `shmooze status` labels it


# -- 8. commands in whole plain sentences ------------------------------------------------------------------


def test_commands_give_the_first_sentence_whole_in_plain_text(app):
    assert plain("See :class:`~shmooze.queue.Queue` and :mod:`shmooze.http.metrics`, ``x`` and `y`.") == \
        "See Queue and shmooze.http.metrics, x and y."
    assert summary("Each one (name, type),\nand whether it reads.  Then more.\n\nDetails.") == \
        "Each one (name, type), and whether it reads."
    proc = shmz(app["url"], "queue", "commands")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    described = lines[lines.index("commands()") + 1]
    assert described == ("    (read-only) Each command's arguments (name, type, whether required, default), description "
                         "and whether it only reads (then the gateway serves it without the access token).")
    assert "``" not in proc.stdout and ":mod:" not in proc.stdout


# -- 10. py.typed ------------------------------------------------------------------------------------------


def test_the_wheel_carries_py_typed(tmp_path):
    built = subprocess.run([PYTHON, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path),
                            str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next(tmp_path.glob("shmooze-*.whl"))
    assert "shmooze/py.typed" in zipfile.ZipFile(wheel).namelist()
