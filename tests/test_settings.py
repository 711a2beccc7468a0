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
        s.missing


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


def test_missing_file(tmp_path):
    with pytest.raises(SettingsError) as info:
        settings.read(tmp_path / "nope.json")
    assert "not found" in str(info.value)


@pytest.mark.parametrize("text, fragment", [
    (None, "settings file not found"),
    ('{"ports": \n\n  {"wsgi": 1,}}', "bad JSON at line 3 column"),
    ('{"public": []}', "'ports' is missing"),
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
