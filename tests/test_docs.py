"""The documentation tells the truth: the getting-started page's files are the example app's, that app
runs as the page says (a service of three commands, a queue with a Python module and a Node.js module
written from docs/module-protocol.md alone, a page on shmooze.js), and the generated reference pages
(settings, command line) are what scripts/docs_reference.py writes from the code.

The site itself is built with ``mkdocs build --strict`` by ``python3 scripts/dev.py docs`` (and by
``dev.py test`` before the tests): a broken link or anchor fails that build."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from shmooze import Client, ServiceError
from shmooze.polling import wait_until
from shmooze.testing import Stack, free_port, gone
from tests.helpers import Proc, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
APP = ROOT / "examples" / "first_app"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed (python3 scripts/dev.py test installs it)")


def titled_blocks(page: Path) -> dict[str, str]:
    """The code blocks of a page that follow a bold file name (**`path`**), by that path."""
    found = re.findall(r"^\*\*`([^`]+)`\*\*\n\n```[a-z]*\n(.*?)^```$", page.read_text(), re.S | re.M)
    return {path: code for path, code in found}


def test_every_file_of_the_getting_started_page_is_the_example_apps() -> None:
    blocks = titled_blocks(DOCS / "getting-started.md")
    files = {str(p.relative_to(APP)) for p in APP.rglob("*") if p.is_file() and p.stat().st_size
             and "__pycache__" not in p.parts}
    assert set(blocks) == files, "the page shows exactly the app's files (the empty __init__.py aside)"
    for path, code in blocks.items():
        assert code == (APP / path).read_text(), f"{path} differs between the page and examples/first_app/"


def test_every_file_shown_in_the_readme_is_that_file() -> None:
    for path, code in titled_blocks(ROOT / "README.md").items():
        assert code == (ROOT / path).read_text(), f"README.md shows {path} as it is not"


@pytest.fixture
def first_app(tmp_path: Path):
    """examples/first_app copied as a user's project, on free ports, its services and gateway running."""
    project = tmp_path / "myapp"
    shutil.copytree(APP, project, ignore=shutil.ignore_patterns("__pycache__"))
    settings = json.loads((project / "settings.json").read_text())
    del settings["ports"]
    with Stack(project, **settings) as stack:
        yield stack


def module_pid(client: Client, uid: str) -> int:
    return next(m["pid"] for m in client.queue.status()["modules"] if m["uid"] == uid)


def test_the_first_service_has_its_three_commands(first_app: Stack) -> None:
    notes = Client(first_app.url).notes
    assert notes.add_note(text="buy milk") == 1
    assert notes.add_note(text="call home") == 2
    assert notes.notes() == ["buy milk", "call home"]
    with pytest.raises(ServiceError, match="a note needs some text"):
        notes.add_note(text=" ")
    assert notes.clear() is None and notes.notes() == []
    described = notes.commands()  # name -> arguments, docstring, read_only
    assert {"add_note", "notes", "clear"} <= set(described) and described["notes"]["read_only"] is True


def test_the_page_is_served_with_shmooze_js(first_app: Stack) -> None:
    page = requests.get(first_app.url, timeout=10)
    assert page.status_code == 200 and '<script src="/static/shmooze.js">' in page.text
    assert "endpoints.notes" in page.text and "endpoints.queue" in page.text
    library = requests.get(first_app.url + "static/shmooze.js", timeout=10)
    assert library.status_code == 200 and "forceQuery" in library.text
    public = requests.get(first_app.url + "settings.json", timeout=10).json()
    assert set(public["ports"]) == {"wsgi", "notes", "queue"}


