"""What happens to a host's modules, as events, and who hears of it in what order.

The host publishes one event per step of a module's life (:class:`Started`, :class:`Placed`,
:class:`Updated`, :class:`Told`, :class:`Removed`, :class:`Ended`...); its journal, command log, operations
figures, restart policies and change events are :class:`Subscriber` objects that the
:class:`Lifecycle` calls in the one order the host declares (see ``ModuleHost.__init__``).
A subscriber overrides the methods of the events it cares about; the others do nothing. Events are
facts: nobody changes one (they are plain slotted dataclasses, not frozen ones, which cost twice as
much to make on the path of every parameter update). The events a client's command causes (a module
placed, removed, the queue reordered) carry ``by``: who sent it (:func:`shmooze.caller.current` where the
event is made; None for what the host does on its own: a restart, a module that left).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from shmooze.caller import current

if TYPE_CHECKING:
    from shmooze.hosting.moduleprocess import ModuleProcess


@dataclass(slots=True)
class Started:
    """The module answered init: its first start, a restore or a restart (placed next, or stopped)."""

    handler: ClassVar[str] = "started"
    module: ModuleProcess
    args: dict[str, Any]
    kind: str  # "module" or "background"


@dataclass(slots=True)
class StartFailed:
    """The module did not get running (its :class:`Ended` follows)."""

    handler: ClassVar[str] = "start_failed"
    module: ModuleProcess


@dataclass(slots=True)
class Placed:
    """A started module took its place (published with the table's lock held, so the journal keeps the
    order of places); ``displaced``: the modules it replaced (a new background's old one), taken out."""

    handler: ClassVar[str] = "placed"
    module: ModuleProcess
    args: dict[str, Any]
    kind: str
    key: str | None = None  # the client's key of the command that added it
    restarted: bool = False  # started again by its restart policy (already journaled and logged)
    logged_as: str | None = None  # the command to log it as ("add", "set_bg"), if any
    displaced: list[ModuleProcess] = field(default_factory=list)
    by: str | None = field(default_factory=current)  # who sent the command that placed it


@dataclass(slots=True)
class Updated:
    """An update line from the module (on the I/O thread): set_parameters, unset_parameters or rm."""

    handler: ClassVar[str] = "updated"
    module: ModuleProcess
    cmd: str
    args: dict[str, Any]


@dataclass(slots=True)
class Told:
    """The module answered a play or suspend order of the rule (:mod:`shmooze.hosting.playrule`)."""

    handler: ClassVar[str] = "told"
    module: ModuleProcess
    cmd: str


@dataclass(slots=True)
class Commanded:
    """A command sent to a module (``{"cmd", "args"}``) and its whole answer, None when none came (a
    timeout, a closed stream); on the thread that sent it. Only modules the host hears commands of
    (see ``ModuleHost.spawn``) publish it: the others pay nothing."""

    handler: ClassVar[str] = "commanded"
    module: ModuleProcess
    command: dict[str, Any]
    answer: Any


@dataclass(slots=True)
class Answered:
    """A client command that may change something, and the whole answer it got (a failure too)."""

    handler: ClassVar[str] = "answered"
    cmd: str
    args: dict[str, Any]
    answer: dict[str, Any]


@dataclass(slots=True)
class Removed:
    """Modules taken out of place, to be stopped (published with the table's lock held)."""

    handler: ClassVar[str] = "removed"
    modules: list[ModuleProcess]
    reason: str
    by: str | None = field(default_factory=current)  # who sent the command that removed them


@dataclass(slots=True)
class Reordered:
    """The queue's entries are now in this order (``mv``; with the table's lock held)."""

    handler: ClassVar[str] = "reordered"
    order: list[str]
    by: str | None = field(default_factory=current)


@dataclass(slots=True)
class Restored:
    """The journal's modules are back in place; ``dropped``: the uids of those not restored."""

    handler: ClassVar[str] = "restored"
    modules: list[ModuleProcess]
    dropped: list[str]


@dataclass(slots=True)
class Ended:
    """The module's stop ladder is over and it is out of the table. ``rung`` is what ended it (a ladder
    rung, or the resource limit that the operations figures name: they come before its other readers)."""

    handler: ClassVar[str] = "ended"
    module: ModuleProcess

    @property
    def rung(self) -> str | None:
        return self.module.ended_by


Event = (Started | StartFailed | Placed | Updated | Told | Commanded | Answered | Removed | Reordered | Restored
         | Ended)


class Subscriber:
    """Hears a host's lifecycle events; each method does nothing unless a subclass overrides it."""

    def started(self, event: Started) -> None:
        pass

    def start_failed(self, event: StartFailed) -> None:
        pass

    def placed(self, event: Placed) -> None:
        pass

    def updated(self, event: Updated) -> None:
        pass

    def told(self, event: Told) -> None:
        pass

    def commanded(self, event: Commanded) -> None:
        pass

    def answered(self, event: Answered) -> None:
        pass

    def removed(self, event: Removed) -> None:
        pass

    def reordered(self, event: Reordered) -> None:
        pass

    def restored(self, event: Restored) -> None:
        pass

    def ended(self, event: Ended) -> None:
        pass

    def close(self) -> None:
        """The host has stopped (subscribers that write somewhere close it here)."""



class Lifecycle:
    """The subscribers of one host, in the order they hear every event (set once, by the host)."""

    def __init__(self, subscribers: list[Subscriber]):
        self.subscribers: list[Subscriber] = []
        # Per event kind, the methods of the subscribers that hear it (those that override the base's):
        # a parameter update (thousands a second) calls no method that does nothing.
        self._hearers: dict[str, list[Callable[[Any], None]]] = {name: [] for name in _HANDLERS}
        for subscriber in subscribers:
            self.subscribe(subscriber)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add a subscriber after the others: it hears of each step once all the host's own are done."""
        self.subscribers.append(subscriber)
        for name, hearers in self._hearers.items():
            if getattr(type(subscriber), name) is not getattr(Subscriber, name):
                hearers.append(getattr(subscriber, name))

    def close(self) -> None:
        """The host has stopped: each subscriber that writes somewhere closes it, in order."""
        for subscriber in self.subscribers:
            subscriber.close()

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber that hears its kind, in order, on this thread (an exception
        goes to the publisher)."""
        for hear in self._hearers[event.handler]:
            hear(event)


_HANDLERS = [name for name in vars(Subscriber) if not name.startswith("_") and name != "close"]
