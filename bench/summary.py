"""Join the results every benchmark saved in bench/results/ into one summary table and bench/results.md.

Usage: ``.venv/bin/python -m bench.summary [--seconds S] [--out PATH] [--readme]``. Prints the summary
table (every row that has a floor, a peer or a target, and every failed check, from every script, in
the common format) and writes it, followed by every section in full, as markdown to bench/results.md.
The header counts the targets missed and checks failed: every row whose verdict is FAIL. ``--readme``
also puts the run's header and summary table into docs/benchmarks.md, between its ``bench:begin`` and
``bench:end`` marks, then the prose beside it (docs/benchmarks.md's ``bench:prose`` marks, the README's
``bench:readme`` marks), written from that table only (:func:`prose`): every figure in it is a cell of
the table, and bench/test_tables.py fails when the prose there is not what the table gives, or when a
figure stands in the benchmark prose outside those marks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

from bench.common import BENCH, RESULTS_DIR, TABLE_HEAD, Row, table_line

#: The order of the scripts in the summary (that of `dev.py bench`).
ORDER = ["run", "push", "cmdlog", "journal", "servicekey", "users", "containment", "soak", "attack"]


README_BEGIN = "<!-- bench:begin (written by bench/summary.py --readme) -->"
README_END = "<!-- bench:end -->"
#: The prose beside the table on docs/benchmarks.md, and the README's paragraph: written from the table.
PAGE_PROSE = ("<!-- bench:prose:begin (written by bench/summary.py --readme from the table above) -->",
              "<!-- bench:prose:end -->")
README_PROSE = ("<!-- bench:readme:begin (written by bench/summary.py --readme from docs/benchmarks.md's table) -->",
                "<!-- bench:readme:end -->")
PAGE = BENCH.parent / "docs" / "benchmarks.md"
README = BENCH.parent / "README.md"

#: The rows the prose names, in its order: (the start of the row's measure in the table, the phrase;
#: ``{value}``, ``{floor}`` and ``{ratio}`` are the row's cells: its median, its floor's, the ratio).
#: A row missing from the run leaves its phrase out.
HEADLINES = [
    ("A1. HTTP round trip: through the gateway, p50",
     "a command through the gateway {value} p50 against {floor} for a bare WSGI app ({ratio})"),
    ("A1. HTTP round trip: gateway hop", "the gateway hop {value}"),
    ("A2. HTTP throughput: server CPU per request, direct",
     "a service's CPU per request {ratio} a bare WSGI app's"),
    ("B1. Module start and stop: queue add", "a queue `add` until the module answered {value} against {floor} "
                                             "for a bare spawn ({ratio})"),
    ("B5. Many modules beside supervisord and circus: start 50 modules vs supervisord",
     "starting 50 modules {ratio} supervisord's time"),
    ("B5. Many modules beside supervisord and circus: stop 50 modules vs supervisord", "stopping 50 at once {ratio}"),
    ("B5. Many modules beside supervisord and circus: stop 200 modules vs supervisord", "200 at once {ratio}"),
    ("B5. Many modules beside supervisord and circus: memory per module in the managing process, 200 modules, vs "
     "supervisord", "a module's memory in the managing process {ratio} supervisord's per child"),
    ("Push latency: 1,000 watchers: p50", "push to 1,000 WebSocket watchers {value} p50 against {floor} for a "
                                          "plain `websockets` broadcast ({ratio})"),
    ("Push latency: 1,000 watchers: p99", "p99 {value} against {floor} ({ratio})"),
    ("Push latency: 1 watcher: p50 above", "to one watcher {value} above the plain broadcast"),
    ("Push to 10000 watchers on one gateway host: 10,000 watchers: p99",
     "to 10,000 watchers on one gateway host p99 {value} against {floor} ({ratio})"),
    ("Push to 10000 watchers on one gateway host: 10,000 watchers: memory per watcher",
     "{value} of memory per idle watcher"),
    ("Push to 10000 watchers on one gateway host: 10,000 watchers: after a restart",
     "all 10,000 subscribed again {value} after the gateway's restart"),
    ("Command log cost: mv with the log", "`mv` with the command log {value} against {floor} without it ({ratio})"),
    ("Keeping a command: answered once synced (fsync, the default): add + rm, median pair",
     "`add` + `rm` answered once synced {ratio} the time with neither journal nor log"),
    ("Under attack: normal client p99", "a normal client's p99 under every attack at once {ratio} calm"),
]


#: Where the whole run's length is kept (given once by `dev.py bench`, read again by ``--readme``).
TOTAL = "_total.json"


def load() -> list[dict]:
    found = {p.stem: json.loads(p.read_text()) for p in RESULTS_DIR.glob("*.json") if p.name != TOTAL}
    return [found[name] for name in sorted(found, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))]


def short(title: str) -> str:
    """The section's short name: its title up to the first colon, comma or parenthesis."""
    for stop in (":", " (", ","):
        title = title.split(stop)[0]
    return title.strip()


