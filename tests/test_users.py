"""Who may do what at the gateway (shmooze.gateway.policy, users, sessions, callers), on real services.

A live stack (gunicorn gateway and queue) with ``users`` and ``command_access``: anyone adds, a
signed-in user moves, an operator removes; sign-in sets a signed HttpOnly cookie, sign-out ends it
(the same cookie is refused afterwards over HTTP and the WebSocket), a tampered or expired cookie is
refused, a new password ends the user's sessions. ``open_commands`` never opens a service's own
port (a raw ``add`` from another uid is refused). A service that cannot be reached is 502, never
401. No secret reaches ``settings.json``, the metrics, a service's ``status`` or the logs. In
process: a ``user_hook`` and a trusted proxy's ``user_header`` (an untrusted peer's is ignored).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from werkzeug.serving import make_server
from werkzeug.test import Client

from shmooze import servicekey
from shmooze.gateway.app import Gateway
from shmooze.gateway.sessions import COOKIE, session_secret
from shmooze.gateway.users import fingerprint, hash_password
from shmooze.http.jsonapp import service_app
from shmooze.queue import Queue
from shmooze.settings import Settings
from shmooze.settings import read as read_settings
from shmooze.testing import WebSocketClient
from tests.apps import TYPES
from tests.helpers import Stack, start_service, wait_for, write_settings
from tests.test_service_key import as_nobody, need_setpriv

TOKEN = "users-token-5d1e0b7a"
KEY = "users-service-key-3c9f2a64e1"
PASSWORDS = {"ada": "ada's long passphrase", "bo": "bo-pass-1234"}
HASHES = {name: hash_password(pw) for name, pw in PASSWORDS.items()}
USERS = {"ada": {"password_hash": HASHES["ada"], "role": "operator"},
         "bo": {"password_hash": HASHES["bo"], "role": "user"}}
POLICY = {"queue": {"add": "anyone", "mv": "user", "rm": "operator"}}
ADD = {"cmd": "add", "args": {"type": "good"}}
MV = {"cmd": "mv", "args": {"uids": []}}
RM = {"cmd": "rm", "args": {"uids": []}}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("users")
    with Stack(tmp, {"queue": "tests.apps:make_queue"}, users=USERS, command_access=POLICY, access_token=TOKEN,
               service_key=KEY, open_commands=["add"], public=["ports", "users", "access_token", "service_key"],
               metrics_path=str(tmp / "metrics")) as stack:
        yield stack


def sign_in(stack: Stack, user: str, password: str | None = None) -> requests.Session:
    session = requests.Session()
    resp = session.post(stack.url + "_session", json={"user": user, "password": password or PASSWORDS[user]},
                        timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"] == {"user": user, "role": USERS[user]["role"], "sign_in": True}
    return session


def send(stack: Stack, body: Any, session: Any = requests, **kw: Any) -> tuple[int, Any]:
    resp = session.post(stack.url + "queue", json=body, timeout=10, **kw)
    return resp.status_code, resp.json()


def ws_ask(ws: WebSocketClient, msg: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps(msg))
    text = ws.receive(10)
    assert text is not None, f"no answer to {msg}"
    return json.loads(text)


def test_each_command_needs_its_level(live):
    # Anyone: reads and add; a user: mv; an operator: rm (and what the policy does not name).
    assert send(live, {"cmd": "queue"})[0] == 200
    status, added = send(live, ADD)
    assert status == 200 and added["success"] is True and added["result"]["uid"]
    for body, needs in ((MV, "user"), (RM, "operator"), ({"cmd": "set_bg", "args": {"type": "nosuch"}}, "operator")):
        status, answer = send(live, body)
        assert status == 401 and answer["sign_in"] is True and answer["needs"] == needs, answer
        assert answer["success"] is False and "sign in" in answer["error"]
    bo = sign_in(live, "bo")
    assert send(live, MV, bo) == (200, {"success": True})
    status, answer = send(live, RM, bo)
    assert status == 401 and answer["needs"] == "operator"
    assert send(live, [{"cmd": "queue"}, MV, RM], bo)[0] == 401  # a batch needs its most guarded command
    ada = sign_in(live, "ada")
    assert send(live, RM, ada) == (200, {"success": True})
    assert send(live, RM, headers={"Authorization": f"Bearer {TOKEN}"}) == (200, {"success": True})
    # The dashboard's restart and the metrics need an operator.
    assert requests.get(live.url + "metrics", timeout=10).status_code == 401
    assert bo.get(live.url + "metrics", timeout=10).status_code == 401
    assert ada.get(live.url + "metrics", timeout=10).status_code == 200
    refused = bo.post(live.url + "_shmooze/restart", json={"service": "nosuch"}, timeout=10)
    assert refused.status_code == 401 and refused.json()["sign_in"] is True
    assert ada.post(live.url + "_shmooze/restart", json={"service": "nosuch"}, timeout=10).status_code == 404


def test_sign_in_sets_a_guarded_cookie_and_sign_out_ends_it(live):
    wrong = requests.post(live.url + "_session", json={"user": "bo", "password": "nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["sign_in"] is True and COOKIE not in wrong.cookies
    nobody = requests.post(live.url + "_session", json={"user": "nobody", "password": "nope"}, timeout=10)
    assert nobody.status_code == 401 and nobody.json()["error"] == wrong.json()["error"]
    form = requests.post(live.url + "_session", data={"user": "bo", "password": PASSWORDS["bo"]}, timeout=10)
    assert form.status_code == 415  # a cross-site form cannot sign anyone in
    resp = requests.post(live.url + "_session", json={"user": "bo", "password": PASSWORDS["bo"]}, timeout=10)
    header = resp.headers["Set-Cookie"]
    assert header.startswith(COOKIE + "=") and "HttpOnly" in header and "SameSite=Strict" in header
    assert "Path=/" in header and "Max-Age=43200" in header and "Secure" not in header  # plain http here
    cookie = {COOKIE: resp.cookies[COOKIE]}
    assert requests.get(live.url + "_session", cookies=cookie, timeout=10).json()["result"]["user"] == "bo"
    assert send(live, MV, cookies=cookie)[0] == 200
    with WebSocketClient.connect(live.ws, headers={"Cookie": f"{COOKIE}={cookie[COOKIE]}"}, timeout=5) as ws:
        assert ws_ask(ws, {"id": 1, "service": "queue", **MV}) == {"id": 1, "success": True}
        out = requests.delete(live.url + "_session", cookies=cookie, timeout=10)
        assert out.status_code == 200 and out.json()["result"]["user"] is None
        # Signed out: the same cookie is refused from now on, by every worker, and on the open WebSocket.
        refused = ws_ask(ws, {"id": 2, "service": "queue", **MV})
        assert refused["success"] is False and refused["sign_in"] is True, refused
    for _ in range(6):  # (two gateway workers: each must know)
        status, answer = send(live, MV, cookies=cookie)
        assert status == 401 and answer["needs"] == "user"
    with WebSocketClient.connect(live.ws, headers={"Cookie": f"{COOKIE}={cookie[COOKIE]}"}, timeout=5) as ws:
        assert ws_ask(ws, {"id": 3, "service": "queue", **MV})["sign_in"] is True


def forged(payload: dict[str, str], age: float, key: bytes = KEY.encode()) -> str:
    """A cookie signed with the gateway's own session key, ``age`` seconds old."""

    class Then(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age)

    return URLSafeTimedSerializer(session_secret(key), salt="shmooze-session", signer=Then).dumps(payload)


