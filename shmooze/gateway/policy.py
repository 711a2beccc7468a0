"""The gateway's client policy: which commands anyone may send, which need a signed-in user, which an
operator.

``command_access`` in the settings: service name (or ``"*"``, every service) -> command name (or
``"*"``, every command that changes state) -> ``"anyone"``, ``"user"`` or ``"operator"``. A command
needs, in this order: its own entry (the service's, then ``"*"``'s); ``anyone`` when it is in
``open_commands`` or the service declares it read-only; the service's ``"*"``, then ``"*"``'s
``"*"``; else ``operator`` when the gateway knows anyone who could sign in (an ``access_token``,
``users``, a ``user_hook`` or a ``user_header``) and ``anyone`` when it knows nobody (one machine,
nothing set: the demo). A batch needs what its most guarded command needs.

The policy applies at the gateway only: a service's own port takes state-changing commands only
with the service key (:class:`shmooze.access.ServiceGuard`), whatever this says.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from shmooze import protocol
from shmooze.http.jsonapp import JSONHTTPError

LEVELS = ("anyone", "user", "operator")
RANK = {level: rank for rank, level in enumerate(LEVELS)}
RANK[None] = 0  # type: ignore[index]  # (an anonymous caller's role)


class ClientPolicy:
    """``command_access`` (checked by :func:`shmooze.registry.access_table`), ``open_commands`` and the default."""

    def __init__(self, table: dict[str, dict[str, str]], open_commands: Iterable[str], guarded: bool):
        self.table = table
        self.open = frozenset(open_commands)
        self.default = "operator" if guarded else "anyone"
        everything = table.get("*", {})
        #: Whether every command of every service is open to anyone (nothing to check: the hop skips it).
        self.open_to_all = self.default == "anyone" and all(
            level == "anyone" for entries in table.values() for level in entries.values())
        self._levels: dict[tuple[str, str, bool], str] = {}
        self._everything = everything

    def needs(self, service: str, cmd: str, read_only: bool) -> str:
        """What one command needs."""
        key = (service, cmd, read_only)
        found = self._levels.get(key)
        if found is None:
            found = self._decide(service, cmd, read_only)
            if len(self._levels) < 4096:
                self._levels[key] = found
        return found

    def _decide(self, service: str, cmd: str, read_only: bool) -> str:
        own = self.table.get(service, {})
        if cmd in own:
            return own[cmd]
        if cmd in self._everything:
            return self._everything[cmd]
        if read_only or cmd in self.open:
            return "anyone"
        return own.get("*") or self._everything.get("*") or self.default

    def batch_needs(self, service: str, items: list[protocol.Item], read_only: Callable[[str], bool]) -> str:
        """What a batch needs: its most guarded command's level (items that are no command need nothing)."""
        level = "anyone"
        for item in items:
            if isinstance(item, protocol.Command):
                needed = self.needs(service, item.cmd, read_only(item.cmd))
                if RANK[needed] > RANK[level]:
                    level = needed
        return level


def allows(role: str | None, level: str) -> bool:
    """Whether a caller of ``role`` (None: anonymous) may send what needs ``level``."""
    return RANK[role] >= RANK[level]  # type: ignore[index]


class SignInRequired(JSONHTTPError):
    """The 401 of a caller who may not: ``{"success": false, "error": ..., "sign_in": true, "needs": LEVEL}``
    (``shmooze.js`` shows its sign-in form on it)."""

    def __init__(self, level: str, what: str = "this command"):
        who = "a signed-in operator" if level == "operator" else "a signed-in user"
        super().__init__(401, f"{what} needs {who} (sign in, or send the access token)", {"WWW-Authenticate": "Bearer"})
        self.answer: dict[str, Any] = {"success": False, "error": self.message, "sign_in": True, "needs": level}

    def body(self) -> bytes:
        return protocol.dumps(self.answer)