def rows_of(section: dict) -> list[Row]:
    return [Row(**r) for r in section["rows"]]


def summary_rows(results: list[dict]) -> list[Row]:
    """The summary's rows: every row with a floor, a peer or a target, and every failed check (a row
    with neither, such as a correctness check of the soak, is there when it fails); each named
    after its section."""
    rows = []
    for result in results:
        for section in result["sections"]:
            for row in rows_of(section):
                if row.floor is None and not row.target and row.verdict != "FAIL":
                    continue
                row.measure = f"{short(section['title'])}: {row.measure}"
                rows.append(row)
    return rows


def summary_lines(results: list[dict]) -> list[str]:
    return [*TABLE_HEAD, *(table_line(row) for row in summary_rows(results))]


def section_markdown(section: dict) -> list[str]:
    lines = [f"### {section['title']}", "", *TABLE_HEAD, *(table_line(r) for r in rows_of(section))]
    for note in section.get("notes", []):
        lines += ["", f"_{note}_"]
    return lines + [""]


def table_cells(block: str) -> dict[str, list[str]]:
    """The rows of a summary table (the text between the ``bench`` marks): measure -> its other cells."""
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "measure":
            rows[cells[0]] = cells[1:]
    return rows


def figure(cell: str) -> str:
    """A cell's figure without its spread or label: ``1.04 ms (0.740-1.23)`` -> ``1.04 ms``."""
    return cell.split(" (")[0]


def prose(block: str) -> tuple[str, str]:
    """The README's paragraph and the page's, from a summary table and its header (``block``, what
    ``--readme`` writes between the ``bench`` marks): every figure is a cell of that table."""
    rows = table_cells(block)
    when = re.search(r"finished (\d{4}-\d\d-\d\d)", block)
    load = re.search(r"other processes on the machine used ([\d.]+-[\d.]+) cores", block)
    phrases = []
    for start, phrase in HEADLINES:
        found = next(((m, c) for m, c in rows.items() if m.startswith(start)), None)
        if found is None:
            continue
        value, floor, compare = found[1]
        ratio = compare.split(";")[0].split(" / ")[0].strip()  # (against several floors: the first's, as {floor})
        if ("{ratio}" in phrase and not ratio.endswith("x")) or ("{floor}" in phrase and not floor):
            continue
        phrases.append(phrase.format(value=figure(value), floor=figure(floor), ratio=ratio))
    missed = [m for m, (_, _, compare) in rows.items() if compare.endswith("FAIL")]
    run = f"the last full run ({when.group(1) if when else 'date unknown'}"
    run += f"; other processes on the machine used {load.group(1)} cores)" if load else ")"
    body = "; ".join(phrases) + "."
    listed = counted = " Every target was met."
    if missed:
        tally = f" Targets missed or checks failed: {len(missed)}"
        listed, counted = f"{tally} ({'; '.join(missed)}).", f"{tally}, each named there."
    readme = f"From {run}, every row in [Benchmarks](docs/benchmarks.md): {body}{counted}"
    page = (f"In {run}, where shmooze stands against its floors and peers (every figure a row of the table above): "
            f"{body}{listed}")
    return wrap(readme), wrap(page)


