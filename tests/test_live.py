"""The gateway and an example service as real gunicorn daemons, driven by the client and by shmz."""

import json
import subprocess

import pytest

from shmooze.client import Client, ServiceClient
from shmooze.errors import ServiceError, Timeout, TransportError
from tests.helpers import PYTHON, Stack, free_port


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("live"), {"volume": "jukebox.volume:Volume"}, down=["down"],
               public=["ports"], gateway_workers=2) as stack:
        yield {"path": stack.path, "ports": stack.ports, "url": stack.url, "volume": stack.procs["volume"],
               "gateway": stack.procs["wsgi"]}


def shmz(app, *args, timeout=30):
    return subprocess.run([PYTHON, "-m", "shmooze.cli.shmz", "--url", app["url"], *args],
                          capture_output=True, text=True, timeout=timeout)


def test_client_through_gateway_and_direct(app):
    client = Client(app["url"])
    assert client.volume.set_volume(level=30) == {"level": 30, "muted": False}
    direct = ServiceClient(f"http://127.0.0.1:{app['ports']['volume']}/", "volume")
    assert direct.get_volume() == {"level": 30, "muted": False}
    assert client.settings()["ports"] == app["ports"]


def test_client_batches(app):
    vol = Client(app["url"]).volume
    with vol.batch() as batch:
        a = batch.set_volume(level=10)
        b = batch.set_volume(level=1000)
        c = batch.step(by=5)
    assert a.result["level"] == 10 and c.result["level"] == 15
    assert not b.ok
    with pytest.raises(ServiceError, match="from 0 to 100"):
        _ = b.result


def test_client_errors_have_one_root(app):
    client = Client(app["url"], timeout=5)
    with pytest.raises(ServiceError, match="from 0 to 100") as info:
        client.volume.set_volume(level=101)
    assert info.value.service == "volume" and info.value.cmd == "set_volume"
    with pytest.raises(TransportError) as info:
        client.nosuch.status()
    assert info.value.status == 404
    with pytest.raises(TransportError) as info:
        client.down.status()
    assert info.value.status == 502
    with pytest.raises(TransportError, match="connection refused"):
        Client(f"http://127.0.0.1:{free_port()}/").volume.status()


def test_client_timeout(app):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        with pytest.raises(Timeout):
            ServiceClient(f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout=0.2).status()
    finally:
        listener.close()


def test_service_status_and_single_process(app):
    status = Client(app["url"]).volume.status()
    assert status["service"] == "volume" and status["uptime"] > 0
    assert status["pid"] in app["volume"].remember_descendants()


def test_service_keeps_serving_after_bad_requests(app):
    import requests

    url = app["url"] + "volume"
    assert requests.post(url, data=b"{", headers={"Content-Type": "application/json"}, timeout=5).status_code == 400
    assert requests.post(url, data=b"{}", headers={"Content-Type": "text/plain"}, timeout=5).status_code == 415
    assert requests.get(url, timeout=5).status_code == 405
    big = b'{"cmd": "step", "args": {"x": "' + b"y" * (2 << 20) + b'"}}'
    resp = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 413 and resp.json()["success"] is False
    assert Client(app["url"]).volume.get_volume()["level"] >= 0


def test_shmz_prints_results_and_exit_codes(app):
    proc = shmz(app, "volume", "set_volume", "level=42")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"level": 42, "muted": False}
    proc = shmz(app, "volume", "set_volume", '{"level": 43}')
    assert proc.returncode == 0 and json.loads(proc.stdout)["level"] == 43
    proc = shmz(app, "volume", "set_volume", "level=400")
    assert proc.returncode == 1 and "from 0 to 100" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = shmz(app, "volume", "set_volume", "level")
    assert proc.returncode == 2 and "key=value" in proc.stderr
    proc = shmz(app, "down", "status")
    assert proc.returncode == 2 and "502" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([PYTHON, "-m", "shmooze.cli.shmz", "--url", f"http://127.0.0.1:{free_port()}/",
                           "volume", "status"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "connection refused" in proc.stderr
    proc = shmz(app)
    assert proc.returncode == 2


def test_shmz_plain_string_output(app):
    proc = shmz(app, "volume", "commands")
    assert proc.returncode == 0 and "set_volume" in proc.stdout


def test_gateway_has_several_workers(app):
    assert len(app["gateway"].remember_descendants()) >= 2
