"""Behind the gateway: the service key, signed requests and proven answers, and the attacks they stop.

The attacks run as another local user (uid 65534, through ``setpriv``) against real services
(gunicorn processes started by the test): a plain POST to a service's own port, a DNS-rebinding
page's Host and Origin, and a process that takes a service's port while it is down or restarting.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import requests

from shmooze import servicekey
from shmooze.client import ServiceClient
from shmooze.errors import NotTheService, SettingsError
from shmooze.settings import Settings
from shmooze.settings import read as read_settings
from tests.helpers import Stack, free_port, gone, shmooze_argv, start_run, write_settings


def need_setpriv() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the attacker as another user (setpriv --reuid=65534)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")


def as_nobody(code: str, *args: str, **kw) -> subprocess.Popen:
    """Python ``code`` run as uid/gid 65534 (the system's interpreter: the test's venv may be private);
    its output in bytes."""
    return subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                             "-c", code, *args], start_new_session=True, **kw)


# -- the key --------------------------------------------------------------------------------------

def test_the_key_is_made_once_private_and_shared(tmp_path):
    path = write_settings(tmp_path / "s.json", ports={"q": 1}, service_key_path=str(tmp_path / "keys" / "k"))
    settings = read_settings(path)
    # Eight processes that need the key at once (the app's services starting) agree on one.
    code = "import sys; from shmooze import servicekey, settings; print(servicekey.load(settings.read(sys.argv[1])).decode())"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and len(keys.pop()) == 2 * servicekey.KEY_BYTES
    info = os.stat(tmp_path / "keys" / "k")
    assert stat.S_IMODE(info.st_mode) == 0o600 and stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    assert servicekey.load(settings) == (tmp_path / "keys" / "k").read_bytes().strip()
    assert os.listdir(tmp_path / "keys") == ["k"]  # no temporary file left


def test_a_key_file_others_could_read_or_plant_is_refused(tmp_path):
    key = tmp_path / "k"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(key, 0o644)
    with pytest.raises(SettingsError, match="open to other users"):
        servicekey.read_key(str(key))
    os.chmod(key, 0o600)
    assert servicekey.read_key(str(key)) == b"0123456789abcdef0123456789abcdef"
    link = tmp_path / "link"
    link.symlink_to(key)
    with pytest.raises(SettingsError, match="symbolic link"):
        servicekey.read_key(str(link))
    if os.geteuid() == 0:
        os.chown(key, 65534, 65534)
        with pytest.raises(SettingsError, match="belongs to uid 65534"):
            servicekey.read_key(str(key))
    with pytest.raises(SettingsError, match="at least 16"):
        servicekey.load(Settings({"ports": {"q": 1}, "service_key": "short"}))


def test_signatures_are_checked_once_within_the_window():
    signer, verifier = servicekey.Signer(b"k" * 32), servicekey.Verifier(b"k" * 32)
    auth, nonce = signer.sign(b'{"cmd": "add"}')
    assert verifier.check(auth, "/", b'{"cmd": "add"}') == nonce
    with pytest.raises(servicekey.BadSignature, match="replay"):
        verifier.check(auth, "/", b'{"cmd": "add"}')
    auth, _ = signer.sign(b'{"cmd": "add"}')
    with pytest.raises(servicekey.BadSignature, match="does not match"):
        verifier.check(auth, "/", b'{"cmd": "rm"}')  # another body
    with pytest.raises(servicekey.BadSignature, match="does not match"):
        servicekey.Verifier(b"x" * 32).check(auth, "/", b'{"cmd": "add"}')  # another key
    stamp, nonce_text, _ = auth.split(".")
    old = int(stamp) - 120
    # Inside: a request signed at another time: the MAC is made as the client makes it.
    mac = servicekey._request_mac(servicekey.mac_key(b"k" * 32), b"%d" % old, nonce_text.encode(), b"/", b"")  # noqa: SLF001
    forged = f"{old}.{nonce_text}.{mac}"
    with pytest.raises(servicekey.BadSignature, match="clock"):
        verifier.check(forged, "/", b"")
    for bad in ("", "a.b", "x.y.z", "1.2.3.4"):
        with pytest.raises(servicekey.BadSignature, match="malformed"):
            verifier.check(bad, "/", b"")
    # The proof binds the answer to the request's nonce, status and body.
    proof = servicekey.answer_proof(servicekey.mac_key(b"k" * 32), nonce, 200, b"[]")
    assert signer.proven(nonce, 200, b"[]", proof)
    assert not signer.proven(nonce, 200, b"[1]", proof) and not signer.proven(b"other", 200, b"[]", proof)
    assert not signer.proven(nonce, 200, b"[]", None)


# -- attacks on a service's own port --------------------------------------------------------------

POST = r"""
import json, sys, urllib.request, urllib.error
port, host, origin = int(sys.argv[1]), sys.argv[2], sys.argv[3]
headers = {"Content-Type": "application/json"}
if host != "-":
    headers["Host"] = host
