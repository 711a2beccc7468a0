"""Application settings, read from one JSON file.

The file is ``$SHMOOZE_SETTINGS`` or ``./settings.json``. Use it as a module::

    from shmooze import settings
    settings.ports["queue"]
    settings.get("log_database_path")

The file is read on first use; :func:`load` reads a given file and makes it current.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from shmooze import registry
from shmooze.errors import SettingsError

ENV_VAR = "SHMOOZE_SETTINGS"
STATIC_DIR = registry.STATIC_DIR
SERVICE_WORKERS = registry.SERVICE_WORKERS


class Settings(registry.Declared):
    """One loaded settings file: typed attributes for the declared keys (:mod:`shmooze.registry`),
    attribute access for the application's own, and :meth:`get`."""

    def __init__(self, data: dict[str, Any], path: str = "<memory>"):
        self.path = path
        self._given = frozenset(data)
        self._data, problems = registry.check(data)
        if len(problems) == 1:
            raise SettingsError(f"{path}: {problems[0]}")
        if problems:
            raise SettingsError(f"{path}: {len(problems)} invalid settings: " + "; ".join(problems))

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_data"][name]
        except KeyError:
            raise AttributeError(f"setting {name!r} is not in {self.__dict__.get('path')}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def get(self, name: str, default: Any = None) -> Any:
        return self._data.get(name, default)

    def secret_names(self) -> list[str]:
        """The names of the settings (at any depth) that hold a secret (see :data:`SECRET_NAMES`)."""
        return _secret_names(self._data)

    def given(self, name: str) -> bool:
        """Whether the file sets ``name`` (else a declared key has its default)."""
        return name in self._given

    def public(self) -> dict[str, Any]:
        """The keys listed in ``public``: what the gateway serves as settings.json (never a secret,
        even when listed)."""
        return {k: self._data[k] for k in self.public_keys if k in self._data and k not in SECRETS}

    def service_names(self) -> list[str]:
        """Service names: every port but the gateway's."""
        return [name for name in self.ports if name != "wsgi"]

    def listen_address(self, name: str) -> str:
        """Where service ``name`` listens: its address in ``hosts``, else ``host`` (127.0.0.1)."""
        return self.hosts.get(name) or self.host

    def address(self, name: str) -> str:
        """Where clients reach service ``name``: its address in ``hosts``, else ``service_host``, else
        loopback (a service listening on every address, 0.0.0.0 or ::, is reached on loopback)."""
        placed = self.hosts.get(name) or self.service_host
        if placed and placed not in ("0.0.0.0", "::"):
            return str(placed)
        listen = self.listen_address(name)
        return "::1" if listen == "::" else "127.0.0.1" if listen == "0.0.0.0" else listen

    def url(self, name: str) -> str:
        """``http://ADDRESS:PORT`` of service ``name`` (IPv6 addresses in brackets)."""
        host = self.address(name)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.ports[name]}"


#: Keys never served, even when ``public`` lists them.
SECRETS = frozenset({"access_token", "service_key", "users"})


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP literal or ``localhost``) is reachable only from this machine."""
    import ipaddress

    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def expand_paths(data: dict[str, Any], base: str | None = None) -> dict[str, Any]:
    """Expand ``$VAR``, ``${VAR}`` and ``~`` in every string value whose key ends in ``_path``.

    A relative path that results is taken relative to ``base`` (the settings file's folder).
    """
    out = dict(data)
    for key, value in data.items():
        if key.endswith("_path") and isinstance(value, str) and value:
            value = os.path.expanduser(os.path.expandvars(value))
            if base is not None and not os.path.isabs(value):
                value = os.path.normpath(os.path.join(base, value))
            out[key] = value
    return out


def read(path: str | os.PathLike[str]) -> Settings:
    """Read and check one settings file; raise :class:`SettingsError` with a one-line reason."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SettingsError(f"{path}: settings file not found (set {ENV_VAR} or create ./settings.json)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read settings: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path}: bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: settings must be a JSON object")
    return Settings(expand_paths(data, os.path.dirname(os.path.abspath(path))), path)


#: Setting names that hold a secret: these, and any ending in ``_token``, ``_key``, ``password`` or ``secret``.
SECRET_NAMES = frozenset({"access_token", "service_key", "users"})


def _secret_names(data: dict[str, Any]) -> list[str]:
    """The names of the settings (at any depth) that hold a secret: a key so named, with a value."""
    found = []
    for key, value in data.items():
        name = str(key).lower()
        if value and (name in SECRET_NAMES or name.endswith(("_token", "_key", "password", "secret"))):
            found.append(str(key))
        elif isinstance(value, dict):
            found += _secret_names(value)
    return found


def exposure_warning(settings: Settings) -> str | None:
    """One line to warn with when the settings file holds a secret and other users may read it."""
    names = settings.secret_names()
    if not names or settings.path.startswith("<"):
        return None
    try:
        mode = os.stat(settings.path).st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o044:
        return None
    return (f"{settings.path} holds secrets ({', '.join(sorted(set(names)))}) and other users may read it "
            f"(mode {mode:04o}): chmod 600 {settings.path}")


def default_path() -> str:
    return os.environ.get(ENV_VAR) or "settings.json"


_current: Settings | None = None
_lock = threading.Lock()


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read settings (``path``, else ``$SHMOOZE_SETTINGS``, else ``./settings.json``) and make them current."""
    global _current
    loaded = read(path if path is not None else default_path())
    with _lock:
        _current = loaded
    return loaded


def use(value: Settings | dict[str, Any]) -> Settings:
    """Make the given settings current (tests and embedding applications)."""
    global _current
    with _lock:
        _current = value if isinstance(value, Settings) else Settings(expand_paths(value))
    return _current


def current() -> Settings:
    """The current settings, read on first use."""
    if _current is None:
        return load()
    return _current


def get(name: str, default: Any = None) -> Any:
    return current().get(name, default)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(current(), name)
