"""The pool service: every module runs at once; each is told ``play`` right after ``init``."""

from __future__ import annotations

from shmooze.commands import command
from shmooze.host import ModuleHost
from shmooze.module import ModuleProcess


class Pool(ModuleHost):
    name = "pool"

    def _placed(self) -> list[ModuleProcess]:
        return list(self._modules.values())  # the host's index is the pool, oldest first

    def _attach(self, module: ModuleProcess, kind: str, restarted: bool) -> list[ModuleProcess] | None:
        return []

    def _detach(self, module: ModuleProcess) -> None:
        pass

    def _place_restored(self, modules: list[ModuleProcess], background: ModuleProcess | None) -> list[ModuleProcess]:
        self._modules = {**{m.uid: m for m in modules}, **self._modules}  # before those added meanwhile
        return [background] if background is not None else []

    def _orders(self) -> list[tuple[ModuleProcess, str]]:
        return [(m, "play") for m in self._untold.values()]

    @command(read_only=True)
    def pool(self, parameters: dict[str, list[str]] = {}) -> list:  # noqa: B006 - never mutated
        """Every module, oldest first: ``{"uid", "type", "parameters"?}``."""
        with self._lock:
            modules = list(self._modules.values())
        return [self._describe(m, parameters) for m in modules]
