"""Shared helpers for the benchmarks: their processes (the test kit's, :mod:`shmooze.testing`), HTTP
posting, statistics and result rows."""

from __future__ import annotations

import http.client
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import psutil

from shmooze.polling import wait_until as poll
from shmooze.testing import HOST, PYTHON, Process, free_port  # noqa: F401 - the benchmarks import them from here

log = logging.getLogger("bench")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
#: Bytecode caches of every process the benchmarks start go here, so nothing is written in the
#: project tree while caches still work (the environment sets PYTHONDONTWRITEBYTECODE=1).
PYCACHE = Path(tempfile.gettempdir()) / "shmooze-bench-pycache"
JSON_HEADERS = {"Content-Type": "application/json"}


class BenchError(RuntimeError):
    """A benchmark could not run as planned (a service failed, a command failed, a deadline passed)."""


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr, one line per event (stdout is kept for the result tables)."""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every process started here: bytecode caches on, project folders importable
    (``bench`` itself, as a package: children run as ``python -m bench.NAME``)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env["PYTHONUNBUFFERED"] = "1"
    paths = [str(ROOT), str(ROOT / "pymodule"), str(ROOT / "examples")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def bench_argv(name: str, *args: str) -> list[str]:
    """``python -m bench.NAME ARGS...``: a benchmark script run as a child (with :func:`child_env`)."""
    return [PYTHON, "-m", f"bench.{name}", *args]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something true; raise :class:`BenchError` after ``timeout`` s."""
    return poll(predicate, timeout, what, interval, error=BenchError)


class Proc(Process):
    """A process started by the benchmarks (the test kit's, in its own session, stopped by its pid),
    named for the log and with :func:`child_env` unless told otherwise."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 log_path: Path | None = None, cwd: str | None = None):
        super().__init__(argv, env or child_env(), cwd=cwd, log_path=log_path, name=name)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the process's log file, for error messages."""
        return self.log()[-chars:]


class Client:
    """One kept-alive HTTP connection that posts shmooze commands to ``127.0.0.1:port/path``."""

    def __init__(self, port: int, path: str = "/", timeout: float = 120.0):
        self.port = port
        self.path = path
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)

    def raw(self, body: bytes) -> bytes:
        """Post a body, return the answer body; non-200 statuses raise."""
        self.conn.request("POST", self.path, body, JSON_HEADERS)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise BenchError(f"POST :{self.port}{self.path} answered {resp.status}: {data[:300]!r}")
        return data

    def call(self, cmd: str, /, **args: Any) -> Any:
        """Send one command; return its result or raise with its error."""
        answer = json.loads(self.raw(encode_command(cmd, **args)))
        if not answer.get("success"):
            raise BenchError(f"{cmd} on :{self.port}{self.path} failed: {answer.get('error')}")
        return answer.get("result")

    def close(self) -> None:
        self.conn.close()


def encode_command(cmd: str, /, **args: Any) -> bytes:
    """The HTTP body of one command."""
    return json.dumps({"cmd": cmd, "args": args}, separators=(",", ":")).encode()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation."""
    if not values:
        raise ValueError("no values")
    data = sorted(values)
    pos = q * (len(data) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def per_request_us(call: Callable[[], None], n: int) -> float:
    """Microseconds per ``call()``, over ``n`` calls one after another (after 50 to warm up)."""
    for _ in range(50):  # warm the connection and the caches
        call()
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1e6


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by these processes (those still there)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent in processes so far (user, nice, system, and steal)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "steal", 0.0)


def _tree_cpu_seconds() -> float:
    """CPU seconds of this process, its live descendants, and every descendant they (or we) reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        try:
            t = child.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


class ForeignMeter:
    """How much CPU the rest of the machine (not this benchmark's process tree) used during a stretch."""

    def __init__(self) -> None:
        self.busy0 = _busy_cpu_seconds()
        self.tree0 = _tree_cpu_seconds()
        self.t0 = time.monotonic()

    def cores(self) -> float:
        """Average cores used by other processes since this meter was made (noise on every figure)."""
        wall = time.monotonic() - self.t0
        other = (_busy_cpu_seconds() - self.busy0) - (_tree_cpu_seconds() - self.tree0)
        return max(other, 0.0) / wall if wall > 0 else 0.0