if origin != "-":
    headers["Origin"] = origin
body = json.dumps({"cmd": "add", "args": {"type": "good", "args": {}}}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{port}/", body, headers)
try:
    with urllib.request.urlopen(request, timeout=10) as answer:
        print(answer.status, answer.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""


@pytest.fixture
def app(tmp_path):
    with Stack(tmp_path, {"queue": "tests.apps:make_queue"}) as stack:
        yield stack


def attack(port: int, host: str = "-", origin: str = "-") -> tuple[int, dict]:
    proc = as_nobody(POST, str(port), host, origin, stdout=subprocess.PIPE)
    out = proc.communicate(timeout=30)[0].decode().strip()
    status, _, body = out.partition(" ")
    return int(status), json.loads(body)


def test_another_user_cannot_command_a_service_on_its_port(app):
    need_setpriv()
    port = app.ports["queue"]
    status, body = attack(port)
    assert status == 401 and "service key" in body["error"]
    # DNS rebinding: the page's own name in Host, its origin in Origin.
    status, body = attack(port, host=f"evil.example:{port}")
    assert status == 400 and "not this service's" in body["error"]
    status, body = attack(port, origin=f"http://evil.example:{port}")
    assert status == 403 and "web pages" in body["error"]
    queue = requests.post(app.direct("queue"), json={"cmd": "queue"}, timeout=10).json()
    assert queue == {"success": True, "result": []}  # reads stay open; nothing was added
    # The same request from the app's own user (its tools) is taken; through the gateway too.
    mine = requests.post(app.direct("queue"), json={"cmd": "add", "args": {"type": "good"}}, timeout=10).json()
    assert mine["success"], mine
    gated = requests.post(app.url + "queue", json={"cmd": "add", "args": {"type": "good"}}, timeout=10).json()
    assert gated["success"], gated
    # A rebinding page through the gateway is refused there too.
    assert requests.post(app.direct("queue"), json={"cmd": "queue"}, timeout=10,
                         headers={"Host": f"evil.example:{port}"}).status_code == 400


THIEF = r"""
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
deadline = time.monotonic() + 60
while True:
    try:
        s.bind(("127.0.0.1", port))
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.005)
s.listen(64)
print("listening", flush=True)
answer = b'{"success": true, "result": "impostor"}'
out = sys.stdout.buffer
if True:
    while True:
        conn, _ = s.accept()
        conn.settimeout(2)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    break
                data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(body) < length:
                piece = conn.recv(65536)
                if not piece:
                    break
                body += piece
            out.write(data[:len(head) + 4] + body + b"\n--\n")
            out.flush()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(answer), answer))
        except OSError:
            pass
        conn.close()
"""


def stop_thief(thief: subprocess.Popen) -> bytes:
    """Kill the thief (by pid) and return every request it received."""
    os.kill(thief.pid, signal.SIGKILL)
    return thief.communicate(timeout=10)[0]


def test_a_port_thief_gets_no_command_and_is_not_believed(app, tmp_path):
    """The queue is down; another user takes its port: the gateway sends it nothing but its check,
    every client hears a 502 that says so, and the app's own tools refuse its answers."""
    need_setpriv()
    port = app.ports["queue"]
    app.procs.pop("queue").stop()
    thief = as_nobody(THIEF, str(port), stdout=subprocess.PIPE)
    try:
        assert thief.stdout.readline().strip() == b"listening"
        for _ in range(4):
            answer = requests.post(app.url + "queue", timeout=10,
                                   json={"cmd": "add", "args": {"type": "good", "args": {"password": "hunter2"}}})
            assert answer.status_code == 502 and "did not prove" in answer.json()["error"], answer.text
            read = requests.post(app.url + "queue", json={"cmd": "queue"}, timeout=10)
            assert read.status_code == 502 and "impostor" not in read.text
        with pytest.raises(NotTheService):
            ServiceClient.on_port(read_settings(app.path), "queue", timeout=5).status()
    finally:
        received = stop_thief(thief)
    assert received.count(b"\n--\n") >= 8  # it was asked (the checks), so the test proves something
    assert b"hunter2" not in received and b'"add"' not in received and b'"queue"' not in received
    assert b"Authorization" not in received
    for request in received.split(b"\n--\n")[:-1]:
        assert request.endswith(b"\r\n\r\n[]"), request[-200:]  # nothing but the empty signed check


def test_restart_fails_loudly_when_another_user_takes_the_port(tmp_path):
    need_setpriv()
    ports = {"wsgi": free_port(), "queue": free_port()}
    path = write_settings(tmp_path / "settings.json", ports=ports, run_path=str(tmp_path / "run"),
                          services={"queue": "tests.apps:make_queue"}, stop_timeout=5, start_timeout=15)
    run = start_run(path, tmp_path)
    thief = None
    received = b""
    try:
        # The thief waits for the port and takes it the moment the queue lets go of it.
        thief = as_nobody(THIEF, str(ports["queue"]), stdout=subprocess.PIPE)
        started = time.monotonic()
        done = subprocess.run(shmooze_argv("restart", "queue", "--settings", str(path)), capture_output=True,
                              text=True, timeout=120)
        took = time.monotonic() - started
        assert thief.stdout.readline().strip() == b"listening"
        assert done.returncode != 0, done.stdout + done.stderr
        assert "another program holds its port" in done.stderr and f"pid {thief.pid}" in done.stderr, done.stderr
        assert "restarted" not in done.stdout
        print(f"restart refused the thief after {took:.1f} s")
        # The gateway never sends the thief a command either.
        answer = requests.post(f"http://127.0.0.1:{ports['wsgi']}/queue", json={"cmd": "status"}, timeout=10)
        assert answer.status_code == 502
    finally:
        if thief is not None:
            received = stop_thief(thief)
        pids = run.remember_descendants()
        run.stop()
        assert all(gone(p) for p in pids)
    assert b'"status"' not in received


def test_the_gateway_checks_who_holds_a_port_without_a_key(tmp_path):
    """Settings made in code have no key: the gateway then sends to a loopback port only when the
    kernel says its socket is this user's."""
    need_setpriv()
    from werkzeug.test import Client as WsgiClient

    from shmooze.gateway.app import Gateway

    port = free_port()
    thief = as_nobody(THIEF, str(port), stdout=subprocess.PIPE)
    try:
        assert thief.stdout.readline().strip() == b"listening"
        gateway = WsgiClient(Gateway(Settings({"ports": {"wsgi": 1, "queue": port}, "connect_timeout": 2})))
        answer = gateway.post("/queue", data=json.dumps({"cmd": "add", "args": {"secret": "hunter2"}}),
                              content_type="application/json")
        assert answer.status_code == 502 and "uid 65534" in json.loads(answer.get_data())["error"]
    finally:
        received = stop_thief(thief)
    assert received.replace(b"\n--\n", b"") == b""  # connected to, and closed: not one byte was sent


def test_an_answer_without_proof_is_never_taken_over_a_kept_connection():
    """A kept-alive connection is proven at every answer, not only at its check."""
    key = b"k" * 32
    from shmooze.http.forward import ForwardError, ServiceProxy

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        proxy = ServiceProxy("q", "127.0.0.1", listener.getsockname()[1], timeout=5, connect_timeout=5,
                             signer=servicekey.Signer(key))
        import threading

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                for prove in (True, False):
                    data = b""
                    while b"\r\n\r\n[]" not in data and b"}" not in data:
                        data += conn.recv(65536)
                    nonce = data.split(b"Shmooze-Auth: ")[1].split(b"\r\n")[0].split(b".")[1]
                    body = b"[]" if prove else b'{"success": true}'
                    proof = servicekey.answer_proof(servicekey.mac_key(key), nonce, 200, body).encode() if prove \
                        else b"0" * 64
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nShmooze-Proof: %s\r\n\r\n%s"
                                 % (len(body), proof, body))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with pytest.raises(ForwardError, match="did not prove"):
            proxy.post(b'{"cmd": "status"}')
        thread.join(5)
        proxy.close()
