"""Module types bound to a place (the speaker in one room): started only on the host that is theirs.

A service led from another of its candidate hosts keeps such modules in its journal, not running
(``held``, shown in ``status``), refuses to ``add`` them, and drops them from the journal only when
they are removed.
"""

from __future__ import annotations

from typing import Any

from shmooze.errors import CommandError
from shmooze.moduletype import ModuleType


class Places:
    """Where this host is among its service's candidates, and the modules it keeps stopped for another."""

    def __init__(self) -> None:
        #: This host's address among the service's candidates (set from ``hosts`` by shmooze.serve).
        self.here: str | None = None
        #: Journaled modules of a type bound to another place: kept (in the journal), not started here.
        self.held: list[dict[str, Any]] = []

    def refusal(self, mtype: ModuleType) -> str | None:
        """Why modules of ``mtype`` are not started on this host (bound to another place), or None."""
        if mtype.place is None or mtype.place == self.here:
            return None
        return f"type {mtype.name!r} is bound to the host {mtype.place} (its place); this is " \
               f"{self.here or 'another host'}: it is kept stopped here"

    def check(self, mtype: ModuleType, service: str) -> None:
        """Refuse to add a module of ``mtype`` here when it is bound to another place."""
        refusal = self.refusal(mtype)
        if refusal is not None:
            raise CommandError(f"{service}: {refusal}")

    def hold(self, entry: dict[str, Any], mtype: ModuleType, reason: str) -> None:
        """Keep a journaled module of another place stopped here."""
        self.held.append({"uid": entry["uid"], "type": mtype.name, "kind": entry.get("kind"), "reason": reason})

    def release(self, uids: list[str], journal: Any) -> None:
        """Forget the held modules among ``uids`` (removed), in ``journal`` too."""
        gone = [m["uid"] for m in self.held if m["uid"] in uids]
        if gone:
            self.held = [m for m in self.held if m["uid"] not in gone]
            if journal is not None:
                journal.removed(gone)

    def status(self) -> dict[str, Any]:
        return {"held": self.held} if self.held else {}
