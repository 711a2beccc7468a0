"""Join the results every benchmark saved in bench/results/ into one summary table and bench/results.md.

Usage: ``.venv/bin/python -m bench.summary [--seconds S] [--out PATH] [--readme]``. Prints the summary
table (every row that has a floor, a peer or a target, and every failed check, from every script, in
the common format) and writes it, followed by every section in full, as markdown to bench/results.md.
The header counts the targets missed and checks failed: every row whose verdict is FAIL. ``--readme``
also puts the run's header and summary table into docs/benchmarks.md, between its ``bench:begin`` and
``bench:end`` marks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench.common import BENCH, RESULTS_DIR, TABLE_HEAD, Row, table_line

#: The order of the scripts in the summary (that of `dev.py bench`).
ORDER = ["run", "push", "cmdlog", "journal", "servicekey", "users", "containment", "soak", "attack"]


README_BEGIN = "<!-- bench:begin (written by bench/summary.py --readme) -->"
README_END = "<!-- bench:end -->"


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
        readme = BENCH.parent / "docs" / "benchmarks.md"
        old = readme.read_text()
        begin, end = old.index(README_BEGIN) + len(README_BEGIN), old.index(README_END)
        table = "\n".join(header[2:-3] + [""] + summary_lines(results))
        readme.write_text(old[:begin] + "\n" + table + "\n" + old[end:])
    sys.stdout.write("\n## Summary of every benchmark\n\n" + "\n".join(summary_lines(results)) + "\n\n")
    sys.stdout.write(f"(also written, with every section, to {opts.out})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
