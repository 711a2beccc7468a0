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

    def candidates(self, name: str) -> list[str]:
        """The addresses of service ``name``'s candidate hosts (``hosts``; empty: it runs beside the gateway)."""
        return list(self.hosts.get(name, []))

    def own_address(self, name: str) -> str | None:
        """The candidate of service ``name`` that is this host: the one ``shmooze run/serve --address``
        names (``$SHMOOZE_ADDRESS``, comma-separated: several services, several candidates on one host),
        else the first that is an address of this host's interfaces; None when none is."""
        candidates = self.hosts.get(name, [])
        named = own_addresses()
        if named:
            return next((c for c in candidates if c in named), None)
        return next((c for c in candidates if is_local_address(c)), None)

    def listen_address(self, name: str) -> str:
        """Where service ``name`` listens: ``listen`` (its entry, else the one for all) when set; else its
        own candidate address in ``hosts``; else its one address there, as written, when that is an IP
        address and no ``--address`` says otherwise; else ``host`` (127.0.0.1). So a name in ``hosts``
        (a Kubernetes Service, a Consul name) is where others reach it, never what it binds."""
        listen = self.listen.get(name) or self.listen.get("*")
        if listen:
            return listen
        own = self.own_address(name)
        if own:
            return own
        candidates = self.hosts.get(name, [])
        if len(candidates) == 1 and is_ip(candidates[0]) and not own_addresses():
            return candidates[0]  # (placed there: a bind that fails says this host is not it)
        return self.host

    def address(self, name: str) -> str:
        """Where clients reach service ``name`` without etcd: its (first) address in ``hosts``, else
        ``service_host``, else loopback (a service listening on every address, 0.0.0.0 or ::, is reached
        on loopback)."""
        candidates = self.hosts.get(name)
        placed = candidates[0] if candidates else self.service_host
        if placed and placed not in ("0.0.0.0", "::"):
            return str(placed)
        listen = self.listen_address(name)
        return "::1" if listen == "::" else "127.0.0.1" if listen == "0.0.0.0" else listen

    def reached_at(self, name: str) -> str:
        """Where this process, serving ``name``, is reached (what it registers with etcd): its own
        candidate address, else where clients reach the service (:meth:`address`)."""
        return self.own_address(name) or self.address(name)

    def url(self, name: str, address: str | None = None) -> str:
        """``http://ADDRESS:PORT`` of service ``name`` (at ``address``, else :meth:`address`; IPv6 in brackets)."""
        host = address or self.address(name)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.ports[name]}"


#: This host's addresses among the candidates in ``hosts`` (``shmooze run/serve --address``), comma-separated.
ADDRESS_VAR = "SHMOOZE_ADDRESS"


def own_addresses() -> list[str]:
    """The addresses ``--address`` (``$SHMOOZE_ADDRESS``) says this host has (empty: found from its interfaces)."""
    return [a.strip() for a in os.environ.get(ADDRESS_VAR, "").split(",") if a.strip()]


def is_ip(address: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(address.strip("[]"))
        return True
    except ValueError:
        return False


def is_local_address(address: str) -> bool:
    """Whether ``address`` is one of this host's (an IP address a socket can be bound to here; every
    127.x.x.x is: on one machine, ``--address`` tells candidates apart)."""
    import socket

    if address == "localhost":
        return True
    if not is_ip(address):
        return False
    address = address.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


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