def test_tampered_and_expired_cookies_are_refused(live):
    good = forged({"u": "ada", "f": fingerprint(HASHES["ada"]), "s": "forged-1"}, age=10)
    assert send(live, RM, cookies={COOKIE: good})[0] == 200  # the key is the one derived from the service key
    expired = forged({"u": "ada", "f": fingerprint(HASHES["ada"]), "s": "forged-2"}, age=43200 + 60)
    tampered = good.replace(good.split(".")[0], forged({"u": "ada", "f": "0" * 18, "s": "x"}, 0).split(".")[0])
    other_key = forged({"u": "ada", "f": fingerprint(HASHES["ada"]), "s": "forged-3"}, 10, b"another key, not ours")
    for bad in (expired, tampered, other_key, good[:-2] + ("AA" if not good.endswith("AA") else "BB")):
        status, answer = send(live, RM, cookies={COOKIE: bad})
        assert status == 401 and answer["sign_in"] is True
        with WebSocketClient.connect(live.ws, headers={"Cookie": f"{COOKIE}={bad}"}, timeout=5) as ws:
            assert ws_ask(ws, {"id": 1, "service": "queue", **RM})["sign_in"] is True
    with WebSocketClient.connect(live.ws, headers={"Cookie": f"{COOKIE}={good}"}, timeout=5) as ws:
        assert ws_ask(ws, {"id": 1, "service": "queue", **RM}) == {"id": 1, "success": True}


