"""The benchmarks' common table: median and min-max of the rounds, the floor's, the ratio, the target.

The benchmarks' own tests: pytest collects them with the project's (``testpaths``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import common, summary


def test_a_row_is_the_median_of_its_rounds_with_their_spread_and_the_ratio_of_medians() -> None:
    row = common.rounds_row("stop 50 modules", [40.0, 30.0, 35.0], "ms", [20.0, 10.0, 14.0], "supervisord")
    assert row.value == 35.0 and row.floor == 14.0
    assert row.detail["ratio"] == pytest.approx(2.5)
    assert common.table_line(row) == ("| stop 50 modules | 35.0 ms (30.0-40.0) | 14.0 ms (10.0-20.0) (supervisord) "
                                      "| 2.50x |")


def test_targets_on_the_ratio_or_on_the_median_say_pass_or_fail() -> None:
    assert common.rounds_row("a", [3, 2, 4], "ms", [2, 2, 2], "floor", max_ratio=1.5).verdict == "pass"
    failed = common.rounds_row("a", [3, 4, 4], "ms", [2, 2, 2], "floor", max_ratio=1.5)
    assert failed.verdict == "FAIL" and common.table_line(failed).endswith("| 2.00x; target <= 1.5x: FAIL |")
    assert common.rounds_row("p99", [60, 40, 45], "ms", at_most=50).verdict == "pass"
    assert common.rounds_row("p99", [60, 55, 45], "ms", at_most=50).verdict == "FAIL"


def test_one_round_has_no_spread_and_no_floor_leaves_the_column_empty() -> None:
    assert common.table_line(common.rounds_row("memory", [19.0], "KiB")) == "| memory | 19.0 KiB |  |  |"


def test_the_summary_keeps_rows_with_a_floor_or_target_from_every_saved_script(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(summary, "RESULTS_DIR", tmp_path)
    section = common.Section("B5. Many modules (3 rounds)")
    section.add(common.rounds_row("start 50", [1.0, 2.0, 3.0], "s", [2.0, 2.0, 4.0], "circus"))
    section.add(common.rounds_row("reference: status", [7.0, 8.0, 9.0], "ms"))
    common.save_sections("run", [section], quick=False)
    common.save_sections("push", [common.Section("Push latency: x", [
        common.rounds_row("p99", [40.0, 45.0, 60.0], "ms", at_most=50.0)])], quick=False)
    lines = summary.summary_lines(summary.load())
    assert lines[2:] == ["| B5. Many modules: start 50 | 2.00 s (1.00-3.00) | 2.00 s (2.00-4.00) (circus) | 1.00x |",
                         "| Push latency: p99 | 45.0 ms (40.0-60.0) |  | target <= 50.0 ms: pass |"]
    out = tmp_path / "results.md"
    assert summary.main(["--out", str(out), "--seconds", "60"]) == 0
    text = out.read_text()
    assert "Full run" in text and "1.0 min in all" in text and "reference: status" in text
    assert json.loads((tmp_path / "run.json").read_text())["sections"][0]["rows"][0]["rounds"] == [1.0, 2.0, 3.0]


def test_a_failed_check_reaches_the_summary_and_its_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A check has no floor and no target (the soak's correctness checks): passing, it stays in its
    section; failing, it is in the summary and counted with the targets missed."""
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(summary, "RESULTS_DIR", tmp_path)
    checks = common.Section("Soak: checks")
    checks.add(common.Row("no unexpected errors", None, "", compare="0 unexpected", verdict="pass"))
    checks.add(common.Row("round 1: queue = staying modules added and not removed", None, "",
                          compare="phantom 6, lost 3", verdict="FAIL"))
    checks.add(common.Row("no uid in any listing that no client added", None, "", verdict="FAIL"))  # no detail
    common.save_sections("soak", [checks], quick=False)
    common.save_sections("push", [common.Section("Push latency: x", [
        common.rounds_row("p99", [60.0, 65.0, 70.0], "ms", at_most=50.0)])], quick=False)
    lines = summary.summary_lines(summary.load())
    assert lines[2:] == ["| Push latency: p99 | 65.0 ms (60.0-70.0) |  | target <= 50.0 ms: FAIL |",
                         "| Soak: round 1: queue = staying modules added and not removed | n/a |  | "
                         "phantom 6, lost 3: FAIL |",
                         "| Soak: no uid in any listing that no client added | n/a |  | FAIL |"]
    out = tmp_path / "results.md"
    assert summary.main(["--out", str(out)]) == 0
    text = out.read_text()
    assert "3 target(s) missed or check(s) failed." in text
    assert "| no unexpected errors | n/a |  | 0 unexpected: pass |" in text  # (in its section)


def test_a_row_against_several_floors_lists_each_with_its_spread_and_ratio_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The push rows have three anchors: each floor's median (min-max) and label, the ratios in the
    same order ("-" where a floor has no figure), the target last; the summary keeps them."""
    row = common.anchored_row("p99", [40.0, 30.0, 60.0], "ms",
                              [("websockets", [20.0, 10.0, 30.0]), ("fan-out", [4.0, 5.0, 6.0]), ("nchan", [])],
                              at_most=50.0)
    assert row.value == 40.0 and row.floor == 20.0 and row.floor_label == "websockets" and row.verdict == "pass"
    assert [a.get("ratio") for a in row.anchors] == [2.0, 8.0, None]
    line = ("| p99 | 40.0 ms (30.0-60.0) | 20.0 ms (10.0-30.0) (websockets); 5.00 ms (4.00-6.00) (fan-out); "
            "n/a (nchan) | 2.00x / 8.00x / -; target <= 50.0 ms: pass |")
    assert common.table_line(row) == line
    assert common.anchored_row("m", [3.0], "KiB", [("a", [2.0])], at_most=1.0).compare == "1.50x; target <= 1.00 KiB"
    worst = common.anchored_row("hog p99", [40.0, 45.0, 55.0], "ms", [("a", [1.0, 1.0, 1.0])], each_at_most=50.0)
    assert worst.verdict == "FAIL" and worst.compare == "45.00x; target <= 50.0 ms in every round"
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(summary, "RESULTS_DIR", tmp_path)
    common.save_sections("push", [common.Section("Push to 10000 watchers: x", [row])], quick=False)
    assert summary.summary_lines(summary.load())[2:] == [line.replace("| p99 |", "| Push to 10000 watchers: p99 |")]
