"""The pool service: every module runs at once; each is told ``play`` right after ``init``."""

from __future__ import annotations

from typing import Any, Iterable

from shmooze.commands import command
from shmooze.hosting.host import ModuleHost
from shmooze.hosting.moduleprocess import ModuleProcess
from shmooze.hosting.placement import Orders, Placement, listed
from shmooze.moduletype import ModuleType


class PoolSet(Placement):
    """The pool's placement: every module, oldest first; each is told play once, and nothing after."""

    def __init__(self) -> None:
        self.modules: dict[str, ModuleProcess] = {}

    def placed(self) -> list[ModuleProcess]:
        return list(self.modules.values())

    def attach(self, module: ModuleProcess, kind: str, restarted: bool) -> list[ModuleProcess] | None:
        self.modules[module.uid] = module
        return []

    def detach(self, module: ModuleProcess) -> None:
        self.modules.pop(module.uid, None)

    def place_restored(self, modules: list[ModuleProcess], background: ModuleProcess | None) -> list[ModuleProcess]:
        self.modules = {**{m.uid: m for m in modules}, **self.modules}  # before those added meanwhile
        return [background] if background is not None else []

    def orders(self, untold: Iterable[ModuleProcess], playing: Iterable[ModuleProcess]) -> Orders:
        return [(m, "play") for m in untold]


class Pool(ModuleHost):
    name = "pool"
    original_kind = "pool"

    def __init__(self, modules: Iterable[ModuleType], logfilename: str | None = None, **options: Any):
        """``logfilename``: as in the original, where the pool writes the original's command log (``pool_log``)."""
        super().__init__(modules, placement=PoolSet(), **options)
        if logfilename:
            from shmooze.hosting.originallog import OriginalLogWriter

            self.original_log = OriginalLogWriter(logfilename, self.original_kind)

    @command(read_only=True)
    def pool(self, parameters: dict[str, list[str]] = {}) -> list:  # noqa: B006 - never mutated
        """Every module, oldest first: ``{"uid", "type", "parameters"?}``."""
        return [listed(m, parameters) for m in self.table.placed()]
