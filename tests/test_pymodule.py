"""Wire-level tests of the module helpers, the bash module and misbehave.py.

Each test plays the *service* with plain sockets (tests/fakeparent.py) and
reaps every process it starts.
"""

import os
import shutil
import signal
import sys
import textwrap
import time

import pytest

from tests.fakeparent import Timeout, pid_gone, wait_pid_gone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODULES = os.path.join(HERE, "modules")
COMPAT = os.path.join(MODULES, "compat_module.py")
MISBEHAVE = os.path.join(MODULES, "misbehave.py")
SHOUT = os.path.join(ROOT, "examples", "modules", "shout.sh")

BASIC_MODULE = textwrap.dedent('''
    import sys
    from shmooze_module import Module, command

    class Basic(Module):
        def on_init(self, count=3, fail=False):
            if fail:
                raise RuntimeError("init exploded")
            self.count = count
            self.timer = None
            self.set_parameters(count=count, argv=self.args)

        def on_play(self):
            self.timer = self.tick(0.1, self.countdown)
            self.set_parameters(state="playing")

        def on_suspend(self):
            if self.timer is not None:
                self.timer.cancel()
            self.set_parameters(state="suspended")

        def on_rm(self):
            self.set_parameters(state="removed")

        def countdown(self):
            self.count -= 1
            self.set_parameters(count=self.count)
            if self.count <= 0:
                self.rm()

        def do_echo(self, **args):
            return args

        @command("shout")
        def loud(self, text):
            return text.upper()

        def do_unset(self, names):
            self.unset_parameters(names)

        def do_spam(self, n):
            for i in range(n):
                self.set_parameters(spam=i)
            return n

        def do_leave(self):
            self.rm()
            return "leaving"

    if __name__ == "__main__":
        Basic.main(update_first="--update-first" in sys.argv)
''')


@pytest.fixture
def basic_module(tmp_path):
    path = tmp_path / "basic_module.py"
    path.write_text(BASIC_MODULE)
    return str(path)


def ok(answer):
    assert answer is not None, "command stream closed"
    assert answer.get("success") is True, answer
    return answer.get("result")


def fails(answer):
    assert answer is not None, "command stream closed"
    assert answer.get("success") is False, answer
    assert isinstance(answer.get("error"), str) and answer["error"]
    return answer["error"]


# -- shmooze.modules / compat API -----------------------------------------

def test_reexports():
    import shmooze.modules as m
    import shmooze_module as sm
    assert m.JSONParentPoller is sm.JSONParentPoller
    assert m.ParentConnection is sm.ParentConnection
    assert m.Module is sm.Module
    assert issubclass(sm.JSONParentPoller, sm.ParentConnection)


