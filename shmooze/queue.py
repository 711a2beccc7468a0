"""The queue service: modules in order, the top one playing, a background when the queue is empty.

After every change the queue re-establishes one rule: the module on top is
playing, every other module is suspended, and the background plays only while
the queue is empty. It sends ``play`` and ``suspend`` only where something
changed, concurrently; a module that fails one is stopped and removed, and the
rule is applied again.
"""

from __future__ import annotations

from typing import Any, Iterable

from shmooze.commands import command
from shmooze.errors import CommandError
from shmooze.host import ModuleHost, _available, _by_name
from shmooze.module import ModuleProcess
from shmooze.moduletype import ModuleType


class Queue(ModuleHost):
    name = "queue"
    restartable = ("background",)  # a queue entry that ends leaves the queue

    def __init__(self, modules: Iterable[ModuleType], backgrounds: Iterable[ModuleType] = (), **options: Any):
        super().__init__(modules, **options)
        self.backgrounds = _by_name(backgrounds, "background")
        self._queue: list[ModuleProcess] = []
        self._bg: ModuleProcess | None = None

    # -- placing -----------------------------------------------------------------------

    def _placed(self) -> list[ModuleProcess]:
        return self._queue + ([self._bg] if self._bg is not None else [])

    def _attach(self, module: ModuleProcess, kind: str, restarted: bool) -> list[ModuleProcess] | None:
        if kind == "module":
            if restarted:
                return None  # a queue entry that ends leaves the queue
            self._queue.append(module)
            return []
        if restarted and self._bg is not None:
            return None  # another background was set meanwhile
        old, self._bg = self._bg, module
        return [old] if old is not None else []

    def _detach(self, module: ModuleProcess) -> None:
        if module is self._bg:
            self._bg = None
        elif module in self._queue:  # (a background that set_bg replaced is in neither place)
            self._queue.remove(module)

    def _orders(self) -> list[tuple[ModuleProcess, str]]:
        top = self._queue[0] if self._queue else None
        orders = [(m, "suspend") for m in self._playing.values() if m is not top and m is not self._bg]
        if top is not None and top.told != "play":
            orders.append((top, "play"))
        if self._bg is not None:
            if top is None and self._bg.told != "play":
                orders.append((self._bg, "play"))
            elif top is not None and self._bg.told == "play":
                orders.append((self._bg, "suspend"))
        return orders

    def _find(self, uid: str) -> ModuleProcess:
        """Only queued modules answer to tell_module and ask_module (the background has its own)."""
        module = self._modules.get(uid)
        if module is None or module is self._bg:
            raise CommandError(f"no module with uid {uid!r} in the queue")
        return module

    def _background(self, uid: str) -> ModuleProcess:
        with self._lock:
            bg = self._bg
        if bg is None:
            raise CommandError("there is no background")
        if bg.uid != uid:
            raise CommandError(f"{uid!r} is not the current background ({bg.uid!r})")
        return bg

    # -- commands ----------------------------------------------------------------------

    @command(read_only=True)
    def backgrounds_available(self, describe: bool = False) -> list:
        """Names of the background types; with ``describe``, ``{"name", "description"}`` of each."""
        return _available(self.backgrounds, describe)

    def _place_restored(self, modules: list[ModuleProcess], background: ModuleProcess | None) -> list[ModuleProcess]:
        self._queue = modules + self._queue
        if background is None:
            return []
        if self._bg is not None:  # a background was set while restoring: it stays
            return [background]
        self._bg = background
        return []

    @command
    def set_bg(self, type: str, args: dict = {}, key: str | None = None) -> dict:  # noqa: B006 - never mutated
        """Start a background; the old one is stopped. ``key``: as for ``add``."""
        return self._once(key, lambda: self._set_bg(type, args, key))

    def _set_bg(self, type: str, args: dict[str, Any], key: str | None) -> dict:
        module = self._start_and_place(self.backgrounds, type, args, "background", key, logged_as="set_bg")
        return {"uid": module.uid}

    @command
    def mv(self, uids: list[str]) -> None:
        """Reorder: the named modules first, in that order, then the others in their old order."""
        self._after_restore_of()  # the restored modules are placed first: an order made before would not hold
        with self._lock:
            first = [self._modules[uid] for uid in dict.fromkeys(uids) if uid in self._modules]
            first = [m for m in first if m is not self._bg]
            named = {m.uid for m in first}
            self._queue = first + [m for m in self._queue if m.uid not in named]
            order = [m.uid for m in self._queue]
            if self.journal is not None:
                self.journal.ordered(order)
        self.changed("moved", order=order)
        self._log_command("mv", {"uids": uids})
        self._after_change()

    @command(read_only=True)
    def queue(self, parameters: dict[str, list[str]] = {}) -> list:  # noqa: B006 - never mutated
        """The queue in order: ``{"uid", "type", "parameters"?}`` (parameters for the types named)."""
        with self._lock:
            modules = list(self._queue)
        return [self._describe(m, parameters) for m in modules]

    @command(read_only=True)
    def bg(self, parameters: dict[str, list[str]] = {}) -> Any:  # noqa: B006 - never mutated
        """The background like a queue entry, or null."""
        with self._lock:
            bg = self._bg
        return None if bg is None else self._describe(bg, parameters)

    @command
    def tell_background(self, uid: str, cmd: str, args: dict = {}) -> Any:  # noqa: B006 - never mutated
        """Send the background ``do_CMD``; ``uid`` must be the current background's."""
        return self._tell(self._background(uid), cmd, args, "tell_background")

    @command(read_only=True)
    def ask_background(self, uid: str, parameters: list[str]) -> dict:
        """Named parameters of the background."""
        return self._background(uid).get_parameters(parameters)