def test_open_commands_never_open_a_services_port(live):
    """``open_commands: ["add"]`` opens add at the gateway, never on the queue's own port."""
    need_setpriv()
    raw = ("import sys, urllib.request, urllib.error\n"
           "req = urllib.request.Request(sys.argv[1], data=b'{\"cmd\": \"add\", \"args\": {\"type\": \"good\"}}',"
           " headers={'Content-Type': 'application/json'})\n"
           "try:\n    r = urllib.request.urlopen(req, timeout=10); print(r.status, r.read().decode())\n"
           "except urllib.error.HTTPError as exc:\n    print(exc.code, exc.read().decode())\n")
    before = requests.post(live.direct("queue"), json={"cmd": "queue"}, timeout=10).json()["result"]
    proc = as_nobody(raw, live.direct("queue"), stdout=subprocess.PIPE)
    status, _, body = proc.communicate(timeout=30)[0].decode().strip().partition(" ")
    assert int(status) == 401 and "service key" in json.loads(body)["error"]
    assert requests.post(live.direct("queue"), json={"cmd": "queue"}, timeout=10).json()["result"] == before
    assert send(live, ADD)[0] == 200  # through the gateway, anyone adds


def test_a_new_password_ends_the_users_sessions(live, tmp_path):
    bo = sign_in(live, "bo")
    assert send(live, MV, bo)[0] == 200
    data = json.loads(live.path.read_text())
    new_hash = hash_password("bo's new password")
    data["users"] = {**USERS, "bo": {"password_hash": new_hash, "role": "user"}}
    live.path.write_text(json.dumps(data))
    try:
        live.procs["wsgi"].stop()
        live.procs["wsgi"] = start_service(live.path, "wsgi", live.tmp)
        status, answer = send(live, MV, bo)
        assert status == 401 and answer["sign_in"] is True  # the old cookie names the old hash
        new = sign_in(live, "bo", "bo's new password")
        assert send(live, MV, new)[0] == 200
    finally:
        data["users"] = USERS
        live.path.write_text(json.dumps(data))
        live.procs["wsgi"].stop()
        live.procs["wsgi"] = start_service(live.path, "wsgi", live.tmp)


def test_no_secret_is_served_or_logged(live):
    ada = sign_in(live, "ada")
    requests.post(live.url + "_session", json={"user": "bo", "password": "a wrong guess"}, timeout=10)
    public = requests.get(live.url + "settings.json", timeout=10).json()
    assert set(public) == {"ports"}
    metrics = ada.get(live.url + "metrics", timeout=10).text
    status = send(live, {"cmd": "status"})[1]
    key = servicekey.load(read_settings(live.path), create=False)
    secrets = [TOKEN, KEY, *PASSWORDS.values(), *HASHES.values(), "a wrong guess", session_secret(key).hex(),
               ada.cookies[COOKIE]]
    for secret in secrets:
        assert secret not in json.dumps(public) + metrics + json.dumps(status)
    # Nor in a module's environment.
    uid = send(live, ADD)[1]["result"]["uid"]
    pid = wait_for(lambda: next((m.get("pid") for m in send(live, {"cmd": "status"})[1]["result"]["modules"]
                                 if m["uid"] == uid), None), 10, what="the module's pid")
    environment = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
    assert "SHMOOZE" in environment or "PATH" in environment
    for secret in secrets:
        assert secret not in environment
    logs = [p for p in Path(live.tmp).rglob("*") if p.is_file() and p.name != "settings.json"
            and p.suffix not in (".key", ".signed-out") and not p.name.endswith((".db", ".journal"))]
    assert any(p.suffix == ".log" for p in logs)
    for path in logs:
        text = path.read_bytes().decode("utf-8", "replace")
        for secret in secrets:
            assert secret not in text, (path, secret[:6])


