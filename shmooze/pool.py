"""The pool service: every module runs at once; each is told ``play`` right after ``init``."""

from __future__ import annotations

from typing import Any, Iterable

from shmooze.commands import command
from shmooze.host import ModuleHost
from shmooze.module import ModuleProcess
from shmooze.moduletype import ModuleType


class Pool(ModuleHost):
    name = "pool"

    def __init__(self, modules: Iterable[ModuleType], **options: Any):
        super().__init__(modules, **options)
        self._pool: dict[str, ModuleProcess] = {}

    def _placed(self) -> list[ModuleProcess]:
        return list(self._pool.values())

    def _attach(self, module: ModuleProcess) -> None:
        self._pool[module.uid] = module

    def _detach(self, uid: str) -> ModuleProcess | None:
        return self._pool.pop(uid, None)

    def _place_restored(self, modules: list[ModuleProcess], background: ModuleProcess | None) -> list[ModuleProcess]:
        self._pool = {**{m.uid: m for m in modules}, **self._pool}
        return [background] if background is not None else []

    def _orders(self) -> list[tuple[ModuleProcess, str]]:
        return [(m, "play") for m in self._pool.values() if m.told != "play"]

    @command(read_only=True)
    def pool(self, parameters: dict[str, list[str]] = {}) -> list:  # noqa: B006 - never mutated
        """Every module, oldest first: ``{"uid", "type", "parameters"?}``."""
        with self._lock:
            modules = list(self._pool.values())
        return [self._describe(m, parameters) for m in modules]
