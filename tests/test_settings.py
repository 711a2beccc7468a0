"""Settings: loading, defaults, path expansion, public keys, and one-line errors."""

import json
import subprocess

import pytest

from shmooze import settings
from shmooze.errors import SettingsError
from tests.helpers import PYTHON


def write(tmp_path, text):
    path = tmp_path / "settings.json"
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


def test_defaults_and_attribute_access(tmp_path):
    s = settings.read(write(tmp_path, {"ports": {"wsgi": 8000, "queue": 8001}, "name": "x"}))
    assert s.ports == {"wsgi": 8000, "queue": 8001}
    assert s.name == "x" and s.get("name") == "x" and s.get("missing", 5) == 5
    assert s.wsgi_prefix == "/" and s.static_prefix == "/static/"
    assert s.static_path == settings.STATIC_DIR
    assert s.service_names() == ["queue"] and s.services == {}
    with pytest.raises(AttributeError):
        _ = s.missing


def test_path_keys_expand_env_vars_and_resolve_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SHMZ_TEST_DIR", "/srv/data")
    s = settings.read(write(tmp_path, {"ports": {"wsgi": 1}, "log_database_path": "${SHMZ_TEST_DIR}/log.db",
                                       "static_path": "web", "home_path": "$HOME/x", "other": "$HOME"}))
    assert s.log_database_path == "/srv/data/log.db"
    assert s.static_path == str(tmp_path / "web")
    assert not s.home_path.startswith("$")
    assert s.other == "$HOME"  # only keys ending in _path are expanded


def test_public_lists_only_public_keys(tmp_path):
    s = settings.read(write(tmp_path, {"ports": {"wsgi": 1}, "public": ["ports", "title", "absent"],
                                       "title": "t", "api_key": "secret"}))
    assert s.public() == {"ports": {"wsgi": 1}, "title": "t"}
    listed = settings.read(write(tmp_path, {"ports": {"wsgi": 1}, "public": ["title", "service_key", "access_token"],
                                            "title": "t", "service_key": "k" * 20, "access_token": "t" * 20}))
    assert listed.public() == {"title": "t"}  # secrets are never served, even when listed


def test_env_var_names_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, {"ports": {"wsgi": 1234}})
    monkeypatch.setenv("SHMOOZE_SETTINGS", str(path))
    assert settings.load().ports["wsgi"] == 1234
    assert settings.ports["wsgi"] == 1234 and settings.get("ports")["wsgi"] == 1234


@pytest.mark.parametrize("text, fragment", [
    ('{"ports": {"wsgi": 1},\n  "x": }', "bad JSON at line 2 column"),
    ('{"public": []}', "'ports' is missing"),
    ('[1]', "must be a JSON object"),
    ('{"ports": {"wsgi": "80"}}', "port of 'wsgi'"),
    ('{"ports": {"wsgi": 1}, "wsgi_prefix": "api"}', "'wsgi_prefix' must be a path"),
])
def test_bad_files_are_one_clear_error(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        settings.read(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_every_invalid_value_is_reported_at_once(tmp_path):
    path = write(tmp_path, {"ports": {"wsgi": 1, "queue": 70000}, "forward_timeout": "30", "service_worker": "sync",
                            "durability": "sometimes", "module_types": {"w": {"restart_delay": -1, "colour": 1}},
                            "gateway_connections": 0, "public": "ports", "app_name": 5})
    with pytest.raises(SettingsError) as info:
        settings.read(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 7 invalid settings: ") and "\n" not in message
    for fragment in ("port of 'queue'", "'forward_timeout' must be a number", "'service_worker' must be 'gthread' or",
                     "'durability' must be 'fsync' or 'write', not 'sometimes'", "module_types['w']: restart_delay",
                     "module_types['w']: unknown setting colour", "'gateway_connections' must be a whole number",
                     "'public' must be a list"):
        assert fragment in message
    assert "app_name" not in message  # the application's own keys are its own
    with pytest.raises(SettingsError, match="'hosts' names 'volume', which has no port"):
        settings.Settings({"ports": {"wsgi": 1}, "hosts": {"volume": "10.0.0.2"}})


def test_reads_are_typed_by_the_registry():
    s = settings.Settings({"ports": {"wsgi": 1}, "forward_timeout": 3, "max_body_bytes": 2048.0, "log_level": "DEBUG",
                           "stop_timeout": 4})
    assert s.forward_timeout == 3.0 and isinstance(s.forward_timeout, float)
    assert s.max_body_bytes == 2048 and isinstance(s.max_body_bytes, int)
    assert s.log_level == "debug" and s.stop_timeout == 4.0
    assert s.gateway_connections == 4000 and not s.given("gateway_connections") and s.given("stop_timeout")
    assert s.get("gateway_connections") == 4000 and s.get("app_key", 5) == 5
    s.hosts["x"] = "y"  # each file has its own copy of a default
    assert settings.Settings({"ports": {"wsgi": 1}}).hosts == {}


def test_missing_file(tmp_path):
    with pytest.raises(SettingsError) as info:
        settings.read(tmp_path / "nope.json")
    assert "not found" in str(info.value)


@pytest.mark.parametrize("text, fragment", [
    (None, "settings file not found"),
    ('{"ports": \n\n  {"wsgi": 1,}}', "bad JSON at line 3 column"),
    ('{"public": []}', "'ports' is missing"),
    # checked before anything starts (durability was checked once the service was built)
    ('{"ports": {"wsgi": 1, "queue": 2}, "forward_timeout": "x", "durability": "never"}', "2 invalid settings"),
])
def test_commands_print_one_line_not_a_traceback(tmp_path, text, fragment):
    path = tmp_path / "settings.json"
    if text is not None:
        path.write_text(text)
    proc = subprocess.run([PYTHON, "-m", "shmooze", "serve", "queue", "--settings", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0] and "Traceback" not in proc.stderr