def test_import_is_light():
    """Importing the helper must not pull in heavy modules."""
    code = ("import sys, shmooze_module; "
            "bad = [m for m in ('logging', 'threading', 'asyncio', 'subprocess', 'json', 're') if m in sys.modules]; "
            "print(bad)")
    import subprocess

    from tests.fakeparent import module_env
    out = subprocess.run([sys.executable, "-c", code], env=module_env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_compat_commands(parent):
    parent.spawn([sys.executable, COMPAT, "extra-arg"])
    assert ok(parent.send("init", {"text": "hello"})) is None
    assert parent.wait_param("status") == "ready"
    assert parent.parameters["text"] == "hello"
    assert parent.parameters["args"] == ["extra-arg"]
    assert ok(parent.send("do_upper")) == "HELLO"
    assert ok(parent.send("do_upper", {"text": "abc"})) == "ABC"
    assert "boom" in fails(parent.send("do_fail"))
    assert "unknown command" in fails(parent.send("do_nope"))
    # bad arguments are a handler exception, not a crash
    fails(parent.send("do_upper", {"bogus": 1}))
    ok(parent.send("play"))
    assert parent.wait_param("status", "playing")
    ok(parent.send("suspend"))
    assert parent.wait_param("status", "suspended")
    ok(parent.send("do_unset", {"names": ["text"]}))
    upd = parent.wait_update(lambda m: m.get("cmd") == "unset_parameters")
    assert upd["args"]["parameters"] == ["text"]
    assert "text" not in parent.parameters
    ok(parent.send("rm"))
    assert parent.wait_param("status", "removed")
    assert parent.wait_exit() == 0


def test_compat_args_absent_and_bad_lines(parent):
    parent.spawn([sys.executable, COMPAT])
    parent.send_raw(b'{"cmd":"init"}')  # no "args" at all
    ok(parent.read_answer())
    parent.send_raw(b"this is not json")
    assert "JSON" in fails(parent.read_answer())
    parent.send_raw(b'["cmd"]')
    fails(parent.read_answer())
    parent.send_raw(b'{"cmd":"do_upper","args":[1]}')
    fails(parent.read_answer())
    assert ok(parent.send("do_upper", {"text": "still alive"})) == "STILL ALIVE"


def test_line_too_long(parent):
    parent.spawn([sys.executable, COMPAT])
    ok(parent.send("init"))
    big = b'{"cmd":"do_upper","args":{"text":"' + b"x" * (1024 * 1024 + 10) + b'"}}'
    parent.send_raw(big)
    err = fails(parent.read_answer())
    assert "exceeds" in err
    # the stream stays in sync
    assert ok(parent.send("do_upper", {"text": "ok"})) == "OK"
    # a line just under the limit is fine
    text = "y" * (1024 * 1024 - 100)
    assert ok(parent.send("do_upper", {"text": text})) == text.upper()


def test_compat_select_loop_and_eof_exit(parent):
    parent.spawn([sys.executable, COMPAT, "--select-loop"])
    ok(parent.send("init", {"text": "t"}))
    ok(parent.send("play"))
    parent.wait_param("beat", 3)
    ok(parent.send("suspend"))
    assert ok(parent.send("do_upper")) == "T"
    parent.close_cmd()
    assert parent.wait_exit() == 0


def test_compat_module_leaving(parent):
    parent.spawn([sys.executable, COMPAT])
    ok(parent.send("init"))
    assert ok(parent.send("do_leave")) == "bye"
    parent.wait_update(lambda m: m.get("cmd") == "rm")
    parent.close_cmd()
    assert parent.wait_exit() == 0


# -- Module base class ------------------------------------------------------

def test_module_base_class(parent, basic_module):
    parent.spawn([sys.executable, basic_module, "a", "b"])
    ok(parent.send("init", {"count": 3}))
    parent.wait_param("count", 3)
    assert parent.parameters["argv"] == ["a", "b"]
    assert ok(parent.send("do_echo", {"x": [1, 2], "y": None})) == {"x": [1, 2], "y": None}
    assert ok(parent.send("do_shout", {"text": "hey"})) == "HEY"
    assert "unknown command" in fails(parent.send("do_missing"))
    assert "unknown command" in fails(parent.send("loud"))
    ok(parent.send("do_unset", {"names": ["argv"]}))
    parent.wait_update(lambda m: m.get("cmd") == "unset_parameters")
    assert "argv" not in parent.parameters
    ok(parent.send("rm"))
    parent.wait_param("state", "removed")
    assert parent.wait_exit() == 0


def test_module_exception_in_hook(parent, basic_module):
    parent.spawn([sys.executable, basic_module])
    err = fails(parent.send("init", {"fail": True}))
    assert "init exploded" in err and "RuntimeError" in err
    ok(parent.send("init", {"count": 1}))


def test_module_tick_countdown_and_self_rm(parent, basic_module):
    parent.spawn([sys.executable, basic_module])
    ok(parent.send("init", {"count": 4}))
    parent.wait_param("count", 4)
    ok(parent.send("play"))
    stamps = []
    for expect in (3, 2, 1, 0):
        parent.wait_param("count", expect)
        stamps.append(time.monotonic())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(g > 0.05 for g in gaps), gaps
    parent.wait_update(lambda m: m.get("cmd") == "rm")
    assert parent.wait_exit() == 0


def test_module_suspend_cancels_tick(parent, basic_module):
    parent.spawn([sys.executable, basic_module])
    ok(parent.send("init", {"count": 100}))
    ok(parent.send("play"))
    parent.wait_param("count", 99)
    ok(parent.send("suspend"))
    parent.wait_param("state", "suspended")
    # commands are still served promptly while ticking was active
    assert ok(parent.send("do_echo", {"a": 1})) == {"a": 1}
    with pytest.raises(Timeout):
        parent.wait_update(lambda m: True, timeout=0.4)


def test_module_rm_from_handler_answers_first(parent, basic_module):
    parent.spawn([sys.executable, basic_module])
    ok(parent.send("init"))
    assert ok(parent.send("do_leave")) == "leaving"
    parent.wait_update(lambda m: m.get("cmd") == "rm")
    assert parent.wait_exit() == 0


def test_module_exits_on_command_eof(parent, basic_module):
    parent.spawn([sys.executable, basic_module])
    ok(parent.send("init"))
    parent.close_cmd()
    assert parent.wait_exit() == 0


def test_module_exits_on_eof_before_init(parent, basic_module):
    parent.spawn([sys.executable, basic_module])
    parent.close_cmd()
    assert parent.wait_exit() == 0


@pytest.mark.parametrize("update_first", [False, True])
def test_connection_order(parent, basic_module, update_first):
    argv = [sys.executable, basic_module] + (["--update-first"] if update_first else [])
    parent.spawn(argv)
    # the fake accepts in arrival order; both orders must work
    assert sorted(parent.accept_order) == ["cmd", "update"]
    ok(parent.send("init", {"count": 2}))
    parent.wait_param("count", 2)
    ok(parent.send("rm"))
    assert parent.wait_exit() == 0


def test_update_answers_are_drained(parent, basic_module):
    """Lots of updates while the service answers each: no deadlock."""
    parent.spawn([sys.executable, basic_module])
    ok(parent.send("init"))
    n = 60000
    parent.send_raw(b'{"cmd":"do_spam","args":{"n":%d}}' % n)
    parent.wait_param("spam", n - 1, timeout=60)
    assert ok(parent.read_answer(timeout=30)) == n
    ok(parent.send("rm"))
    assert parent.wait_exit() == 0


def test_helper_api_in_process():
    """parse_argv and the command decorator without a service."""
    import shmooze_module as sm
    assert sm.parse_argv(["prog", "x", "h", "1", "2"]) == (["x"], "h", 1, 2)
    with pytest.raises(sm.ProtocolError):
        sm.parse_argv(["prog", "h", "1"])

    class M(sm.Module):
        @sm.command
        def hello(self):
            return 1

        @sm.command("do_bye")
        def other(self):
            return 2

    # Inside: the names the class collected: the helper's dispatch table.
    assert M._command_methods == {"do_hello": "hello", "do_bye": "other"}  # noqa: SLF001


# -- the bash module ---------------------------------------------------------

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not available")


@needs_bash
def test_shout_sh_end_to_end(parent):
    parent.spawn(["bash", SHOUT])
    ok(parent.send("init", {"text": "hello w\u00f6rld \"q\" \\ \n"}))
    # the fake sends ensure_ascii JSON, so \u escapes must survive upper-casing
    assert ok(parent.send("do_shout")) == "HELLO W\u00f6RLD \"Q\" \\ \n"
    assert ok(parent.send("do_shout", {"text": "abc\u00e9"})) == "ABC\u00e9"
    ok(parent.send("play"))
    upd = parent.wait_update(lambda m: m.get("cmd") == "set_parameters")
    assert upd["args"]["parameters"]["state"] == "playing"
    assert parent.parameters["text"] == "hello w\u00f6rld \"q\" \\ \n"
    ok(parent.send("suspend"))
    parent.wait_param("state", "suspended")
    assert "unknown command" in fails(parent.send("do_whisper"))
    ok(parent.send("rm"))
    assert parent.wait_exit() == 0


@needs_bash
def test_shout_sh_exits_on_eof(parent):
    parent.spawn(["bash", SHOUT])
    ok(parent.send("init", {"text": "x"}))
    assert ok(parent.send("do_shout")) == "X"
    parent.close_cmd()
    assert parent.wait_exit() == 0


# -- misbehave.py ------------------------------------------------------------

def test_misbehave_well_behaved_and_record(parent):
    parent.spawn([sys.executable, MISBEHAVE, "--record"])
    ok(parent.send("init", {"a": 1}))
    assert parent.wait_param("pid") == parent.proc.pid
    ok(parent.send("play"))
    ok(parent.send("suspend"))
    assert ok(parent.send("do_echo", {"k": "v"})) == {"k": "v"}
    parent.wait_param("log", ["init", "play", "suspend", "do_echo"])
    ok(parent.send("rm"))
    parent.wait_param("log", ["init", "play", "suspend", "do_echo", "rm"])
    assert parent.wait_exit() == 0


def test_misbehave_init_error(parent):
    parent.spawn([sys.executable, MISBEHAVE, "--init-error"])
    assert "init failed" in fails(parent.send("init"))
    parent.close_cmd()
    assert parent.wait_exit() == 0


def test_misbehave_flood_without_reader(parent):
    """The service never reads the update stream; commands still answered."""
    parent.answer_updates = False
    parent.spawn([sys.executable, MISBEHAVE, "--flood", "50000"])
    ok(parent.send("init"))
    t0 = time.monotonic()
    assert ok(parent.send("do_echo", {"n": 1}, timeout=5)) == {"n": 1}
    assert time.monotonic() - t0 < 5
    parent.wait_param("flood_done", 50000, timeout=60)
    assert parent.parameters["flood"] == 50000


def test_misbehave_connect_update_first_and_exit_after(parent):
    parent.spawn([sys.executable, MISBEHAVE, "--connect-update-first", "--exit-after", "0.2"])
    assert sorted(parent.accept_order) == ["cmd", "update"]  # accepted in either order, both work
    ok(parent.send("init"))
    parent.wait_update(lambda m: m.get("cmd") == "rm")
    assert parent.wait_exit() == 0


def test_misbehave_crash_and_slow(parent):
    parent.spawn([sys.executable, MISBEHAVE, "--crash-mid-command", "--slow-command", "0.3"])
    ok(parent.send("init"))
    t0 = time.monotonic()
    assert ok(parent.send("do_slow"))["slept"] == 0.3
    assert time.monotonic() - t0 >= 0.3
    assert parent.send("do_crash") is None
    assert parent.wait_exit() == 3


def test_misbehave_no_connect_is_killed(parent):
    parent.spawn([sys.executable, MISBEHAVE, "--no-connect"], accept=False)
    with pytest.raises(Timeout):
        parent.accept(timeout=0.5)
    assert parent.proc.poll() is None
    # fixture kills and reaps it


def test_misbehave_ignore_term(parent):
    parent.spawn([sys.executable, MISBEHAVE, "--ignore-term"])
    ok(parent.send("init"))
    ok(parent.send("rm"))
    parent.close_cmd()
    parent.proc.send_signal(signal.SIGTERM)
    with pytest.raises(Timeout):
        parent.wait_exit(timeout=0.5)
    parent.proc.kill()
    assert parent.wait_exit() == -signal.SIGKILL


def test_misbehave_child_ignores_term(parent):
    parent.spawn([sys.executable, MISBEHAVE, "--child-ignores-term"])
    ok(parent.send("init"))
    child = parent.wait_param("child_pid")
    try:
        assert not pid_gone(child)
        os.kill(child, signal.SIGTERM)
        assert not wait_pid_gone(child, timeout=0.3)
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        parent.kill()
    assert wait_pid_gone(child)


def test_line_codec_matches_the_json_module():
    """The helper's JSON (on the C accelerator) reads and writes what the json module does."""
    import json

    import shmooze_module as sm

    for value in [{"cmd": "init", "args": {"text": "h\u00e9llo \u2603 \"q\" \\ \n", "n": -1.5e-7, "big": 2 ** 70}},
                  [], {}, "x", 0, None, True, [1, [2, [3, {"a": None}]]]]:
        # Inside: the helper's own JSON codec (not its API), checked against json's.
        line = sm._dumps(value)  # noqa: SLF001
        assert line.endswith(b"\n") and b"\n" not in line[:-1]
        assert json.loads(line) == value
        assert sm._loads(json.dumps(value)) == value  # noqa: SLF001
        assert sm._loads("  " + json.dumps(value) + " \r\n") == value  # noqa: SLF001
    for bad in ["", "{", "[1,]", "NaN", "Infinity", "{} {}", "{'a': 1}", "tru"]:
        try:
            sm._loads(bad)  # noqa: SLF001
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
    for bad in [float("nan"), {1, 2}, object()]:
        try:
            sm._dumps(bad)  # noqa: SLF001
        except (ValueError, TypeError):
            continue
        raise AssertionError(f"{bad!r} was encoded")
