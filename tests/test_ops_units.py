"""Pure pieces of operations, without processes: telling a limit from an end, CPU % intervals, output numbering."""

import signal

import pytest

from shmooze import serve
from shmooze.errors import SettingsError
from shmooze.hosting.output import ModuleOutput
from shmooze.moduletype import ModuleType, parse_bytes, with_settings
from shmooze.queue import Queue
from shmooze.settings import Settings
from shmooze.system.containment import Box, LimitPlaces
from shmooze.system.limits import Limits, cgroup_hits, cgroup_limits, ended_by_limit
from shmooze.system.usage import Figures, Meter, cgroup_figures


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


def test_ended_by_limit_reads_what_the_cgroup_counted():
    limits = Limits(memory=100 << 20, processes=10, files=64)
    held = {"memory": "cgroup v1", "processes": "cgroup v1"}
    # A silent death: SIGKILL and no output, but the cgroup counted an OOM kill.
    rung, why = ended_by_limit(limits, -signal.SIGKILL, [], hits={"memory": 1, "processes": 0}, held=held)
    assert rung == "limit:memory" and "cgroup v1" in why and str(100 << 20) in why
    assert ended_by_limit(limits, 1, ["fork failed"], hits={"memory": 0, "processes": 3}, held=held)[0] == \
        "limit:processes"
    # Held by a cgroup that counted nothing: the last words of an rlimit do not count for it.
    assert ended_by_limit(limits, 1, ["MemoryError"], hits={"memory": 0, "processes": 0}, held=held) is None
    assert ended_by_limit(limits, -signal.SIGKILL, [], hits={"memory": 0}, held=held) is None
    # Old kernels (no oom_kill count): the limit reached and a SIGKILL.
    assert ended_by_limit(limits, -signal.SIGKILL, [], hits={"memory_reached": 4}, held=held)[0] == "limit:memory"
    assert ended_by_limit(limits, 1, [], hits={"memory_reached": 4}, held=held) is None
    # Removed or clean: never a limit.
    assert ended_by_limit(limits, 0, [], hits={"memory": 1}, held=held) is None


