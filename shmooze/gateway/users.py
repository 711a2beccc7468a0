"""Who the gateway's clients are: users from the settings, an application's hook, a trusted proxy's header.

* ``users`` in the settings: name -> ``{"password_hash": "$argon2id$...", "role": "user" | "operator"}``.
  The hash comes from ``shmooze hash-password`` (argon2-cffi's :class:`~argon2.PasswordHasher`); a user
  without a hash cannot sign in with a password but may still be named by a hook or a proxy (with the
  role given here).
* ``user_hook``: ``"package.module:function"`` taking the WSGI environ and returning ``None``
  (anonymous), a user name (role ``user``, or the role ``users`` gives it), or ``(name, role)``.
* ``user_header``: a header naming the user a reverse proxy authenticated (``X-Remote-User``), read
  only from a peer in ``trusted_proxies``.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, NamedTuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shmooze import caller

log = logging.getLogger(__name__)

ROLES = ("user", "operator")
HASHER = PasswordHasher()
#: Password checks run at once in one gateway worker: each takes tens of milliseconds of CPU and 64 MiB.
VERIFY_THREADS = 2
_pool: Any = None


def off_the_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on one of :data:`VERIFY_THREADS` threads in a gateway worker (argon2 releases the
    GIL): the worker's other connections go on meanwhile, and many sign-ins at once queue rather than
    take every core and gigabytes. Elsewhere (a service, a test's in-process gateway) it runs here."""
    global _pool
    from shmooze.system.cooperative import gevent_sockets

    if not gevent_sockets():
        return fn(*args)
    if _pool is None:  # made in the worker, after the fork
        from gevent.threadpool import ThreadPool

        _pool = ThreadPool(VERIFY_THREADS)
    return _pool.apply(fn, args)


class Identity(NamedTuple):
    """A caller: a user name (None: anonymous) and a role (``user``, ``operator`` or None)."""

    name: str | None
    role: str | None


ANONYMOUS = Identity(None, None)


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (what ``users.NAME.password_hash`` holds)."""
    return HASHER.hash(password)


def fingerprint(password_hash: str) -> str:
    """A short digest of a password hash: a session carries it, so a new password ends old sessions."""
    return hashlib.blake2b(password_hash.encode(), digest_size=9).hexdigest()


class UserTable:
    """The ``users`` of the settings (already checked by :func:`shmooze.registry.user_table`)."""

    def __init__(self, users: dict[str, dict[str, str]]):
        self.users = users
        # A name that is not a user is checked against a hash all the same: the time says nothing.
        self._decoy = hash_password("decoy password, never a user's") if users else ""

    def __bool__(self) -> bool:
        return bool(self.users)

    def role(self, name: str, default: str | None = "user") -> str | None:
        entry = self.users.get(name)
        return entry.get("role", "user") if entry is not None else default

    def fingerprint(self, name: str) -> str | None:
        """The fingerprint of the user's password hash (``""`` without one); None: no such user."""
        entry = self.users.get(name)
        if entry is None:
            return None
        return fingerprint(entry["password_hash"]) if entry.get("password_hash") else ""

    def verify(self, name: str, password: str) -> Identity | None:
        """The user, when ``password`` is theirs; None otherwise (argon2 compares in constant time)."""
        entry = self.users.get(name) if isinstance(name, str) else None
        stored = entry.get("password_hash") if entry else None
        try:
            off_the_loop(HASHER.verify, stored or self._decoy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if not stored:
            return None
        return Identity(name, self.role(name))


def load_hook(dotted: str) -> Callable[[dict[str, Any]], Any]:
    """The function named ``package.module:function``."""
    import importlib

    module, _, attr = dotted.partition(":")
    hook = getattr(importlib.import_module(module), attr)
    if not callable(hook):
        raise TypeError(f"user_hook {dotted!r} is not a function")
    return hook


def hook_identity(answer: Any, users: UserTable) -> Identity:
    """What a ``user_hook`` answered, as an :class:`Identity` (anything else: anonymous)."""
    if isinstance(answer, str) and answer:
        return Identity(answer, users.role(answer))
    if isinstance(answer, (tuple, list)) and len(answer) == 2 and isinstance(answer[0], str) and answer[1] in ROLES:
        return Identity(answer[0], answer[1])
    if answer is not None:
        log.warning("user_hook answered %s, not a user name, (name, role) or None: anonymous", type(answer).__name__)
    return ANONYMOUS


class TrustedProxies:
    """The ``trusted_proxies`` setting: addresses and networks whose forwarded headers are believed."""

    def __init__(self, entries: list[str]):
        self.networks = caller.networks(entries)
        self._seen: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        found = self._seen.get(address)
        if found is None:
            found = caller.within(address, self.networks)
            if len(self._seen) < 1024:
                self._seen[address] = found
        return found
