"""Past one machine, on loopback: services by address, the token on a service's own port, the
gateway's health check, ``shmooze run --services`` and the systemd units.

The same on simulated hosts (network namespaces, HAProxy, Chromium) is tests/test_netns.py.
"""

import json
import socket
import subprocess
import threading
import time

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.test import Client

from shmooze import servicekey
from shmooze import settings as settings_module
from shmooze.access import ServiceGuard, check_listen_address, is_read_only
from shmooze.deploy.runner import RunPaths, chosen_services, supervisord_conf, systemd_units, write_systemd_units
from shmooze.errors import SettingsError, ShmoozeError
from shmooze.gateway.app import Gateway
from shmooze.http.jsonapp import service_app
from shmooze.settings import Settings
from tests.helpers import PYTHON, ROOT, free_port, shmooze_argv, write_settings
from tests.sample_service import Sample


def test_hosts_place_services_and_the_gateway_reaches_them_there():
    s = Settings({"ports": {"wsgi": 8080, "queue": 8081, "pool": 8082, "v6": 8083},
                  "hosts": {"queue": "10.0.0.2", "v6": "fd00::3"}, "host": "0.0.0.0"})
    assert s.listen_address("queue") == "10.0.0.2" and s.address("queue") == "10.0.0.2"
    assert s.listen_address("pool") == "0.0.0.0" and s.address("pool") == "127.0.0.1"
    assert s.url("v6") == "http://[fd00::3]:8083" and s.url("queue") == "http://10.0.0.2:8081"
    assert Settings({"ports": {"q": 1}, "service_host": "10.0.0.9"}).address("q") == "10.0.0.9"
    with pytest.raises(SettingsError, match="'hosts' names 'nope'"):
        Settings({"ports": {"q": 1}, "hosts": {"nope": "10.0.0.2"}})
    with pytest.raises(SettingsError, match="'hosts' must be an object"):
        Settings({"ports": {"q": 1}, "hosts": {"q": 5}})


def test_a_service_beyond_loopback_needs_a_service_key_to_start():
    for address in ("127.0.0.1", "127.0.0.5", "::1", "localhost"):
        check_listen_address(Settings({"ports": {"q": 1}, "hosts": {"q": address}}), "q")
    for address in ("0.0.0.0", "10.0.0.2", "::", "queue.example.org"):
        loose = Settings({"ports": {"q": 1}, "hosts": {"q": address}, "access_token": "a browser's token"})
        with pytest.raises(SettingsError, match="beyond loopback"):
            check_listen_address(loose, "q")  # the browsers' token is no service key
        check_listen_address(Settings({"ports": {"q": 1}, "hosts": {"q": address}, "service_key": KEY}), "q")


def test_serve_refuses_a_public_address_without_a_service_key(tmp_path):
    path = write_settings(tmp_path / "s.json", ports={"sample": free_port()}, host="0.0.0.0",
                          services={"sample": "tests.sample_service:Sample"})
    done = subprocess.run(shmooze_argv("serve", "sample", "--settings", str(path)), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "beyond loopback" in done.stderr and "service_key" in done.stderr
    assert "Traceback" not in done.stderr


KEY = "a-shared-service-key-0123456789"


class KeepAlive(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"  # as gunicorn: the gateway's checked connection is kept for the command


@pytest.fixture
def guarded_service():
    """A service on its own port, with the service key (as every service is)."""
    service = Sample()
    app = service_app(service, guard=ServiceGuard(service, KEY.encode()))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=KeepAlive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(5)


def test_the_service_port_asks_for_the_service_key_for_what_changes_state(guarded_service):
    import requests

    url = f"http://127.0.0.1:{guarded_service}/"
    assert is_read_only(Sample(), "status") and not is_read_only(Sample(), "add")
    # (Werkzeug's server gives no gunicorn.socket: no peer is taken for this user's own, as a remote one is not.)
    refused = requests.post(url, json={"cmd": "add", "args": {"a": 1}}, timeout=10)
    assert refused.status_code == 401 and "service key" in refused.json()["error"]
    batch = requests.post(url, json=[{"cmd": "status"}, {"cmd": "add", "args": {"a": 1}}], timeout=10)
    assert batch.status_code == 401  # one command that changes state makes the whole batch need it
    wrong = requests.post(url, json={"cmd": "add", "args": {"a": 1}}, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=10)
    assert wrong.status_code == 401  # the key itself is never a password: only a signature counts
    assert requests.post(url, json={"cmd": "status"}, timeout=10).json()["success"] is True
    body = json.dumps({"cmd": "add", "args": {"a": 2, "b": 3}}).encode()
    signer = servicekey.Signer(KEY.encode())
    auth, nonce = signer.sign(body)
    ok = requests.post(url, data=body, headers={"Content-Type": "application/json", "Shmooze-Auth": auth}, timeout=10)
    assert ok.status_code == 200 and ok.json() == {"success": True, "result": 5}
    assert signer.proven(nonce, 200, ok.content, ok.headers["Shmooze-Proof"])
    again = requests.post(url, data=body, headers={"Content-Type": "application/json", "Shmooze-Auth": auth},
                          timeout=10)
    assert again.status_code == 401 and "replay" in again.json()["error"]


def test_the_gateway_signs_for_services_and_answers_healthz(guarded_service):
    down = free_port()
    data = {"ports": {"wsgi": 1, "sample": guarded_service, "down": down}, "service_key": KEY,
            "connect_timeout": 1}
    client = Client(Gateway(Settings(data)))
    resp = client.post("/sample", data=json.dumps({"cmd": "add", "args": {"a": 4}}), content_type="application/json")
    assert resp.status_code == 200 and json.loads(resp.get_data()) == {"success": True, "result": 4}
    health = client.get("/healthz")
    body = json.loads(health.get_data())
    assert health.status_code == 200 and body["healthy"] and body["up"] == ["sample"]
    assert list(body["down"]) == ["down"] and "down" in body["down"]["down"]
    assert client.post("/healthz").status_code == 405
    # A gateway with another key is told the service did not prove itself, and never takes its answer.
    other = Client(Gateway(Settings({**data, "service_key": "another-key-of-another-app"})))
    stray = other.post("/sample", data=json.dumps({"cmd": "status"}), content_type="application/json")
    assert stray.status_code == 502 and "did not prove" in json.loads(stray.get_data())["error"]
    # A service that takes the connection but answers late is slow, not down: still healthy.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        busy = Client(Gateway(Settings({"ports": {"wsgi": 1, "busy": silent.getsockname()[1], "down": down},
                                        "service_key": KEY, "connect_timeout": 0.5})))
        answer = busy.get("/healthz")
        body = json.loads(answer.get_data())
        assert answer.status_code == 200 and list(body["slow"]) == ["busy"] and list(body["down"]) == ["down"]
    # Cut off from every service: 503, so a load balancer sends browsers to another gateway.
    lone = Client(Gateway(Settings({"ports": {"wsgi": 1, "down": down}, "connect_timeout": 1})))
    started = time.monotonic()
    cut = lone.get("/healthz")
    assert cut.status_code == 503 and json.loads(cut.get_data())["healthy"] is False
    assert time.monotonic() - started < 5