def test_limits_become_prlimit_options_and_cgroup_values():
    limits = Limits(memory=1 << 30, cpu=1.6, files=64)
    argv = limits.wrap(["python3", "m.py"])
    if argv[0].endswith("prlimit"):
        assert argv[1:] == [f"--as={1 << 30}:{1 << 30}", "--cpu=2:3", "--nofile=64:64", "--", "python3", "m.py"]
    assert Limits().wrap(["x"]) == ["x"]
    assert Limits(cpu_rate=0.5).wrap(["x"]) == ["x"]  # (no rlimit for a rate)
    assert Limits(cpu_rate=0.5, files=3).held_by({}) == {"files": "rlimit", "cpu_rate": "not enforced"}
    assert Limits(cpu_rate=0.5).held_by({"cpu_rate": "cgroup v1"}) == {"cpu_rate": "cgroup v1"}
    both = Limits(memory=5, processes=7, cpu_rate=0.5, cpu=3, files=9)
    assert cgroup_limits(both) == {"memory": [("memory.max", "5"), ("memory.swap.max", "0")],
                                   "pids": [("pids.max", "7")], "cpu": [("cpu.max", "50000 100000")]}
    assert cgroup_limits(both, version=1, swap=False) == {
        "memory": [("memory.limit_in_bytes", "5")], "pids": [("pids.max", "7")],
        "cpu": [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000")]}
    assert cgroup_limits(Limits(memory=5), version=1)["memory"][1] == ("memory.memsw.limit_in_bytes", "5")
    assert cgroup_limits(Limits(cpu=3, files=9)) == {}  # CPU time and files: rlimits only
    assert both.without({"memory": "x", "processes": "y"}) == Limits(cpu=3, files=9, cpu_rate=0.5)


def test_limits_written_into_a_cgroup_v2_folder_and_read_back(tmp_path):
    """The v2 path (not on every test machine): a fake module folder takes memory.max, pids.max, cpu.max;
    its counters and figures are read back."""
    places = LimitPlaces("1-x", None, "rlimit")  # (nothing made) then told v2 holds the controllers
    places.v2 = {"memory", "pids", "cpu"}
    (tmp_path / "memory.swap.max").write_text("max\n")
    box = Box("u1", None)
    places.furnish(box, tmp_path, Limits(memory=64 << 20, processes=20, cpu_rate=1.5, files=10))
    assert (tmp_path / "memory.max").read_text() == str(64 << 20)
    assert (tmp_path / "memory.swap.max").read_text() == "0"
    assert (tmp_path / "pids.max").read_text() == "20" and (tmp_path / "cpu.max").read_text() == "150000 100000"
    assert box.held == {"memory": "cgroup v2", "processes": "cgroup v2", "cpu_rate": "cgroup v2"}
    assert box.v1_folders == [] and box.rlimits(Limits(memory=1, files=10)) == Limits(files=10)
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    (tmp_path / "pids.events").write_text("max 0\n")
    assert cgroup_hits(box.controllers) == {"memory": 1, "processes": 0}
    (tmp_path / "memory.current").write_text("5000000\n")
    (tmp_path / "pids.current").write_text("3\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    assert cgroup_figures(box.controllers, tmp_path / "cpu.stat", 1) == Figures(2.5, 5000000, 3)
    assert cgroup_figures({}, tmp_path / "cpu.stat", 1) is None  # no memory accounting: /proc instead


def test_module_types_take_restart_policies_and_limits_from_settings():
    t = ModuleType("video", ("true",))
    got = with_settings(t, {"restart": "on-failure", "restart_delay": 0, "restart_max_starts": 3,
                            "limit_memory": "512M", "limit_cpu_rate": 0.5, "limit_processes": 64})
    assert (got.restart, got.restart_delay, got.restart_max_starts) == ("on-failure", 0.0, 3)
    assert (got.limit_memory, got.limit_cpu_rate, got.limit_processes) == (512 << 20, 0.5, 64)
    assert parse_bytes("1.5G") == 3 << 29 and parse_bytes("64KiB") == 65536 and parse_bytes(1000) == 1000
    for bad, says in (({"limit_memory": "lots"}, "not a size"), ({"restart": "sometimes"}, "restart must be"),
                      ({"colour": 1}, r"unknown setting\(s\) colour"), ({"limit_files": 1.5}, "whole number"),
                      ({"limit_cpu": -1}, "positive"), ({"restart_delay": 5, "restart_max_delay": 1}, "delays"),
                      ("fast", "object")):
        with pytest.raises(ValueError, match=says):
            with_settings(t, bad)


def test_settings_module_types_reach_the_services_types(tmp_path):
    class Host:  # what serve sees of a queue: its type tables
        def __init__(self):
            self.types = {"video": ModuleType("video", ("true",)), "other": ModuleType("other", ("true",))}
            self.backgrounds = {"video": ModuleType("video", ("true",))}

        type_tables = Queue.type_tables  # the real method, over this stand-in's tables

    settings = Settings({"ports": {"wsgi": 1}, "module_types": {"video": {"limit_memory": "1G", "restart": "always"},
                                          "elsewhere": {"limit_files": 5}}}, str(tmp_path / "s.json"))
    host = Host()
    # Inside: the settings' module type options applied to a host, alone.
    serve._configure_module_types(settings, host)  # noqa: SLF001
    assert host.types["video"].limit_memory == 1 << 30 and host.backgrounds["video"].restart == "always"
    assert host.types["other"].limit_memory is None
    # A bad table is refused as the file is read, before any service starts (and so before any type changes).
    with pytest.raises(SettingsError, match=r"/etc/app/settings.json: module_types\['video'\]: limit_memory: not a size"):
        Settings({"ports": {"wsgi": 1}, "module_types": {"video": {"limit_memory": "huge"},
                                                        "other": {"limit_files": 5}}}, "/etc/app/settings.json")


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


def test_where_limits_go_in_words():
    from shmooze.cli.statustable import limits_in_words

    assert limits_in_words({"memory": "cgroup v1", "pids": "cgroup v1", "cpu": "cgroup v1"}) == \
        "memory, pids, cpu in cgroup v1, others as rlimits"
    assert limits_in_words({"why": "rlimits chosen (module_limits)"}) == "rlimits (rlimits chosen (module_limits))"
    assert limits_in_words({}) == "rlimits (no cgroup controller)"