def test_the_page_shows_notes_and_the_queue_as_they_change(browser, first_app: Stack) -> None:
    """The page of the getting-started app, in Chromium: its form and buttons send commands, and
    what a script changes appears by push."""
    context = browser.new_context()
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(first_app.url)
        page.wait_for_function("typeof endpoints !== 'undefined' && endpoints.notes !== undefined")
        page.fill("#note", "buy milk")
        page.click("#note-form button")
        page.wait_for_selector("#notes li:has-text('buy milk')")
        client = Client(first_app.url)
        client.notes.add_note(text="sent by a script")
        page.wait_for_selector("#notes li:has-text('sent by a script')")
        page.click("#add-timer")
        page.wait_for_selector("#queue li:has-text('timer')")
        assert [m["type"] for m in client.queue.queue()] == ["timer"]
        client.queue.rm(uids=[m["uid"] for m in client.queue.queue()])
        page.wait_for_function("document.querySelectorAll('#queue li').length === 0")
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def sh_blocks(page: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", page, re.S | re.M)


def run_page_commands(shmz: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Every ``shmz`` line of the getting-started page, in order, run as ``shmz`` (``UID``: the uid its
    ``add`` printed); each exits 0 but the one said to fail, and ``# prints X`` prints X. Returns that uid."""
    text = (DOCS / "getting-started.md").read_text()
    lines = [line for block in sh_blocks(text) for line in block.splitlines()
             if line.startswith(".venv/bin/shmz ") and " watch " not in line]
    assert len(lines) >= 9
    uid = None
    for line in lines:
        words = shlex.split(line.replace("UID", uid or "UID"), comments=True)
        comment = line.split("  #", 1)[1].strip() if "  #" in line else ""  # (a comment follows spaces)
        ran = subprocess.run([*shmz, *words[1:]], capture_output=True, text=True, timeout=30, cwd=cwd, env=env)
        assert ran.returncode == (1 if "exit status 1" in comment else 0), (line, ran.stdout, ran.stderr)
        if comment.startswith("prints "):
            assert ran.stdout.strip() == comment[len("prints "):], (line, ran.stdout)
        if words[2:4] == ["add", "type=timer"]:
            uid = json.loads(ran.stdout)["uid"]
    assert uid is not None
    return uid


@needs_node
def test_the_getting_started_commands_work_as_the_page_says(first_app: Stack) -> None:
    run_page_commands([sys.executable, "-m", "shmooze.cli.shmz", "--url", first_app.url])
    Client(first_app.url).queue.rm(uids=[m["uid"] for m in Client(first_app.url).queue.queue()])


@needs_node
@pytest.mark.timeout(600)
def test_a_newcomer_following_the_page_from_pip_install_gets_the_app(tmp_path: Path) -> None:
    """The page done as written, in a user's shell: its install commands (a venv, pip install from a
    copy of the checkout), its files written from the page itself, ``shmooze run`` in the project's
    folder, its ``shmz`` lines there (the gateway found from ./settings.json), Ctrl-C; nothing left."""
    from tests.test_first_run import copy_checkout, plain_env

    page = (DOCS / "getting-started.md").read_text()
    checkout = copy_checkout(tmp_path / "shmooze")
    install = sh_blocks(page[page.index("## Install into your own project"):])[0]
    assert "pip install /path/to/shmooze" in install
    env = plain_env()
    subprocess.run(["bash", "-euc", install.replace("/path/to/shmooze", shlex.quote(str(checkout)))], cwd=tmp_path,
                   env=env, check=True, timeout=500, stdout=subprocess.DEVNULL)
    project = tmp_path / "myapp"
    skeleton = next(block for block in sh_blocks(page) if "touch myapp/__init__.py" in block)
    subprocess.run(["bash", "-euc", skeleton], cwd=project, env=env, check=True, timeout=30)
    for path, code in titled_blocks(DOCS / "getting-started.md").items():
        (project / path).write_text(code)
    settings = json.loads((project / "settings.json").read_text())
    settings["ports"] = {name: free_port() for name in settings["ports"]}
    settings["run_path"] = str(tmp_path / "run")  # (not under the user's state folder)
    (project / "settings.json").write_text(json.dumps(settings))

    run = Proc([str(project / ".venv" / "bin" / "shmooze"), "run"], env=env, cwd=str(project),
               log_path=tmp_path / "run.log")
    try:
        wait_for(lambda: "running; open" in run.log() or run.popen.poll() is not None, 120, interval=0.1,
                 what="shmooze run to announce")
        assert run.popen.poll() is None, run.log()
        url = f"http://127.0.0.1:{settings['ports']['wsgi']}/"
        assert '<script src="/static/shmooze.js">' in requests.get(url, timeout=10).text
        run_page_commands([str(project / ".venv" / "bin" / "shmz")], cwd=project, env=env)
        pids = run.remember_descendants()
        run.popen.send_signal(signal.SIGINT)
        assert run.popen.wait(60) == 0, run.log()
        wait_for(lambda: all(gone(pid) for pid in pids), 10, what="every service and module to end")
    finally:
        run.kill_everything()


def test_the_python_module_counts_down_takes_a_custom_command_and_leaves(first_app: Stack) -> None:
    queue = Client(first_app.url).queue
    uid = queue.add(type="timer", args={"seconds": 1, "label": "tea"})["uid"]
    listing = queue.queue(parameters={"timer": ["label", "remaining"]})
    assert listing == [{"uid": uid, "type": "timer", "parameters": {"label": "tea", "remaining": 1.0}}]
    assert queue.tell_module(uid=uid, cmd="add_time", args={"seconds": 1}) >= 1.0
    pid = module_pid(Client(first_app.url), uid)
    wait_until(lambda: queue.queue() == [], 15, "the timer to reach zero and leave the queue")
    wait_until(lambda: gone(pid), 10, "the timer's process to end")


@needs_node
def test_the_node_module_written_from_the_protocol_page_runs_in_the_queue(first_app: Stack) -> None:
    client = Client(first_app.url)
    queue = client.queue
    params = {"ticker": ["count", "state"], "timer": ["remaining"]}
    # init's parameters are applied before add answers.
    first = queue.add(type="timer", args={"seconds": 30})["uid"]
    ticker = queue.add(type="ticker", args={"from": 5, "every": 0.1})["uid"]
    assert queue.ask_module(uid=ticker, parameters=["count"]) == {"count": 5}
    # Second in the queue: suspended, and it does not count.
    wait_until(lambda: queue.ask_module(uid=ticker, parameters=["state"]) == {"state": "suspended"}, 5,
               "the ticker to be told suspend")
    # A custom command: do_reset, its result and its error.
    assert queue.tell_module(uid=ticker, cmd="reset", args={"to": 100}) == 100
    with pytest.raises(ServiceError, match="reset needs 'to'"):
        queue.tell_module(uid=ticker, cmd="reset", args={})
    with pytest.raises(ServiceError, match="unknown command: do_nothing"):
        queue.tell_module(uid=ticker, cmd="nothing")
    assert queue.queue(parameters=params)[1]["parameters"]["count"] == 100
    # The timer leaves (rm): the ticker is on top, told play, and counts.
    queue.rm(uids=[first])
    wait_until(lambda: queue.ask_module(uid=ticker, parameters=["count"])["count"] >= 103, 10,
               "the ticker to count while it plays")
    assert queue.ask_module(uid=ticker, parameters=["state"]) == {"state": "playing"}
    # rm: it answers and exits at the first rung.
    pid = module_pid(client, ticker)
    queue.rm(uids=[ticker])
    assert gone(pid)
    ended = [m for m in queue.status()["modules"] if m["uid"] == ticker]
    assert not ended or ended[0].get("ended_by") in (None, "rm", "exited")
    # Leaving on its own: an rm update at `until`.
    leaver = queue.add(type="ticker", args={"from": 0, "until": 3, "every": 0.05})["uid"]
    wait_until(lambda: queue.queue() == [], 10, "the ticker to leave the queue at its `until`")
    assert leaver not in [m["uid"] for m in queue.queue()]


def test_every_json_example_of_the_protocol_page_is_json() -> None:
    blocks = re.findall(r"^```json\n(.*?)^```$", (DOCS / "module-protocol.md").read_text(), re.S | re.M)
    assert len(blocks) >= 8
    for block in blocks:
        message = json.loads(block)
        assert "cmd" in message or "success" in message, block


def test_the_shell_module_of_the_protocol_page_runs_in_a_queue(tmp_path: Path) -> None:
    page = (DOCS / "module-protocol.md").read_text()
    section = page[page.index("## A minimal module, in the shell"):]
    script = re.search(r"^```sh\n(.*?)^```$", section, re.S | re.M)
    assert script is not None
    (tmp_path / "minimal.sh").write_text(script.group(1))
    (tmp_path / "miniapp.py").write_text(
        "from shmooze.moduletype import ModuleType\nfrom shmooze.queue import Queue\n\n\n"
        f"def make_queue():\n    return Queue([ModuleType('minimal', ('bash', {str(tmp_path / 'minimal.sh')!r}))])\n")
    with Stack(tmp_path, {"queue": "miniapp:make_queue"}) as stack:
        client = Client(stack.url)
        queue = client.queue
        first = queue.add(type="minimal")["uid"]
        second = queue.add(type="minimal")["uid"]

        def playing(uid: str) -> dict:
            return queue.ask_module(uid=uid, parameters=["playing"])

        wait_until(lambda: playing(first) == {"playing": True}, 5, "the first to be told play")
        assert playing(second) == {}  # behind the first: told nothing yet
        queue.mv(uids=[second])  # on top: it plays, the first is suspended
        wait_until(lambda: playing(second) == {"playing": True} and playing(first) == {"playing": False}, 5,
                   "the second to play and the first to be suspended")
        with pytest.raises(ServiceError, match="unknown command"):
            queue.tell_module(uid=first, cmd="anything")
        pid = module_pid(client, second)
        queue.rm(uids=[second])
        assert gone(pid)
        wait_until(lambda: playing(first) == {"playing": True}, 5, "the first to play again")
        queue.rm(uids=[first])


def test_the_site_builds_with_no_warning(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a broken link or anchor, or a page left out of the nav, fails it."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (python3 scripts/dev.py test installs it)")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "module-protocol" / "index.html").exists()


def test_the_generated_reference_pages_are_up_to_date() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs_reference.py"), "--check"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr


def test_the_settings_page_names_every_declared_key() -> None:
    from shmooze.registry import KEYS

    page = (DOCS / "settings.md").read_text()
    missing = [name for name in KEYS if f"| `{name}` |" not in page]
    assert not missing, missing


def test_the_command_line_page_names_every_subcommand_and_option() -> None:
    from shmooze.cli.main import build_parser

    page = (DOCS / "cli.md").read_text()
    usage = build_parser().format_usage()
    subcommands = re.search(r"\{([a-z,-]+)\}", usage)
    assert subcommands is not None, usage
    for name in subcommands.group(1).split(","):
        assert f"## `shmooze {name}`" in page, name
    for option in ("--url", "--json", "--follow", "--clear", "--services"):
        assert f"`{option}" in page, option
