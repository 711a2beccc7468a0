"""Every setting the framework reads, declared once: its type, default, meaning and check.

A :class:`Key` is a typed attribute of :class:`Declared` (which :class:`shmooze.settings.Settings`
extends): ``settings.forward_timeout`` is a ``float`` because its key parses to one, so read sites
need no casts. :func:`check` reads a whole file's values at once and lists every problem.
``settings.example.json`` (``scripts/example_settings.py``) and the settings tables of the documentation (``docs/``) are
checked against :data:`KEYS` (tests/test_settings_example.py). Keys not declared here belong to the
application and are kept as they are.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar, overload

T = TypeVar("T")

STATIC_DIR = str(Path(__file__).resolve().parent / "static")
#: ``service_worker`` setting to gunicorn worker class.
SERVICE_WORKERS = {"gthread": "gthread", "loop": "shmooze.http.loopworker.LoopWorker"}
CONTAINMENT = ("auto", "cgroup", "process-group")
LIMIT_MODES = ("auto", "cgroup", "rlimit")  # (shmooze.system.containment)
DURABILITY = ("fsync", "write")  # (shmooze.hosting.journal)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_SAME = object()


class Key(Generic[T]):
    """One setting: ``parse`` checks a value from the file (``ValueError`` says what is wrong, worded
    to follow the key's name) and returns it typed; ``default`` is used when the file has no value."""

    name = ""

    def __init__(self, parse: Callable[[Any], T], default: T, doc: str, example: Any = _SAME, name: str = ""):
        self.name = name  # (else the attribute's)
        self.parse = parse
        self.default = default
        self.doc = doc
        #: what settings.example.json shows (the default unless an illustration reads better)
        self.example = default if example is _SAME else example

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    @overload
    def __get__(self, obj: None, owner: type) -> Key[T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: object | None, owner: type) -> Key[T] | T:
        if obj is None:
            return self
        value: T = obj.__dict__["_data"][self.name]
        return value


# -- parsers: each checks one value and returns it typed ------------------------------------------

def _number(value: Any, least: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < least or (strict and value == least):
        raise ValueError(f"must be a number {'above' if strict else 'of at least'} {least:g}, not {value!r}")
    return float(value)


def seconds(value: Any) -> float:
    """A positive number (int or float in the file; a float when read)."""
    return _number(value, 0, strict=True)


def rate(value: Any) -> float:
    return _number(value, 0, strict=False)


def whole(least: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < least:
            raise ValueError(f"must be a whole number of at least {least}, not {value!r}")
        return int(value)
    return parse


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return value


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def optional(parse: Callable[[Any], T]) -> Callable[[Any], T | None]:
    def parse_optional(value: Any) -> T | None:
        return None if value is None else parse(value)
    return parse_optional


def choice(options: tuple[str, ...] | dict[str, str], fold: bool = False) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        folded = value.lower() if fold and isinstance(value, str) else value
        if folded not in options:
            raise ValueError(f"must be {' or '.join(map(repr, options))}, not {value!r}")
        return str(folded)
    return parse


def names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"must be a list of strings, not {value!r}")
    return value


def address_list(value: Any) -> list[str]:
    """IP addresses and networks (CIDR), kept as written (checked here, compiled where used)."""
    from shmooze.caller import networks

    networks(names(value))
    return value


def etcd_urls(value: Any) -> list[str]:
    """etcd members' client URLs (``http://host:port``); checked in full by :mod:`shmooze.cluster.etcd`."""
    found = names(value)
    for url in found:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must list etcd client URLs such as 'http://10.0.0.31:2379', not {url!r}")
    return found


def prefix(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or not value.endswith("/"):
        raise ValueError(f"must be a path that starts and ends with '/', not {value!r}")
    return value


def port_table(value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or not value:
        raise ValueError("is missing or not an object of service name to port")
    for name, port in value.items():
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise ValueError(f"gives the port of {name!r}: it must be a number from 0 to 65535, not {port!r}")
    return value


def address_table(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(h, str) and h for h in value.values()):
        raise ValueError("must be an object of service name to address")
    return value


def candidate_table(value: Any) -> dict[str, list[str]]:
    """Service name to its candidate hosts' addresses: one address, or a list of them (read as a list)."""
    if not isinstance(value, dict):
        raise ValueError("must be an object of service name to an address or a list of addresses")
    out = {}
    for name, hosts in value.items():
        listed = [hosts] if isinstance(hosts, str) else hosts
        if not isinstance(listed, list) or not listed or not all(isinstance(h, str) and h for h in listed):
            raise ValueError(f"must be an object of service name to an address or a list of addresses "
                             f"(not {hosts!r} for {name!r})")
        if len(set(listed)) != len(listed):
            raise ValueError(f"lists an address twice for {name!r}: {listed!r}")
        out[name] = list(listed)
    return out


def listen_table(value: Any) -> dict[str, str]:
    """One address for every service (``"0.0.0.0"``), or service name to the address it listens on."""
    if isinstance(value, str) and value:
        return {"*": value}
    return address_table(value)


def service_table(value: Any) -> dict[str, Any]:
    """Service name to ``"package.module:factory"`` (or, in settings made in code, the object itself)."""
    if not isinstance(value, dict):
        raise ValueError(f"must be an object of service name to 'package.module:factory', not {value!r}")
    return value


def secret(value: Any) -> str:
    if not isinstance(value, str) or len(value) < 16:
        raise ValueError("must be a string of at least 16 characters")
    return value


#: Variables the framework sets on its services' processes (by prefix, or the whole name): the
#: ``environment`` setting may not name them, so that it never overrides them silently.
OWN_ENVIRONMENT = ("SHMOOZE_", "SUPERVISOR_", "PYTHONUNBUFFERED")


def environment_table(value: Any) -> dict[str, dict[str, str]]:
    """Service name (``wsgi``: the gateway; ``*``: every service) to its processes' variables."""
    if not isinstance(value, dict):
        raise ValueError("must be an object of service name to an object of variables")
    for service, variables in value.items():
        if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
            raise ValueError(f"gives {service!r} something else than an object of variable name to text")
        for name in variables:
            if not name or "=" in name or not name.replace("_", "a").isalnum() or name[0].isdigit():
                raise ValueError(f"names a variable {name!r} for {service!r}: not a variable name")
            text = variables[name]
            quotes = ("'", '"')
            if "\n" in text or "\r" in text or all(q in text for q in quotes) or text.startswith(quotes) \
                    or text.endswith(quotes):
                raise ValueError(f"gives {name!r} of {service!r} a value supervisord cannot pass: a line break, both "
                                 "kinds of quote, or a quote at either end")
            if name.startswith(OWN_ENVIRONMENT):
                raise ValueError(f"names {name!r} for {service!r}: the framework sets that variable itself "
                                 f"(names starting with {', '.join(OWN_ENVIRONMENT)} are its own)")
    return value


def type_table(value: Any) -> dict[str, dict[str, Any]]:
    """Type name to restart policy and limits (checked again against the code's types at start)."""
    from shmooze.moduletype import SETTABLE, _setting
    from shmooze.restart import MODES

    if not isinstance(value, dict):
        raise ValueError("must be an object of type name to settings")
    problems = []  # every one of them, not only the first
    for name, options in value.items():
        if not isinstance(options, dict):
            problems.append(f"module_types[{name!r}] must be an object of settings, not {options!r}")
            continue
        for key, option in options.items():
            if key not in SETTABLE:
                problems.append(f"module_types[{name!r}]: unknown setting {key} (settable: {', '.join(SETTABLE)})")
                continue
            try:
                _setting(key, option)
                if key == "restart" and option is not None and option not in MODES:
                    raise ValueError(f"restart must be one of {', '.join(MODES)}, not {option!r}")
            except ValueError as exc:
                why = str(exc)  # named by its key, once
                problems.append(f"module_types[{name!r}]: {why if why.startswith(key) else f'{key}: {why}'}")
    if problems:
        raise ValueError(f"has {len(problems)} problems: " + "; ".join(problems) if len(problems) > 1 else problems[0])
    return value


def user_table(value: Any) -> dict[str, dict[str, str]]:
    """User name to ``{"password_hash": ARGON2 HASH, "role": "user" | "operator"}`` (shmooze.gateway.users)."""
    if not isinstance(value, dict):
        raise ValueError("must be an object of user name to {\"password_hash\": ..., \"role\": ...}")
    problems = []
    for name, entry in value.items():
        if not name or not isinstance(entry, dict) or set(entry) - {"password_hash", "role"}:
            problems.append(f"users[{name!r}] must be an object with 'password_hash' and 'role'")
            continue
        hashed = entry.get("password_hash")
        if hashed is not None and (not isinstance(hashed, str) or not hashed.startswith("$argon2")):
            problems.append(f"users[{name!r}]: 'password_hash' must be an argon2 hash (shmooze hash-password), "
                            "not a password")
        if entry.get("role", "user") not in ("user", "operator"):
            problems.append(f"users[{name!r}]: 'role' must be 'user' or 'operator', not {entry.get('role')!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return value


def access_table(value: Any) -> dict[str, dict[str, str]]:
    """Service (or ``*``) to command (or ``*``) to ``anyone`` / ``user`` / ``operator`` (shmooze.gateway.policy)."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError("must be an object of service name (or '*') to an object of command to level")
    for service, commands in value.items():
        for cmd, level in commands.items():
            if level not in ("anyone", "user", "operator"):
                raise ValueError(f"[{service!r}][{cmd!r}] must be 'anyone', 'user' or 'operator', not {level!r}")
    return value


def dotted(value: Any) -> str:
    if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
        raise ValueError(f"must be 'package.module:function', not {value!r}")
    return value


_path = optional(text)
_bytes = whole(1)
_count = whole(1)


class Declared:
    """The framework's settings (the documentation's settings tables say the same, checked by a test)."""

    ports: Key[dict[str, int]] = Key(port_table, {}, "service name to local TCP port; `wsgi` is the gateway's",
                example={"wsgi": 8080, "queue": 8081, "volume": 8083})
    services: Key[dict[str, Any]] = Key(service_table, {}, "service name to the Python object that builds it",
                   example={"queue": "myapp.app:make_queue", "volume": "myapp.volume:Volume"})
    public_keys: Key[list[str]] = Key(names, [], "keys served to anyone at `{wsgi_prefix}settings.json`",
                      example=["ports", "wsgi_prefix", "app_name"], name="public")  # (Settings.public() serves them)
    wsgi_prefix = Key(prefix, "/", "where the gateway mounts services")
    static_prefix = Key(prefix, "/static/", "where the gateway mounts static files")
    static_path = Key(text, STATIC_DIR, "the folder static files come from", example="myapp/static")
    log_database_path = Key(_path, None, "SQLite file of the command log; unset means no log",
                            example="${HOME}/.local/share/myapp/commands.db")
    log_max_age_days = Key(seconds, 7.0, "days the command log keeps a row")
    log_max_bytes = Key(_bytes, 100_000_000, "bytes the command log keeps at most")
    log_module_updates = Key(flag, False, "whether every module's parameter updates are logged")
    original_command_log = Key(flag, False, "queues and pools also write the original framework's command log "
                               "(tables `queue_log`, `pool_log`) in `log_database_path`")
    environment: Key[dict[str, dict[str, str]]] = Key(
        environment_table, {}, "service name (`wsgi`: the gateway, `*`: every service) to variables set in its "
        "process and its modules' (the framework's own variables cannot be named)",
        example={"queue": {"DISPLAY": ":0"}})
    journal = Key(flag, True, "queues and pools restore their modules after a restart")
    journal_path = Key(_path, None, "the folder of the journals", example="${HOME}/.local/share/myapp/journal")
    durability = Key(choice(DURABILITY), "fsync", "when a command that changes something is answered")
    run_path = Key(_path, None, "the run folder of `shmooze run`", example="${HOME}/.local/state/myapp/run")
    module_output_path = Key(_path, None, "where each module's output file goes")
    module_output_max_bytes = Key(_bytes, 1 << 20, "size cap of a module's output file")
    module_output_backups = Key(whole(0), 2, "rotated module output files kept")
    metrics_path = Key(_path, None, "the folder of the gateway workers' metrics")

    host = Key(text, "127.0.0.1", "where services listen")
    service_host = Key(optional(text), None, "where the gateway reaches the services", example="127.0.0.1")
    hosts: Key[dict[str, list[str]]] = Key(
        candidate_table, {}, "service name to the address of the host it runs on, or a list of its candidate hosts' "
        "addresses (with `etcd`: one is elected leader; without: the first serves)",
        example={"queue": ["10.0.0.21", "10.0.0.23"]})
    listen: Key[dict[str, str]] = Key(
        listen_table, {}, "where services listen when not on their own address in `hosts` (a Kubernetes Service, "
        "a Consul name or a virtual IP in front): one address for all, or service name to address",
        example={"queue": "0.0.0.0"})
    etcd: Key[list[str]] = Key(etcd_urls, [], "etcd members' client URLs: coordination between hosts (empty: one machine)",
               example=[])
    etcd_prefix = Key(prefix, "/shmooze/", "where this application's keys live in etcd (one prefix per application)")
    etcd_lease_ttl = Key(whole(2), 5, "seconds a leader's lease lasts unrenewed: a lost leader is replaced after "
                         "it; the leader stops its modules before it runs out")
    connect_timeout = Key(seconds, 2.0, "seconds the gateway waits to reach a service's host")
    containment = Key(choice(CONTAINMENT), "auto", "how a queue or pool contains its modules")
    module_limits = Key(choice(LIMIT_MODES), "auto", "where module types' resource limits go")
    module_types: Key[dict[str, dict[str, Any]]] = Key(
        type_table, {}, "restart policies and resource limits per module type name",
        example={"worker": {"restart": "on-failure", "limit_memory": "512M", "limit_cpu_rate": 1.0, "limit_processes": 64}})
    check_module_peers = Key(flag, True, "refuse connections to a module's ports from other processes")
    gateway_workers = Key(_count, 2, "gateway worker processes")
    gateway_connections = Key(_count, 4000, "connections one gateway worker holds at most")
    gateway_stop_timeout = Key(whole(0), 3, "seconds a stopping gateway gives the requests in flight")
    service_threads = Key(_count, 32, "threads of a service's worker for commands")
    forward_timeout = Key(seconds, 30.0, "seconds the gateway waits for a service's answer")
    stop_timeout = Key(whole(1), 15, "seconds a service gets to stop its modules")
    start_timeout = Key(seconds, 30.0, "seconds `shmooze run` waits for every service to answer")
    max_body_bytes = Key(_bytes, 1 << 20, "largest command body")
    max_line_bytes = Key(_bytes, 1 << 20, "longest line a module may send")
    log_level = Key(choice(LOG_LEVELS, fold=True), "info", "the services' log level")

    access_token = Key(optional(text), None, "the token commands that change state need at the gateway")
    service_key = Key(optional(secret), None, "the key service requests are signed with")
    service_key_path = Key(_path, None, "the file of the service key")
    open_commands: Key[list[str]] = Key(names, [], "commands anyone may send through the gateway (never on a service's port)")
    command_access: Key[dict[str, dict[str, str]]] = Key(
        access_table, {}, "per service (or `*`), command (or `*`) to `anyone`, `user` or `operator`",
        example={"queue": {"add": "anyone", "rm": "operator"}})
    users: Key[dict[str, dict[str, str]]] = Key(
        user_table, {}, "user name to `password_hash` (`shmooze hash-password`) and `role`",
        example={"ada": {"password_hash": "$argon2id$v=19$m=65536,t=3,p=4$...", "role": "operator"}})
    user_hook = Key(optional(dotted), None, "a function of the WSGI environ naming the request's user (`module:function`)")
    user_header = Key(optional(text), None, "the header a trusted proxy names the signed-in user in",
                      example="X-Remote-User")
    session_max_age = Key(seconds, 43200.0, "seconds a sign-in lasts")
    allowed_origins: Key[list[str]] = Key(names, [], "other origins allowed to send commands")
    allowed_hosts: Key[list[str]] = Key(names, [], "more host names the gateway answers to")
    trusted_proxies: Key[list[str]] = Key(address_list, [], "proxies whose `X-Forwarded-For` (the client), "
                                          "`X-Forwarded-Proto` and `user_header` are believed",
                                          example=["127.0.0.1", "10.0.0.0/24"])
    rate_limit = Key(rate, 10.0, "commands that change state a client may send a second; 0: no limit")
    rate_limit_burst = Key(_count, 50, "commands that change state a client may send at once")
    rate_limit_exempt: Key[list[str]] = Key(address_list, ["127.0.0.0/8", "::1"],
                                            "client addresses never rate limited")

    service_keepalive = Key(whole(1), 120, "seconds a service keeps an idle connection open")
    forward_idle_timeout = Key(seconds, 60.0, "seconds the gateway keeps an idle connection to a service")
    read_threads = Key(whole(0), 8, "service threads kept for read-only commands")
    service_worker = Key(choice(SERVICE_WORKERS), "loop", "a service's gunicorn worker")
    body_timeout = Key(seconds, 10.0, "seconds each 64 KiB of a body must arrive within")
    body_min_rate = Key(rate, 8192.0, "bytes per second a body must arrive at")
    body_shed_after = Key(seconds, 1.0, "seconds after which trickling bodies are cut under pressure")
    max_answer_bytes = Key(_bytes, 16 << 20, "largest answer of a service")
    events_max_bytes = Key(_bytes, 8 << 20, "bytes of change events kept")
    changes_max_bytes = Key(_bytes, 4 << 20, "bytes carried by one `changes` answer")
    ws_ping_interval = Key(seconds, 20.0, "seconds between the gateway's WebSocket pings")
    ws_idle_timeout = Key(seconds, 60.0, "seconds of silence after which a WebSocket is closed")
    ws_message_timeout = Key(seconds, 30.0, "seconds a WebSocket message has to finish")
    ws_max_pings = Key(_count, 20, "pings a second a WebSocket may send")
    ws_outbox_bytes = Key(_bytes, 8 << 20, "unread bytes after which a WebSocket is dropped")
    ws_max_in_flight = Key(_count, 16, "messages of one WebSocket run at once")


#: Every declared key by name, in declaration order.
KEYS: dict[str, Key[Any]] = {key.name: key for key in vars(Declared).values() if isinstance(key, Key)}


def check(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``data`` with every declared key parsed (defaults for the missing), and every problem found."""
    out = dict(data)
    problems = []
    for name, key in KEYS.items():
        if name not in data:
            out[name] = copy.deepcopy(key.default)  # (an application may change its own copy)
            if name == "ports":
                problems.append("'ports' is missing or not an object of service name to port")
            continue
        try:
            out[name] = key.parse(data[name])
        except ValueError as exc:
            out[name] = copy.deepcopy(key.default)
            said = str(exc)
            problems.append(said if said.startswith(name + "[") else f"{name!r} {said}")
    unknown = sorted(set(out["hosts"]) - set(out["ports"]))
    if unknown and out["ports"]:
        problems.append(f"'hosts' names {unknown[0]!r}, which has no port in 'ports'")
    unknown = sorted(set(out["listen"]) - set(out["ports"]) - {"*"})
    if unknown and out["ports"]:
        problems.append(f"'listen' names {unknown[0]!r}, which has no port in 'ports'")
    return out, problems
