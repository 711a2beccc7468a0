"""The Python client: call any service, through the gateway or directly.

    client = Client("http://127.0.0.1:8080/")
    uid = client.queue.add(type="text", args={"text": "hello"})["uid"]
    client.queue.rm(uids=[uid])

    with client.queue.batch() as batch:
        q = batch.queue()
        b = batch.bg()
    q.result, b.result

``add`` and ``set_bg`` of a queue or pool (calls that name a module ``type``) carry a
client ``key``, made up per call unless given: if the answer is lost (a timeout, a
dropped connection), the call is sent once more with the same key, and the service
answers the first result instead of starting a second module.

Every call has a timeout. Errors raise :class:`~shmooze.errors.ShmoozeError`
subclasses: :class:`ServiceError` (the command failed), :class:`TransportError`
(no answer: connection refused, HTTP error) and its subclass :class:`Timeout`.
"""

from __future__ import annotations

import json
import secrets
import socket
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import requests

from shmooze import protocol, servicekey
from shmooze.errors import NotTheService, ServiceError, ShmoozeError, Timeout, TransportError

DEFAULT_TIMEOUT = 10.0
#: Commands that start a module: they carry a client key, so that a retry never starts two.
KEYED = frozenset({"add", "set_bg"})

__all__ = ["Client", "ServiceClient", "Batch", "ShmoozeError", "ServiceError", "TransportError", "Timeout"]


class _Transport:
    """One requests session, JSON in and out, with every failure turned into a shmooze error."""

    def __init__(self, timeout: float, token: str | None, session: requests.Session | None,
                 key: bytes | None = None):
        self.timeout = timeout
        self.session = session or requests.Session()
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        #: With the service key (a client of a service's own port): the gateway's forwarder, which checks
        #: each connection before it sends anything, signs each request and proves each answer.
        self.signer = servicekey.Signer(key) if key else None
        self._proxies: dict[tuple[str, float], Any] = {}

    def post(self, url: str, payload: Any, timeout: float | None) -> Any:
        body = json.dumps(payload).encode()
        if self.signer is None:
            return self.request("POST", url, timeout, data=body, headers=self.headers)
        from shmooze.http.forward import ForwardError

        limit = self.timeout if timeout is None else timeout
        try:
            reply = self._proxy(url, limit).post(body)
        except ForwardError as exc:
            if exc.impostor:
                raise NotTheService(f"{url}: {exc.message}") from None
            if exc.status == 504:
                raise Timeout(f"no answer from {url} within {limit:g} s") from None
            raise TransportError(f"cannot reach {url}: {exc.message}", exc.status) from None
        return _decode_body(reply.body, reply.status, "", url)

    def _proxy(self, url: str, timeout: float) -> Any:
        from shmooze.http.forward import ServiceProxy

        proxy = self._proxies.get((url, timeout))
        if proxy is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname or not parts.port:
                raise TransportError(f"{url}: a service's own port is reached as http://HOST:PORT/")
            proxy = self._proxies[(url, timeout)] = ServiceProxy(
                url, parts.hostname, parts.port, timeout=timeout, connect_timeout=min(timeout, 5.0),
                max_idle=4, signer=self.signer)
        return proxy

    def get(self, url: str, timeout: float | None) -> Any:
        return self.request("GET", url, timeout)

    def request(self, method: str, url: str, timeout: float | None, **kw: Any) -> Any:
        """One HTTP request with a timeout and its decoded answer; every failure becomes a shmooze error."""
        return _decode(self.send(method, url, timeout, **kw), url)

    def send(self, method: str, url: str, timeout: float | None, **kw: Any) -> requests.Response:
        limit = self.timeout if timeout is None else timeout
        try:
            return self.session.request(method, url, timeout=limit, **kw)
        except requests.Timeout:
            raise Timeout(f"no answer from {url} within {limit:g} s") from None
        except requests.RequestException as exc:
            raise TransportError(f"cannot reach {url}: {_reason(exc, url)}") from None


