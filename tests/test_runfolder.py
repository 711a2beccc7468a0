"""The run folder and the state files against another local user (uid 65534 through ``setpriv``), issue 21:
the run folder cannot be squatted, no symbolic link is followed for the lock or the configuration,
the configuration cannot be swapped, and nobody else reads the journal, the command log or a module's
output. Also: a settings file that shows its secrets to others gets a warning; the Origin's scheme is
compared exactly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from shmooze.client import Client
from shmooze.deploy import runner
from shmooze.deploy.runner import InstanceLock, RunPaths, default_run_folders, is_locked
from shmooze.errors import ShmoozeError
from shmooze.settings import Settings, exposure_warning
from shmooze.settings import read as read_settings
from shmooze.system import private
from tests.helpers import Proc, free_port, gone, shmooze_argv, start_run, wait_for, write_settings

NOBODY = 65534
ATTACKER = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
as_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                             reason="the attacks run as uid 65534 through setpriv: the tests must run as root")


def as_attacker(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Python code run as uid 65534 (the system's own interpreter: the tests' may be out of its reach)."""
    return subprocess.run([*ATTACKER, "/usr/bin/python3", "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def shmooze(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shmooze_argv(*args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def shared():
    """A folder every user may write in, sticky like /tmp (``tmp_path`` is under a folder of root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="shmooze-shared-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def short_tmp():
    folder = Path(tempfile.mkdtemp(prefix="shmz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def victim(tmp_path):
    """A root-owned file an attacker would like written over; ``victim.same()`` says it is untouched."""
    path = tmp_path / "precious"
    path.write_text("precious data\n")
    path.chmod(0o644)
    before = os.stat(path)

    class Victim:
        def same(self) -> bool:
            now = os.stat(path)
            return (path.read_text() == "precious data\n" and now.st_mode == before.st_mode
                    and now.st_mtime_ns == before.st_mtime_ns and now.st_size == before.st_size)

    Victim.path = path
    return Victim()


def no_loose_modes(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` that its group or others may use (empty: none)."""
    loose = []
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(root, name))
            if st.st_mode & 0o077 and not stat.S_ISLNK(st.st_mode):
                loose.append(f"{os.path.join(root, name)} {stat.S_IMODE(st.st_mode):04o}")
    return loose


# -- the folder, its lock and its configuration, in-process ---------------------------------------------


def test_private_dir_creates_0700_and_refuses_what_is_not_ours_alone(tmp_path):
    made = private.private_dir(tmp_path / "a" / "b" / "run")
    assert [stat.S_IMODE(os.stat(p).st_mode) for p in (made.parent.parent, made.parent, made)] == [0o700] * 3
    assert private.private_dir(made) == made  # an existing folder of ours alone: used as it is
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    with pytest.raises(private.NotPrivate, match=r"refusing the folder .*/loose: owned by root \(uid 0\), "
                                                 r"mode 0755; .*chmod 700 it"):
        private.private_dir(loose)
    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(private.NotPrivate, match="symbolic link"):
        private.private_dir(link)
    shared_place = tmp_path / "open"
    shared_place.mkdir()
    shared_place.chmod(0o777)  # not sticky: anyone could rename a folder in it away and put theirs
    with pytest.raises(private.NotPrivate, match="another user could replace"):
        private.private_dir(shared_place / "run")


def test_the_lock_and_the_configuration_never_follow_a_link(tmp_path, victim):
    """As if another user had got a link into the folder after its check: still refused."""
    paths = RunPaths(tmp_path / "run")
    paths.prepare()
    paths.lock.symlink_to(victim.path)
    with pytest.raises(private.NotPrivate, match="shmooze.lock: it is a symbolic link"):
        InstanceLock(paths.lock).acquire()
    assert not is_locked(paths.lock) and runner.holder_pid(paths.lock) is None
    paths.conf.symlink_to(victim.path)
    private.write_private(paths.conf, "[supervisord]\n")  # replaces the link, not what it points to
    assert paths.conf.read_text() == "[supervisord]\n" and not paths.conf.is_symlink()
    assert stat.S_IMODE(os.stat(paths.conf).st_mode) == 0o600
    assert sorted(p.name for p in paths.root.iterdir()) == ["logs", "shmooze.lock", "supervisord.conf"]  # no temp left
    assert victim.same()


def test_a_lock_file_others_could_read_is_made_0600(tmp_path, caplog):
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir(mode=0o700)
    paths.lock.write_text("999999\n")
    paths.lock.chmod(0o644)
    lock = InstanceLock(paths.lock)
    lock.acquire()
    try:
        assert stat.S_IMODE(os.stat(paths.lock).st_mode) == 0o600
        assert "shmooze.lock could be read by other users (mode 0644): it is 0600 now" in caplog.text
    finally:
        lock.release()


def test_default_run_folder_is_the_users_own(short_tmp, monkeypatch):
    tmp_path = short_tmp  # (pytest's own is long: the socket's path would not fit, which is tested below)
    settings_path = str(tmp_path / "settings.json")
    digest = hashlib.sha1(settings_path.encode()).hexdigest()[:12]
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    folders = default_run_folders(settings_path)
    assert folders[0] == state / "shmooze" / f"run-{digest}"
    assert folders[-1] == Path(tempfile.gettempdir()) / f"shmooze-{os.geteuid()}-{digest}"  # only when too long
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert default_run_folders(settings_path)[0] == runtime / f"shmooze-{digest}"
    runtime.chmod(0o755)  # not this user's alone (or another user's, after su): not used
    assert default_run_folders(settings_path)[0] == state / "shmooze" / f"run-{digest}"
    long_state = tmp_path / ("x" * 90)
    monkeypatch.setenv("XDG_STATE_HOME", str(long_state))  # supervisor.sock would not fit in sun_path
    assert default_run_folders(settings_path) == [folders[-1]]
    too_long = RunPaths(long_state / "run")
    with pytest.raises(ShmoozeError, match="too long a path for supervisord's socket"):
        too_long.prepare()
    assert not long_state.exists()


# -- another local user against a real `shmooze run` ------------------------------------------------------


def queue_app(folder: Path, **settings) -> Path:
    return write_settings(folder / "settings.json", ports={"queue": free_port()},
                          services={"queue": "tests.apps:make_queue"}, **settings)


@as_root
@pytest.mark.parametrize("made_by", ["attacker-0777", "attacker-0700", "root-0777"])
def test_a_squatted_run_folder_is_refused(tmp_path, shared, victim, made_by):
    """Another user made the run folder first (or it was made loose) and planted a link for the lock
    and a configuration that runs their program as root: the run refuses the folder, with one line."""
    run = shared / "run"
    marker = tmp_path / "pwned"
    evil = f"[supervisord]\nnodaemon=true\n[program:pwn]\ncommand=touch {marker}\n"
    mode = int(made_by[-4:], 8)
    plant = ("import os, sys\nrun, mode, victim, evil = sys.argv[1], int(sys.argv[2], 8), sys.argv[3], sys.argv[4]\n"
             "if not os.path.exists(run):\n    os.mkdir(run)\n    os.chmod(run, mode)\n"
             "os.symlink(victim, os.path.join(run, 'shmooze.lock'))\n"
             "open(os.path.join(run, 'supervisord.conf'), 'w').write(evil)\n")
    if made_by.startswith("root"):
        run.mkdir()
        run.chmod(mode)
    planted = as_attacker(plant, str(run), oct(mode), str(victim.path), evil)
    assert planted.returncode == 0, planted.stderr
    path = queue_app(tmp_path, run_path=str(run))
    out = shmooze("run", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    owner = "nobody (uid 65534)" if made_by.startswith("attacker") else "root (uid 0)"
    assert out.stderr.startswith(f"shmooze: refusing the folder {run}: owned by {owner}, mode {made_by[-4:]}")
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
    assert ("chmod 700 it" in out.stderr) == made_by.startswith("root")
    assert victim.same() and not marker.exists()
    assert (run / "supervisord.conf").read_text() == evil and sorted(os.listdir(run)) == ["shmooze.lock",
                                                                                          "supervisord.conf"]


@as_root
def test_the_configuration_cannot_be_swapped_during_the_start(tmp_path, shared):
    """Another user tries, all along the start, to write, replace or link the run's supervisord.conf:
    every attempt is refused and supervisord runs the run's programs only."""
    run = shared / "run"
    marker = tmp_path / "pwned"
    stop_file = shared / "stop-attack"
    attack = (
        "import errno, json, os, sys, time\n"
        "run, evil, stop = sys.argv[1], sys.argv[2], sys.argv[3]\n"
        "conf = os.path.join(run, 'supervisord.conf')\n"
        "counts = {}\n"
        "def attempt(name, action):\n"
        "    try:\n        action()\n        counts[name + ' done'] = counts.get(name + ' done', 0) + 1\n"
        "    except OSError as exc:\n        key = errno.errorcode.get(exc.errno, str(exc.errno))\n"
        "        counts[key] = counts.get(key, 0) + 1\n"
        "def write():\n    with open(conf, 'w') as f:\n        f.write(evil)\n"
        "def rename():\n    mine = '/tmp/evil-%d.conf' % os.getpid()\n    open(mine, 'w').write(evil)\n"
        "    os.rename(mine, conf)\n"
        "deadline = time.monotonic() + 45\n"
        "while not os.path.exists(stop) and time.monotonic() < deadline:\n"
        "    attempt('write', write)\n    attempt('rename', rename)\n"
        "    attempt('link', lambda: os.symlink('/tmp/evil.conf', conf))\n    time.sleep(0.001)\n"
        "print(json.dumps(counts))\n")
    evil = f"[supervisord]\nnodaemon=true\n[program:pwn]\ncommand=touch {marker}\n"
    attacker = subprocess.Popen([*ATTACKER, "/usr/bin/python3", "-c", attack, str(run), evil, str(stop_file)],
                                stdout=subprocess.PIPE, text=True, cwd="/")
    path = queue_app(tmp_path, run_path=str(run))
    proc = Proc(shmooze_argv("run", str(path)), log_path=tmp_path / "run.log")
    try:
        wait_for(lambda: "shmooze: running" in proc.log() or proc.popen.poll() is not None, 60, 0.05,
                 what="shmooze run to announce")
        assert proc.popen.poll() is None, proc.log()
        stop_file.touch()
        counts = json.loads(attacker.communicate(timeout=30)[0])
        assert not [key for key in counts if key.endswith("done")], counts
        assert counts.get("EACCES", 0) > 0, counts  # it tried on the real folder, and was refused
        st = os.lstat(run)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
        programs = [info["name"] for info in runner.rpc(RunPaths(run)).supervisor.getAllProcessInfo()]
        assert programs == ["queue"] and not marker.exists()
        assert "[program:pwn]" not in (run / "supervisord.conf").read_text()
        assert not no_loose_modes(run), no_loose_modes(run)
        assert shmooze("stop", "--settings", str(path)).returncode == 0
        proc.popen.wait(30)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait(5)
        proc.kill_everything()


@as_root
def test_another_user_reads_no_state(tmp_path, shared, monkeypatch):
    """A run in its default folder, with its journal, command log and module output in a folder other
    users may enter: they read none of them; files left loose by an older version are made 0600; the
    settings file that shows its token gets a warning; the gateway compares the Origin's scheme exactly."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # the default folder: under $XDG_STATE_HOME
    data = shared / "data"
    (data / "out" / "queue").mkdir(parents=True)
    for folder in (data, data / "out", data / "out" / "queue"):
        folder.chmod(0o755)  # others may enter: only the files' own modes keep them out
    for name in ("queue.journal", "log.db"):
        (data / name).touch()
        (data / name).chmod(0o644)  # as an older version left them
    ports = {"wsgi": free_port(), "queue": free_port()}
    token = "token-" + os.urandom(8).hex()
    path = write_settings(tmp_path / "settings.json", ports=ports, services={"queue": "tests.apps:make_chatty_queue"},
                          access_token=token, journal_path=str(data), log_database_path=str(data / "log.db"),
                          module_output_path=str(data / "out"))
    path.chmod(0o644)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    folder = Path(os.environ["XDG_STATE_HOME"]) / "shmooze" / f"run-{digest}"
    old_default = Path(tempfile.gettempdir()) / f"shmooze-0-{digest}"  # where runs used to go: squatted
    assert as_attacker("import os, sys; os.mkdir(sys.argv[1], 0o777)", str(old_default)).returncode == 0
    run = start_run(path, tmp_path)
    try:
        assert f"run folder {folder}," in run.log()
        assert (f"warning: {path} holds secrets (access_token) and other users may read it (mode 0644): "
                f"chmod 600 {path}") in run.log()
        client = Client(f"http://127.0.0.1:{ports['wsgi']}/", token=token)
        uid = client.queue.add(type="chatty", args={"lines": 1, "password": "hunter2"})["uid"]
        client.queue.tell_module(uid=uid, cmd="say", args={"text": "hunter2"})
        state = {"journal": data / "queue.journal", "command log": data / "log.db",
                 "command log (wal)": data / "log.db-wal", "output": data / "out" / "queue" / f"{uid}.log"}

        def written():
            held = {name: p.read_bytes() if p.exists() else b"" for name, p in state.items()}
            return (b"hunter2" in held["journal"] and b"hunter2" in held["command log"] + held["command log (wal)"]
                    and b"chatty says hunter2" in held["output"])

        wait_for(written, 10, what="the secret in the journal, the command log and the module's output")
        modes = {name: stat.S_IMODE(os.stat(p).st_mode) for name, p in state.items() if p.exists()}
        assert all(mode == 0o600 for mode in modes.values()), modes
        read = as_attacker("import json, sys\nout = {}\nfor p in sys.argv[1:]:\n"
                           "    try:\n        out[p] = 'read' if open(p, 'rb').read() is not None else ''\n"
                           "    except OSError as exc:\n        out[p] = type(exc).__name__\n"
                           "print(json.dumps(out))", *map(str, state.values()), str(folder / "logs" / "queue.log"))
        assert read.returncode == 0, read.stderr
        assert set(json.loads(read.stdout).values()) == {"PermissionError"}, read.stdout
        queue_log = (folder / "logs" / "queue.log").read_text()
        for name in ("queue.journal", "log.db"):
            assert f"{data / name} could be read by other users (mode 0644): it is 0600 now" in queue_log
        assert "holds secrets (access_token)" in queue_log
        assert not no_loose_modes(folder), no_loose_modes(folder)
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and os.listdir(old_default) == []

        # Origin: the gateway serves plain http, so an https page of the same host is a foreign one.
        url = f"http://127.0.0.1:{ports['wsgi']}/queue"
        own = f"127.0.0.1:{ports['wsgi']}"

        def post(origin, **headers):
            return requests.post(url, json={"cmd": "status"}, timeout=10,
                                 headers={"Authorization": f"Bearer {token}", "Origin": origin, **headers}).status_code

        assert post(f"http://{own}") == 200
        assert post(f"https://{own}") == 403
        assert post(f"https://{own}", **{"X-Forwarded-Proto": "https"}) == 403  # no proxy is trusted to say so
        pids = run.remember_descendants()
        assert shmooze("stop", "--settings", str(path)).returncode == 0  # found in its default folder
        run.popen.wait(30)
        wait_for(lambda: all(gone(p) for p in pids), 10, what="every process of the run to end")
    finally:
        run.kill_everything()
        shutil.rmtree(old_default, ignore_errors=True)


PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$3dkS/0ZxWfDXBPrvQ1drgT9Y6QbrhAqsxdOvLxH3CDA"


def test_a_settings_file_others_may_read_with_a_secret_is_warned_about(tmp_path):
    path = tmp_path / "settings.json"
    users = {"a": {"password_hash": PASSWORD_HASH, "role": "user"}}
    cases = [({"access_token": "t"}, 0o644, "access_token"), ({"access_token": "t"}, 0o600, None),
             ({"access_token": None}, 0o644, None), ({"db_password": "p", "users": users}, 0o640, "db_password, users"),
             ({"services": {"queue": {"api_key": "k"}}}, 0o604, "api_key"), ({"app_name": "x"}, 0o644, None)]
    for data, mode, names in cases:
        path.write_text(json.dumps({"ports": {"queue": 1}, **data}))
        path.chmod(mode)
        warning = exposure_warning(read_settings(path))
        if names is None:
            assert warning is None, (data, mode)
        else:
            assert warning == (f"{path} holds secrets ({names}) and other users may read it (mode {mode:04o}): "
                               f"chmod 600 {path}")
    assert exposure_warning(Settings({"ports": {"q": 1}, "access_token": "t"})) is None  # no file



# -- what a stopped run leaves ------------------------------------------------------------------------------


def test_a_gateway_served_alone_removes_its_metrics_folder_when_it_stops(tmp_path):
    """``shmooze serve wsgi`` outside ``shmooze run`` (a test stack, a systemd unit): the folder its
    workers kept their figures in goes with it; ``metrics_path``, the user's own, stays."""
    kept = tmp_path / "kept-metrics"
    for given in (None, kept):
        path = write_settings(tmp_path / "settings.json", ports={"wsgi": free_port()},
                              **({"metrics_path": str(given)} if given else {}))
        settings = read_settings(path)
        folder = given or RunPaths.for_settings(settings).root / "gateway-metrics"
        gateway = Proc(shmooze_argv("serve", "wsgi", "--settings", str(path)))
        try:
            gateway.wait_port(settings.ports["wsgi"], 30)
            assert folder.is_dir()
        finally:
            gateway.stop()
        assert folder.is_dir() == (given is not None), folder


def test_a_stop_removes_what_the_run_made_in_the_temp_directory(tmp_path, monkeypatch):
    """A run folder in the temp directory (the default when the others' paths are too long for a socket)
    goes whole at the stop; a configured one loses only what no later command reads (the configuration,
    the gateway's metrics files)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / ("x" * 90)))  # supervisor.sock would not fit there
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    ports = {"wsgi": free_port(), "queue": free_port()}
    path = write_settings(tmp_path / "settings.json", ports=ports, services={"queue": "tests.apps:make_queue"},
                          stop_timeout=3)
    folder = RunPaths.for_settings(read_settings(path)).root
    assert folder.parent == Path(tempfile.gettempdir())
    run = start_run(path, tmp_path)
    try:
        assert (folder / "supervisord.conf").exists() and (folder / "gateway-metrics").is_dir()
        run.stop(signal.SIGINT, 30)
    finally:
        run.kill_everything()
    assert not folder.exists(), sorted(os.listdir(folder))

    configured = tmp_path / "run"
    path = write_settings(tmp_path / "settings.json", ports=ports, services={"queue": "tests.apps:make_queue"},
                          stop_timeout=3, run_path=str(configured))
    run = start_run(path, tmp_path, "second")
    try:
        run.stop(signal.SIGINT, 30)
    finally:
        run.kill_everything()
    left = set(os.listdir(configured))
    assert not left & set(RunPaths.TRANSIENT) and {"logs", "shmooze.lock"} <= left, left
    assert (configured / "logs" / "queue.log").exists()  # `shmooze logs` after the stop