def test_run_services_picks_this_hosts_services(tmp_path):
    path = write_settings(tmp_path / "s.json", ports={"wsgi": 1, "queue": 2, "pool": 3},
                          hosts={"queue": "10.0.0.2"}, service_key=KEY)
    s = settings_module.read(path)
    assert chosen_services(s, None) == ["pool", "queue", "wsgi"]
    assert chosen_services(s, ["gateway"]) == ["wsgi"]
    with pytest.raises(ShmoozeError, match="no service named 'nope'"):
        chosen_services(s, ["queue", "nope"])
    conf = supervisord_conf(s, RunPaths(tmp_path / "run"), ["queue"])
    assert "[program:queue]" in conf and "[program:wsgi]" not in conf and "programs=queue\n" in conf
    done = subprocess.run(shmooze_argv("run", str(path), "--services", "queue,nope"), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "no service named 'nope'" in done.stderr


def test_systemd_units_one_per_service(tmp_path):
    app = tmp_path / "my app"
    app.mkdir()
    path = write_settings(app / "settings.json", ports={"wsgi": 8080, "queue": 8081, "pool": 8082},
                          services={"queue": "a:b", "pool": "a:c"}, stop_timeout=7)
    s = settings_module.read(path)
    units = systemd_units(s, ["queue", "wsgi"], user="shmooze")
    assert sorted(units) == ["shmooze-my-app-queue.service", "shmooze-my-app-wsgi.service", "shmooze-my-app.target"]
    queue = units["shmooze-my-app-queue.service"]
    assert f'ExecStart="{PYTHON}" "-m" "shmooze" "serve" "queue" "--settings" "{path}"' in queue
    for line in ("User=shmooze", "Restart=always", "KillMode=mixed", "TimeoutStopSec=12", "Delegate=yes",
                 "PartOf=shmooze-my-app.target", "WantedBy=shmooze-my-app.target", "After=network-online.target"):
        assert line in queue.splitlines(), line
    assert "Delegate=yes" not in units["shmooze-my-app-wsgi.service"]
    assert "Wants=shmooze-my-app-queue.service shmooze-my-app-wsgi.service" in units["shmooze-my-app.target"]
    out = subprocess.run(shmooze_argv("systemd-units", "--settings", str(path), "--output", str(tmp_path / "u")),
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    written = sorted(p.name for p in (tmp_path / "u").iterdir())
    assert written == ["shmooze-my-app-pool.service", "shmooze-my-app-queue.service",
                       "shmooze-my-app-wsgi.service", "shmooze-my-app.target"]
    assert "systemctl enable --now shmooze-my-app.target" in out.stdout
    if _has("systemd-analyze"):  # systemd's own parser, where it is installed
        check = subprocess.run(["systemd-analyze", "verify", *map(str, write_systemd_units(s, tmp_path / "v"))],
                               capture_output=True, text=True)
        import re

        complaints = re.findall(r"^.*\.(?:service|target):\d+: .*$", check.stderr, re.M)  # a line it could not parse
        assert not complaints, complaints


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


def _readme_block(after: str) -> str:
    text = (ROOT / "docs" / "past-one-machine.md").read_text()
    start = text.index("```", text.index(after)) + 3
    start = text.index("\n", start) + 1
    return text[start:text.index("```", start)]


@pytest.mark.skipif(not (_has("haproxy") and _has("openssl")), reason="needs haproxy and openssl")
def test_the_readme_haproxy_configuration_is_valid(tmp_path):
    pem = tmp_path / "myapp.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=myapp.test",
                    "-days", "1", "-keyout", str(tmp_path / "key"), "-out", str(tmp_path / "crt")],
                   check=True, capture_output=True, timeout=60)
    pem.write_text((tmp_path / "crt").read_text() + (tmp_path / "key").read_text())
    conf = _readme_block("**HAProxy**").replace("/etc/haproxy/myapp.pem", str(pem))
    assert "http-check send meth GET uri /healthz" in conf and "timeout tunnel" in conf
    (tmp_path / "haproxy.cfg").write_text(conf)
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
