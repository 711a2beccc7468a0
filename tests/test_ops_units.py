"""Pure pieces of operations, without processes: telling a limit from an end, CPU % intervals, output numbering."""

import signal

from shmooze.limits import Limits, cgroup_limits, ended_by_limit
from shmooze.output import ModuleOutput
from shmooze.usage import Meter


def test_ended_by_limit_reads_signal_and_last_words():
    limits = Limits(memory=100 << 20, cpu=2, files=64, processes=10)
    assert ended_by_limit(limits, -signal.SIGXCPU, [])[0] == "limit:cpu"
    assert ended_by_limit(limits, -signal.SIGKILL, [], cpu_seconds=2.5)[0] == "limit:cpu"
    assert ended_by_limit(limits, -signal.SIGKILL, [], cpu_seconds=0.1) is None  # killed, not by its limit
    assert ended_by_limit(limits, 1, ["Traceback ...", "MemoryError"])[0] == "limit:memory"
    assert ended_by_limit(limits, 1, ["OSError: [Errno 24] Too many open files"])[0] == "limit:files"
    assert ended_by_limit(limits, 1, ["RuntimeError: can't start new thread"])[0] == "limit:processes"
    assert ended_by_limit(limits, 0, ["MemoryError"]) is None  # a clean exit is no limit
    assert ended_by_limit(limits, 1, ["ValueError: nope"]) is None
    assert ended_by_limit(Limits(), 1, ["MemoryError"]) is None  # no limit set: nothing to name


def test_limits_become_prlimit_options_and_cgroup_values():
    limits = Limits(memory=1 << 30, cpu=1.6, files=64)
    argv = limits.wrap(["python3", "m.py"])
    if argv[0].endswith("prlimit"):
        assert argv[1:] == [f"--as={1 << 30}:{1 << 30}", "--cpu=2:3", "--nofile=64:64", "--", "python3", "m.py"]
    assert Limits().wrap(["x"]) == ["x"]
    assert cgroup_limits(Limits(memory=5, processes=7)) == {"memory.max": "5", "pids.max": "7"}


def test_meter_measures_over_an_interval_of_at_least_half_a_second():
    m = Meter(started=0.0)
    assert m.percent(0.5, now=1.0) == 50.0  # since the start
    assert m.percent(0.6, now=1.1) == 54.5  # too soon for a new base: still since the start
    assert m.percent(1.5, now=2.0) == 100.0  # against the sample at 1.0
    assert m.percent(1.5, now=3.0) == 0.0


def test_output_numbers_lines_and_says_what_was_missed(tmp_path):
    out = ModuleOutput("u1", tmp_path, keep_lines=3, max_bytes=60, backups=1)
    for i in range(5):
        out.add("stdout" if i % 2 else "stderr", f"line {i}")
    got = out.since(0)
    assert [line["n"] for line in got["lines"]] == [3, 4, 5] and got["missed"] == 2 and got["next"] == 5
    assert out.since(5)["lines"] == [] and out.since(4)["lines"][0]["text"] == "line 4"
    assert (tmp_path / "u1.log").stat().st_size <= 60 and (tmp_path / "u1.log.1").exists()
    out.remove_files()
    assert not list(tmp_path.iterdir())