def base_url(url: str) -> str:
    """``url`` with ``http://`` in front when it has no scheme, and one ``/`` at its end."""
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/") else url + "/"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those behind it (urllib3 keeps them in ``args``, ``reason`` and ``__cause__``)."""
    todo, seen = [exc], set()
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo += [a for a in (*cur.args, getattr(cur, "reason", None), cur.__cause__, cur.__context__)
                 if isinstance(a, BaseException)]


def _reason(exc: Exception, url: str) -> str:
    """Why a request got no answer, in one line a person can act on."""
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return f"cannot find host {urlsplit(url).hostname!r} ({cause.strerror or cause})"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
    if isinstance(exc, requests.exceptions.InvalidURL) or isinstance(exc, requests.exceptions.InvalidSchema):
        return f"not a usable URL ({' '.join(str(exc).split())})"
    deepest = causes[-1]
    return " ".join(str(deepest).split()) or type(deepest).__name__


def _decode(resp: requests.Response, url: str) -> Any:
    return _decode_body(resp.content, resp.status_code, resp.reason, url)


def _decode_body(body: bytes, status: int, reason: str, url: str) -> Any:
    """A JSON answer; an HTTP error (its JSON ``error`` in the message) raises :class:`TransportError`."""
    try:
        data = json.loads(body)
    except ValueError:
        raise TransportError(f"{url} answered HTTP {status} that is not JSON", status) from None
    if status != 200:
        message = data.get("error") if isinstance(data, dict) else None
        raise TransportError(f"{url}: HTTP {status}: {message or reason}", status)
    return data


def _result(answer: Any, service: str, cmd: str) -> Any:
    try:
        return protocol.answer_result(answer)
    except protocol.AnswerFailed as exc:
        raise ServiceError(str(exc), service, cmd) from None
    except protocol.NotAnAnswer:
        raise TransportError(f"{service} answered {cmd} with something that is not a command answer") from None