def wrap(text: str, width: int = 100) -> str:
    """Markdown lines of at most ``width`` characters (words never split)."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


def between(text: str, marks: tuple[str, str]) -> str:
    """What stands between two marks of a file."""
    begin = text.index(marks[0]) + len(marks[0])
    return text[begin:text.index(marks[1], begin)].strip("\n")


def replace_between(text: str, marks: tuple[str, str], new: str) -> str:
    begin = text.index(marks[0]) + len(marks[0])
    return text[:begin] + "\n" + new + "\n" + text[text.index(marks[1], begin):]


def write_prose(page: Path = PAGE, readme: Path = README) -> None:
    """Write the prose of the page and the README from the table on the page."""
    page_text = page.read_text()
    readme_para, page_para = prose(between(page_text, (README_BEGIN, README_END)))
    page.write_text(replace_between(page_text, PAGE_PROSE, page_para))
    readme.write_text(replace_between(readme.read_text(), README_PROSE, readme_para))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="how long the whole run took (for the header)")
    parser.add_argument("--out", type=Path, default=BENCH / "results.md")
    parser.add_argument("--readme", action="store_true", help="also replace the summary in docs/benchmarks.md")
    opts = parser.parse_args(argv)
    results = load()
    if not results:
        sys.stderr.write(f"no results in {RESULTS_DIR}: run the benchmarks first\n")
        return 2
    quick = any(r.get("quick") for r in results)
    total = RESULTS_DIR / TOTAL
    if opts.seconds:
        total.write_text(json.dumps({"seconds": opts.seconds}) + "\n")
    elif total.exists():
        opts.seconds = json.loads(total.read_text())["seconds"]
    finished = max(r.get("time") or r.get("started") or 0 for r in results)
    noise = [s["other_processes_cores"] for r in results for s in r["sections"] if s.get("other_processes_cores")]
    failed = [row for row in summary_rows(results) if row.verdict == "FAIL"]
    header = [
        "# Benchmark results", "",
        f"{'QUICK run (not for the documentation)' if quick else 'Full run'} of `python3 scripts/dev.py bench"
        f"{' --quick' if quick else ''}` finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(finished))}: "
        f"Python {platform.python_version()}, {os.cpu_count()} cores"
        + (f", {opts.seconds / 60:.1f} min in all" if opts.seconds else "")
        + (f"; other processes on the machine used {min(noise):.1f}-{max(noise):.1f} cores while the sections "
           "ran (the machine is shared)" if noise else "") + ".",
        "Every figure is the median of the rounds, with their min-max; target and floor or peer were run in "
        "interleaved rounds in the same run, and no round was discarded. "
        f"{len(failed)} target(s) missed or check(s) failed.", "",
        "## Summary", ""]
    text = "\n".join(header + summary_lines(results) + ["", "## Every section", ""])
    text += "\n".join(line for result in results for s in result["sections"] for line in section_markdown(s))
    opts.out.write_text(text)
    if opts.readme:
        if quick:
            sys.stderr.write("a quick run's figures do not go into the docs\n")
            return 2
        table = "\n".join(header[2:-3] + [""] + summary_lines(results))
        PAGE.write_text(replace_between(PAGE.read_text(), (README_BEGIN, README_END), table))
        write_prose()
    sys.stdout.write("\n## Summary of every benchmark\n\n" + "\n".join(summary_lines(results)) + "\n\n")
    sys.stdout.write(f"(also written, with every section, to {opts.out})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
