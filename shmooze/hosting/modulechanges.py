"""A module host's lifecycle told to clients as change events (:mod:`shmooze.events`)."""

from __future__ import annotations

from typing import Any, Callable

from shmooze.hosting.lifecycle import Ended, Placed, Removed, Reordered, Restored, Subscriber, Told, Updated


class ModuleChanges(Subscriber):
    """A host's modules' lifecycle as change events (``added``, ``removed``, ``moved``, ``restored``,
    ``parameters``, ``told``, ``stopped``), through the service's ``changed`` and ``changed_each``.
    An event a client's command caused says who sent it: ``by`` (:mod:`shmooze.caller`)."""

    def __init__(self, changed: Callable[..., int], changed_each: Callable[[str, list[dict[str, Any]]], int]):
        self.changed, self.changed_each = changed, changed_each

    def placed(self, event: Placed) -> None:
        module = event.module
        by = by_field(event.by)
        if event.restarted:
            self.changed("added", uid=module.uid, type=module.type.name, restarted=True)
        else:
            self.changed("added" if event.kind == "module" else event.kind, uid=module.uid, type=module.type.name,
                         **by)
        self._removed(event.displaced, f"replaced by a new {event.kind}", by)

    def removed(self, event: Removed) -> None:
        self._removed(event.modules, event.reason, by_field(event.by))

    def _removed(self, modules: list[Any], reason: str, by: dict[str, str]) -> None:
        if modules:
            self.changed_each("removed", [{"uid": m.uid, "type": m.type.name, "reason": reason, **by}
                                          for m in modules])

    def reordered(self, event: Reordered) -> None:
        self.changed("moved", order=event.order, **by_field(event.by))

    def restored(self, event: Restored) -> None:
        self.changed("restored", uids=[m.uid for m in event.modules])

    def updated(self, event: Updated) -> None:
        if event.cmd == "set_parameters":
            self.changed("parameters", uid=event.module.uid, set=event.args.get("parameters", {}))
        elif event.cmd == "unset_parameters":
            self.changed("parameters", uid=event.module.uid, unset=event.args.get("parameters", []))

    def told(self, event: Told) -> None:
        self.changed("told", uid=event.module.uid, cmd=event.cmd)

    def ended(self, event: Ended) -> None:
        module = event.module
        if not module.start_failed:  # (a start that failed was never announced)
            self.changed("stopped", uid=module.uid, type=module.type.name, ended_by=event.rung)


def by_field(caller: str | None) -> dict[str, str]:
    """A change event's ``by`` field: only when a client's command caused it (its fields stay as they were
    otherwise)."""
    return {"by": caller} if caller else {}