class ServiceClient:
    """Calls commands of one service at ``url``; ``svc.NAME(**args)`` calls command NAME."""

    def __init__(self, url: str, name: str = "", timeout: float = DEFAULT_TIMEOUT, token: str | None = None,
                 transport: _Transport | None = None, key: bytes | None = None):
        self.url = url
        self.name = name or url
        self._transport = transport or _Transport(timeout, token, None, key)
        #: Where the service is now, asked at every request (on_port with etcd), else None: ``url``.
        self._locate: Callable[[], str] | None = None

    @classmethod
    def on_port(cls, settings: Any, name: str, timeout: float = DEFAULT_TIMEOUT) -> ServiceClient:
        """A client of service ``name`` on its own port, with the application's service key (the app's
        own tools, services calling each other: commands that change state are taken, and answers are
        proven). With the ``etcd`` setting, wherever the service is registered now, followed as it moves
        (this process's :func:`shmooze.cluster.directory.shared`); a call while it has no registration
        raises :class:`TransportError` (503)."""
        key = servicekey.load(settings, create=False)
        if not settings.etcd:
            return cls(f"{settings.url(name)}/", name, timeout=timeout, key=key)
        from shmooze.cluster.directory import shared

        directory = shared(settings)
        client = cls(directory.url(name) or f"{settings.url(name)}/", name, timeout=timeout, key=key)
        client._locate = lambda: _registered(directory.url(name), name)
        return client

    def call(self, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Run one command; return its result or raise :class:`ServiceError`.

        ``add`` / ``set_bg`` with a ``type`` get a client key and are sent again once, with the same
        key, when no answer came back."""
        args = with_key(cmd, args or {})
        payload = {"cmd": cmd, "args": args}
        if cmd not in KEYED or "key" not in args:
            return _result(self.post(payload, timeout), self.name, cmd)
        try:
            answer = self.post(payload, timeout)
        except TransportError as exc:
            if exc.status is not None and exc.status not in (502, 503, 504):
                raise
            answer = self.post(payload, timeout)  # same key: never a second module
        return _result(answer, self.name, cmd)

    def post(self, payload: Any, timeout: float | None = None) -> Any:
        """Send one request body (a command, or a batch: a list of them) and return the decoded answer
        (a command's answer is not checked here: see :meth:`call`)."""
        if self._locate is not None:
            self.url = self._locate()
        return self._transport.post(self.url, payload, timeout)

    def batch(self) -> Batch:
        return Batch(self)

    def __getattr__(self, cmd: str) -> Any:
        if cmd.startswith("_"):
            raise AttributeError(cmd)

        def command(_timeout: float | None = None, **args: Any) -> Any:
            return self.call(cmd, args, timeout=_timeout)

        command.__name__ = cmd
        return command


def _registered(url: str | None, name: str) -> str:
    if url is None:
        raise TransportError(f"service {name!r} has no leader right now (no registration in etcd)", 503)
    return f"{url}/"


def with_key(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with a fresh client key when ``cmd`` starts a module and has none yet."""
    if cmd in KEYED and isinstance(args.get("type"), str) and "key" not in args:
        return {**args, "key": secrets.token_urlsafe(12)}
    return args


class Pending:
    """One command of a batch; ``result`` is there once the batch is sent."""

    def __init__(self, cmd: str, args: dict[str, Any]):
        self.cmd = cmd
        self.args = args
        self.answer: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.answer and self.answer.get("success"))

    @property
    def result(self) -> Any:
        if self.answer is None:
            raise ShmoozeError(f"batch with {self.cmd} was not sent yet")
        return _result(self.answer, "batch", self.cmd)


class Batch:
    """Commands collected and sent as one request; each may fail on its own."""

    def __init__(self, service: ServiceClient):
        self.service = service
        self.items: list[Pending] = []

    def add(self, cmd: str, args: dict[str, Any] | None = None) -> Pending:
        item = Pending(cmd, with_key(cmd, args or {}))
        self.items.append(item)
        return item

    def __getattr__(self, cmd: str) -> Any:
        if cmd.startswith("_"):
            raise AttributeError(cmd)
        return lambda **args: self.add(cmd, args)

    def send(self, timeout: float | None = None) -> list[Pending]:
        payload = [{"cmd": i.cmd, "args": i.args} for i in self.items]
        answers = self.service.post(payload, timeout)
        if not isinstance(answers, list) or len(answers) != len(self.items):
            raise TransportError(f"{self.service.name} answered a batch of {len(self.items)} with something else")
        for item, answer in zip(self.items, answers):
            item.answer = answer
        return self.items

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.send()


class Client:
    """A client of every service behind one gateway; ``client.queue`` is the queue's :class:`ServiceClient`.

    ``url`` is the gateway's (``http://`` is assumed when it has no scheme).
    """

    def __init__(self, url: str = "http://127.0.0.1:8080/", timeout: float = DEFAULT_TIMEOUT,
                 token: str | None = None, session: requests.Session | None = None):
        self.url = base_url(url)
        self._transport = _Transport(timeout, token, session)
        self._services: dict[str, ServiceClient] = {}

    def service(self, name: str) -> ServiceClient:
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = ServiceClient(self.url + name, name, transport=self._transport)
        return svc

    def settings(self, timeout: float | None = None) -> dict[str, Any]:
        """The gateway's public settings."""
        return self._transport.get(self.url + "settings.json", timeout)

    def service_names(self, timeout: float | None = None) -> list[str]:
        """The gateway's services, as its dashboard lists them (even when ``ports`` is not public)."""
        return list(self._transport.get(self.url + "_shmooze/services.json", timeout)["services"])

    def __getattr__(self, name: str) -> ServiceClient:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.service(name)