def noise_note(section: Section, meter: ForeignMeter, threshold: float = 0.25) -> float:
    """Note on the section how busy the rest of the machine was while it ran; returns the cores."""
    cores = meter.cores()
    text = f"Other processes on the machine used {cores:.2f} cores on average while this section ran"
    if cores > threshold:
        text += " (NOISY: its figures are lower bounds of what this machine can do)"
    section.notes.append(text + ".")
    section.noise_cores = cores
    return cores


def family(pid: int) -> list[int]:
    """A process and its descendants."""
    try:
        return [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid]


# -- results ---------------------------------------------------------------------------------

@dataclass
class Row:
    """One measure: its value, its floor or peer, and how the two compare (or the target it must meet).

    ``rounds`` and ``floor_rounds`` hold one figure per round (rounds of value and floor interleaved);
    ``value`` and ``floor`` are then their medians and the table shows the min-max beside them.
    """

    measure: str
    value: float | None
    unit: str
    floor: float | None = None
    floor_label: str = ""
    compare: str = ""
    verdict: str = "info"
    target: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    rounds: list[float] = field(default_factory=list)
    floor_rounds: list[float] = field(default_factory=list)
    #: when a row has several floors (:func:`anchored_row`): each one's label, median and rounds, in
    #: order; ``floor`` is then the first that has a figure
    anchors: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Section:
    """A titled table of rows, with an optional note printed under it."""

    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    noise_cores: float | None = None

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, "rows": [r.as_json() for r in self.rows], "notes": self.notes,
                "other_processes_cores": self.noise_cores}


def fmt(value: float | None, unit: str) -> str:
    """A value with its unit, with a sensible number of digits."""
    if value is None:
        return "n/a"
    if unit in ("req/s", "processes", "ops/s"):
        return f"{value:,.0f} {unit}"
    if unit == "count":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".strip()


#: A floor this close to zero is zero (what is left of subtracting two equal figures): no ratio to it.
ZERO = 1e-9


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def rounds_row(measure: str, rounds: Sequence[float], unit: str, floor_rounds: Sequence[float] = (),
               floor_label: str = "", *, max_ratio: float | None = None, min_ratio: float | None = None,
               at_most: float | None = None, at_least: float | None = None, **detail: Any) -> Row:
    """A row from one figure per round: the median of the rounds, with their min-max, against a floor's rounds.

    The ratio is the median of the value's rounds over the median of the floor's rounds. Targets are
    on that ratio (``max_ratio``, ``min_ratio``) or on the median itself (``at_most``, ``at_least``).
    """
    value = median(rounds)
    floor = median(floor_rounds) if floor_rounds else None
    row = Row(measure, value, unit, floor, floor_label, detail=dict(detail), rounds=list(rounds),
              floor_rounds=list(floor_rounds))
    parts = []
    if floor is not None and abs(floor) > ZERO:
        ratio = value / floor
        row.detail["ratio"] = ratio
        parts.append(f"{ratio:.2f}x")
        if max_ratio is not None:
            row.target = f"<= {max_ratio:g}x"
            row.verdict = verdict(ratio <= max_ratio)
        elif min_ratio is not None:
            row.target = f">= {min_ratio:g}x"
            row.verdict = verdict(ratio >= min_ratio)
    if at_most is not None:
        row.target = f"<= {fmt(at_most, unit)}"
        row.verdict = verdict(value <= at_most)
    elif at_least is not None:
        row.target = f">= {fmt(at_least, unit)}"
        row.verdict = verdict(value >= at_least)
    if row.target:
        parts.append(f"target {row.target}")
    row.compare = "; ".join(parts)
    return row


