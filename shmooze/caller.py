"""Who sent a command: how the gateway names a client, and how a service knows whom it runs a command for.

A caller is one short string, recorded as it is (the command log's ``caller`` column, a change
event's ``by``):

- ``user:NAME``: a signed-in user, as the gateway's client policy found them;
- ``anonymous:ADDRESS``: nobody signed in, from this client address (the peer's, or, when the peer
  is one of the ``trusted_proxies``, the one its ``X-Forwarded-For`` names: :func:`client_address`);
- ``local:NAME``: a process of the service's own user on its host (``shmooze``, ``shmz``), by that
  user's name;
- ``key:ADDRESS``: a request signed with the service key that named no caller (a tool of the app
  on another host).

The gateway sends it to the service in the ``Shmooze-Caller`` header, which the request's signature
covers (:mod:`shmooze.servicekey`); the service takes it only from a signed request and runs the
command with it as :func:`current` (a context variable, so each request's thread or greenlet has its
own). No I/O here.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import ipaddress
import os
import urllib.parse
from typing import Iterator

#: The request header that carries the caller (percent-encoded UTF-8), and the same as a WSGI environ key.
HEADER = "Shmooze-Caller"
ENVIRON = "HTTP_SHMOOZE_CALLER"
#: What a command log row from before callers were recorded reads as.
UNKNOWN = "unknown"
#: The longest caller taken (a longer header is cut: it names nobody better for being long).
MAX_LENGTH = 200

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("shmooze_caller", default=None)


def current() -> str | None:
    """The caller of the command running in this context (None: no client's command, e.g. a restart policy)."""
    return _current.get()


@contextlib.contextmanager
def running_as(caller: str | None) -> Iterator[None]:
    """Run the block as ``caller``'s command (:func:`current` says so inside it)."""
    token = _current.set(caller)
    try:
        yield
    finally:
        _current.reset(token)


def user(name: str) -> str:
    return f"user:{name}"


def anonymous(address: str) -> str:
    return f"anonymous:{address}"


def of_client(user_name: str | None, address: str) -> str:
    """A gateway's client: the signed-in user when there is one, else anonymous at ``address``."""
    return user(user_name) if user_name else anonymous(address)


@functools.lru_cache(maxsize=16)
def local(uid: int | None = None) -> str:
    """A process of this host's user ``uid`` (this process's by default), by name when it has one
    (looked up once: the password database is a file read)."""
    import pwd

    uid = os.geteuid() if uid is None else uid
    try:
        return f"local:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"local:{uid}"


def key_holder(address: str) -> str:
    return f"key:{address}"


def encode(caller: str) -> str:
    """The header value of a caller (ASCII: a user's name may be any text)."""
    return urllib.parse.quote(caller[:MAX_LENGTH], safe=":@.-_[]/")


def decode(value: str) -> str:
    """A caller from its header value (as the gateway sends it, nearly always with nothing to unquote)."""
    return (urllib.parse.unquote(value) if "%" in value else value)[:MAX_LENGTH]


# -- the client's address behind trusted proxies ----------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: list[str]) -> tuple[Network, ...]:
    """Addresses and CIDRs (``10.0.0.5``, ``10.0.0.0/8``, ``::1``) as networks; ValueError names a bad one."""
    found = []
    for entry in entries:
        try:
            found.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"must list IP addresses or networks (CIDR), not {entry!r}") from None
    return tuple(found)


def within(address: str, nets: tuple[Network, ...]) -> bool:
    """Whether ``address`` (an IP literal; anything else is not) is in one of ``nets``."""
    if not nets:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in nets)


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: ``peer``, unless the peer is a trusted proxy and says whom it forwards for.

    ``X-Forwarded-For`` lists every hop, each proxy adding the one it heard from, so it is read from
    the right: the first address that is not itself a trusted proxy is the client (anything left of
    it could be made up by that client). A malformed entry stops the walk at the hop that gave it.
    """
    if not forwarded_for or not within(peer, trusted):
        return peer
    client = peer
    for hop in reversed(forwarded_for.split(",")):
        hop = hop.strip()
        if hop.startswith("[") and "]" in hop:  # [v6]:port
            hop = hop[1:hop.index("]")]
        elif hop.count(":") == 1:  # v4:port
            hop = hop.split(":", 1)[0]
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return client
        client = hop
        if not within(hop, trusted):
            return hop
    return client
