"""Service factories named in the benchmark's settings file: a queue and a pool of trivial modules."""

from __future__ import annotations

from pathlib import Path

from shmooze.moduletype import ModuleType, python_module
from shmooze.pool import Pool
from shmooze.queue import Queue

TRIVIAL = str(Path(__file__).resolve().parent / "trivial_module.py")


def trivial_types() -> list[ModuleType]:
    return [python_module("trivial", TRIVIAL)]


def make_queue() -> Queue:
    return Queue(trivial_types())


def make_pool() -> Pool:
    return Pool(trivial_types(), max_modules=1000)