def anchored_row(measure: str, rounds: Sequence[float], unit: str,
                 anchors: Sequence[tuple[str, Sequence[float]]], **targets: Any) -> Row:
    """A row measured against several floors at once (each run in the same interleaved rounds): the
    floor/peer column lists each floor's median (min-max) and label, the ratio column each ratio of
    medians in the same order ("-" for a floor without a figure), then the target. ``targets`` are
    :func:`rounds_row`'s (a ratio target applies to the first floor that has a figure), or
    ``each_at_most``: a bound that the worst round must meet."""
    each_at_most = targets.pop("each_at_most", None)
    present = [(label, list(r)) for label, r in anchors if r]
    first_label, first_rounds = present[0] if present else ("", [])
    row = rounds_row(measure, rounds, unit, first_rounds, first_label, **targets)
    if each_at_most is not None:  # a target every round must meet, not only their median
        row.target = f"<= {fmt(each_at_most, unit)} in every round"
        row.verdict = verdict(max(rounds) <= each_at_most)
    ratios = []
    for label, r in anchors:
        value = median(r) if r else None
        entry: dict[str, Any] = {"label": label, "value": value, "rounds": list(r)}
        if value is not None and abs(value) > ZERO and row.value is not None:
            entry["ratio"] = row.value / value
        ratios.append(f"{entry['ratio']:.2f}x" if "ratio" in entry else "-")
        row.anchors.append(entry)
    parts = [" / ".join(ratios)] if any(a.get("ratio") for a in row.anchors) else []
    if row.target:
        parts.append(f"target {row.target}")
    row.compare = "; ".join(parts)
    return row


def with_spread(value: float | None, rounds: Sequence[float], unit: str) -> str:
    """``median unit (min-max)`` when there are several rounds, else the value alone."""
    if value is None:
        return "n/a"
    if len(rounds) < 2:
        return fmt(value, unit)
    lo, hi = fmt(min(rounds), unit), fmt(max(rounds), unit)
    tail = f" {unit}" if unit and lo.endswith(f" {unit}") else ""
    lo, hi = lo[: len(lo) - len(tail)], hi[: len(hi) - len(tail)]
    return f"{fmt(value, unit)} ({lo}-{hi})"


TABLE_HEAD = ["| measure | shmooze median (min-max) | floor/peer median (min-max) | ratio |",
              "| --- | ---: | ---: | --- |"]


def table_line(r: Row) -> str:
    """One row of the common table: measure | shmooze | floor or peer | ratio (and target, verdict)."""
    floor = ""
    if r.anchors:
        floor = "; ".join(f"{with_spread(a['value'], a['rounds'], r.unit)} ({a['label']})" for a in r.anchors)
    elif r.floor is not None:
        floor = with_spread(r.floor, r.floor_rounds, r.unit)
        if r.floor_label:
            floor += f" ({r.floor_label})"
    compare = r.compare
    if r.verdict not in ("info", ""):
        compare = f"{compare}: {r.verdict}" if compare else r.verdict
    return f"| {r.measure} | {with_spread(r.value, r.rounds, r.unit)} | {floor} | {compare} |"


def markdown(section: Section) -> str:
    """The section as a markdown table in the common format (see :data:`TABLE_HEAD`), notes below it."""
    lines = [f"### {section.title}", "", *TABLE_HEAD]
    lines += [table_line(r) for r in section.rows]
    for note in section.notes:
        lines.append("")
        lines.append(f"_{note}_")
    return "\n".join(lines) + "\n"


#: Every benchmark script saves its sections here (one JSON file each); bench/summary.py joins them.
RESULTS_DIR = BENCH / "results"


def save_sections(name: str, sections: Sequence[Section], quick: bool, **extra: Any) -> Path:
    """Write one script's sections (and anything else worth keeping) to ``bench/results/NAME.json``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"name": name, "quick": quick, "time": time.time(),
                                "sections": [s.as_json() for s in sections], **extra}, indent=2, default=str) + "\n")
    return path


class Managed:
    """Processes started on ``with`` and stopped on leaving it (also when starting failed half-way).

    Subclasses fill ``self.procs`` (name -> Proc) in :meth:`start`; :meth:`stop_order` says which
    to stop first. Logs in ``self.dir`` are kept when something failed.
    """

    failed = False
    procs: dict
    dir: Path

    def start(self) -> None:
        raise NotImplementedError

    def stop_order(self) -> list[str]:
        return list(self.procs)

    def stop(self) -> None:
        for name in self.stop_order():
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            try:
                proc.stop()
            except Exception:
                self.failed = True
                logging.getLogger("bench").exception("stopping %s (pid %d) failed", name, proc.pid)
        if self.failed:
            logging.getLogger("bench").warning("logs of the processes under test kept in %s", self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.failed = True
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.failed = self.failed or exc_type is not None
        self.stop()