# -- an outage is not a login problem -----------------------------------------------------------

def test_an_unreachable_service_is_502_whatever_the_token(tmp_path):
    with Stack(tmp_path, {}, down=["queue"], access_token=TOKEN, users=USERS, connect_timeout=0.5) as stack:
        for body in ({"cmd": "queue"}, {"cmd": "queue"}, {"cmd": "status"}, RM, {"cmd": "queue"}):
            resp = requests.post(stack.url + "queue", json=body, timeout=10)
            assert resp.status_code == 502, (body, resp.status_code, resp.text)
            assert resp.json()["success"] is False
        with WebSocketClient.connect(stack.ws, timeout=5) as ws:
            answer = ws_ask(ws, {"id": 1, "service": "queue", "cmd": "queue"})
            assert answer["success"] is False and "token" not in answer["error"] and "sign_in" not in answer


# -- a hook, a trusted proxy (in process, against a real queue) ---------------------------------

def user_of(environ: dict[str, Any]) -> Any:
    """A ``user_hook``: the application's own session, here a header."""
    return {"carol-session": ("carol", "operator"), "dan-session": "dan"}.get(environ.get("HTTP_X_APP_SESSION", ""))


@pytest.fixture(scope="module")
def queue_port():
    svc = Queue(TYPES)
    server = make_server("127.0.0.1", 0, service_app(svc), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(5)
    svc.stop()


def in_process(port: int, **settings: Any) -> Client:
    return Client(Gateway(Settings({"ports": {"wsgi": 1, "queue": port}, "command_access": POLICY, **settings})))


def status_of(client: Client, body: Any, **kw: Any) -> int:
    return client.post("/queue", data=json.dumps(body), content_type="application/json", **kw).status_code


def test_a_user_hook_names_the_caller(queue_port):
    client = in_process(queue_port, user_hook="tests.test_users:user_of")
    assert status_of(client, RM) == 401
    assert status_of(client, RM, headers={"X-App-Session": "dan-session"}) == 401  # a user, not an operator
    assert status_of(client, MV, headers={"X-App-Session": "dan-session"}) == 200
    assert status_of(client, RM, headers={"X-App-Session": "carol-session"}) == 200
    who = client.get("/_session", headers={"X-App-Session": "carol-session"}).get_json()
    assert who["result"] == {"user": "carol", "role": "operator", "sign_in": False}


def test_a_proxy_header_is_believed_only_from_a_trusted_proxy(queue_port):
    client = in_process(queue_port, user_header="X-Remote-User", trusted_proxies=["10.9.0.0/24"],
                        users={"carol": {"role": "operator"}})
    proxy = {"REMOTE_ADDR": "10.9.0.7"}
    assert status_of(client, RM, headers={"X-Remote-User": "carol"}, environ_base=proxy) == 200
    assert status_of(client, MV, headers={"X-Remote-User": "erin"}, environ_base=proxy) == 200  # a user
    assert status_of(client, RM, headers={"X-Remote-User": "erin"}, environ_base=proxy) == 401
    for peer in ("127.0.0.1", "10.9.1.7"):  # not a trusted proxy: its header is anyone's to write
        assert status_of(client, RM, headers={"X-Remote-User": "carol"}, environ_base={"REMOTE_ADDR": peer}) == 401
        assert status_of(client, MV, headers={"X-Remote-User": "carol"}, environ_base={"REMOTE_ADDR": peer}) == 401
    # carol has no password: she cannot sign in with one
    signed = client.post("/_session", data=json.dumps({"user": "carol", "password": ""}), content_type="application/json")
    assert signed.status_code == 401


def test_sign_ins_take_from_the_clients_rate_limit(queue_port):
    """Guessing passwords from one address is as slow as any flood: after the burst, 429 with Retry-After
    (the right password included), while another address still signs in."""
    client = in_process(queue_port, users=USERS, rate_limit=0.5, rate_limit_burst=3)
    guesser = {"REMOTE_ADDR": "198.51.100.7"}

    def sign_in_as(password: str, peer: dict[str, str]) -> Any:
        return client.post("/_session", data=json.dumps({"user": "bo", "password": password}),
                           content_type="application/json", environ_base=peer)

    assert [sign_in_as(f"guess {n}", guesser).status_code for n in range(3)] == [401, 401, 401]
    refused = sign_in_as(PASSWORDS["bo"], guesser)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "rate_limit" in refused.get_json()["error"]
    assert sign_in_as(PASSWORDS["bo"], {"REMOTE_ADDR": "198.51.100.8"}).status_code == 200


def test_with_nothing_set_everything_is_open(queue_port):
    client = Client(Gateway(Settings({"ports": {"wsgi": 1, "queue": queue_port}})))
    assert status_of(client, RM) == 200 and status_of(client, MV) == 200


def test_the_settings_refuse_a_password_for_a_hash(tmp_path):
    from shmooze.errors import SettingsError

    path = write_settings(tmp_path / "settings.json", ports={"wsgi": 1}, users={"ada": {"password_hash": "hunter2"}},
                          command_access={"queue": {"rm": "admin"}})
    with pytest.raises(SettingsError) as info:
        read_settings(path)
    assert "argon2 hash" in str(info.value) and "'admin'" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_hash_password_makes_a_hash_that_verifies():
    from argon2 import PasswordHasher

    from tests.helpers import shmooze_argv

    out = subprocess.run(shmooze_argv("hash-password"), input="s3cret pass\n", capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out.startswith("$argon2id$") and PasswordHasher().verify(out, "s3cret pass")


def test_signed_out_ids_reach_every_worker_and_the_file_stays_small(tmp_path, monkeypatch):
    from shmooze.gateway import sessions

    path = str(tmp_path / "keys" / "service.key.signed-out")
    one, two = sessions.Revocations(path, 3600), sessions.Revocations(path, 3600)  # two workers of a host
    one.revoke("first")
    assert two.revoked("first") and not two.revoked("second")
    stale = sessions.Revocations(path, -10)  # ids whose cookies have expired anyway: dropped when compacted
    for i in range(20):
        stale.revoke(f"old{i}")
    assert "old19" in Path(path).read_text() and not two.revoked("old19")
    monkeypatch.setattr(sessions, "COMPACT_AFTER", 200)
    for i in range(12):
        two.revoke(f"id{i:02d}")
    size = Path(path).stat().st_size
    assert size < 400 and "old0" not in Path(path).read_text()
    fresh = sessions.Revocations(path, 3600)
    assert all(w.revoked(f"id{i:02d}") for w in (one, two, fresh) for i in range(12))
    assert fresh.revoked("first") and (Path(path).stat().st_mode & 0o077) == 0


def test_sign_ins_do_not_hold_up_other_commands(live):
    """A password check (argon2, tens of milliseconds of CPU) runs off the gateway worker's event
    loop: reads sent while six sign-ins are being checked are answered long before they all are."""
    from concurrent.futures import ThreadPoolExecutor

    def sign_in_once(_: int) -> float:
        requests.post(live.url + "_session", json={"user": "bo", "password": "not bo's password"}, timeout=30)
        return time.monotonic()

    reads = []
    with ThreadPoolExecutor(6) as pool:
        started = time.monotonic()
        done = [pool.submit(sign_in_once, i) for i in range(6)]
        while not all(f.done() for f in done):
            sent = time.monotonic()
            assert send(live, {"cmd": "queue"})[0] == 200
            reads.append(time.monotonic() - sent)
        all_done = max(f.result() for f in done) - started
    assert reads and max(reads) < all_done / 2, (reads, all_done)


def test_the_cookie_is_secure_behind_tls(queue_port):
    client = in_process(queue_port, users=USERS, trusted_proxies=["10.9.0.1"])
    body = json.dumps({"user": "bo", "password": PASSWORDS["bo"]})

    def cookie(**kw: Any) -> str:
        resp = client.post("/_session", data=body, content_type="application/json", **kw)
        assert resp.status_code == 200
        return resp.headers["Set-Cookie"]

    assert "Secure" not in cookie()
    assert "; Secure" in cookie(base_url="https://localhost/")
    assert "; Secure" in cookie(headers={"X-Forwarded-Proto": "https"}, environ_base={"REMOTE_ADDR": "10.9.0.1"})
    assert "Secure" not in cookie(headers={"X-Forwarded-Proto": "https"}, environ_base={"REMOTE_ADDR": "10.9.0.2"})
