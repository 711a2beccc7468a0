"""Operating modules, with real module processes: figures in status, output kept per module,
restart policies, resource limits, and the metrics command."""

from __future__ import annotations

import os
import time

import pytest

from shmooze.moduletype import ModuleType
from shmooze.pool import Pool
from shmooze.queue import Queue
from shmooze.system import ladder
from tests.helpers import ROOT, Driver, gone, wait_for

OPSMOD = str(ROOT / "tests" / "modules" / "opsmod.py")


def otype(name: str, **options) -> ModuleType:
    return ModuleType(name, ("python3", OPSMOD), **{"rm_timeout": 0.5, "term_timeout": 0.5, **options})


def module_status(d: Driver, uid: str) -> dict:
    return next((m for m in d.ok("status")["modules"] if m["uid"] == uid), None)


def test_status_shows_cpu_memory_and_restarts(make_host):
    d = make_host(Pool, [otype("ops")])
    idle = d.add("ops")
    busy = d.add("ops", spin=30)
    first = module_status(d, busy)
    assert first["rss_bytes"] > 1 << 20 and first["processes"] == 1 and first["restarts"] == 0
    # The busy module burns one core: its CPU % over an interval nears 100 (the machine is shared, so
    # the bound is generous), the idle one stays near 0, and CPU time grows.
    wait_for(lambda: (module_status(d, busy)["cpu_percent"] or 0) > 40, 15, interval=0.6, what="busy CPU %")
    # (Its first interval holds the interpreter's start-up.)
    wait_for(lambda: module_status(d, idle)["cpu_percent"] < 20, 15, interval=0.6, what="idle CPU % low")
    assert module_status(d, idle)["cpu_seconds"] < 5
    # (Waited for: the waits above may all pass within one clock tick of the first reading.)
    wait_for(lambda: module_status(d, busy)["cpu_seconds"] > first["cpu_seconds"], 15, interval=0.2,
             what="busy CPU time to grow")
    d.ok("rm", uids=[busy, idle])


def test_output_is_kept_per_module_and_numbered(make_host, tmp_path):
    d = make_host(Pool, [otype("ops")])
    d.svc.ops.output_folder = tmp_path
    d.svc.ops.output_max_bytes = 2000
    d.svc.ops.output_backups = 1
    uid = d.add("ops")
    other = d.add("ops")
    wait_for(lambda: d.ok("output", uid=uid)["lines"], 10, what="the start line")
    first = d.ok("output", uid=uid)
    assert first["lines"][0]["text"].startswith("opsmod") and first["lines"][0]["stream"] == "stdout"
    for i in range(60):
        d.ok("tell_module", uid=uid, cmd="say", args={"text": f"line {i:03d} " + "x" * 40})
    got = wait_for(lambda: (lambda o: o if o["next"] >= 61 else None)(d.ok("output", uid=uid, after=1)), 10,
                   what="60 lines")
    assert [line["text"][:8] for line in got["lines"]] == [f"line {i:03d}" for i in range(60)]
    assert [line["n"] for line in got["lines"]] == list(range(2, 62))
    tail = d.ok("output", uid=uid, after=1, lines=5)
    assert [line["n"] for line in tail["lines"]] == [57, 58, 59, 60, 61] and tail["missed"] == 55
    # The other module's output is its own.
    assert all("line" not in line["text"] for line in d.ok("output", uid=other)["lines"])
    # On disk: capped and rotated (one backup), the newest lines in UID.log.
    current, backup = tmp_path / f"{uid}.log", tmp_path / f"{uid}.log.1"
    assert current.stat().st_size <= 2000 and backup.stat().st_size <= 2000
    assert "line 059" in current.read_text() and not (tmp_path / f"{uid}.log.2").exists()
    # An ended module's output stays readable, stderr lines marked as such.
    d.ok("tell_module", uid=other, cmd="say", args={"text": "last words"})
    d.ok("rm", uids=[other])
    assert any(line["text"] == "last words" for line in d.ok("output", uid=other)["lines"])
    assert "no output kept" in d.err("output", uid="nobody")
    # Output is announced by (coalesced) change events that name the modules.
    wait_for(lambda: any(e["kind"] == "output" and uid in e["lines"] for e in d.ok("changes", since=0)["events"]),
             5, what="an output event")


def test_modules_removed_together_keep_their_last_words(make_host):
    """One rm of several modules: once it is answered, what each printed on its way out (on stdout and
    stderr, after the rm reached it) is in its output, as for a module removed alone, even when the I/O
    thread that reads it is late (busy for a while as the rm begins)."""
    d = make_host(Pool, [otype("ops")])
    uids = [d.add("ops", bye=f"bye {i}") for i in range(6)]
    d.svc.loop.call_soon(lambda: time.sleep(2.0))  # (longer than the ladder waits for it; shorter than a flush)
    d.ok("rm", uids=uids)
    for i, uid in enumerate(uids):
        lines = {(line["text"], line.get("stream")) for line in d.ok("output", uid=uid)["lines"]}
        texts = {text for text, _ in lines}
        assert {f"bye {i} on stdout", f"bye {i} on stderr"} <= texts, lines
        assert d.ended(uid)["ended_by"] == ladder.RM


def test_restart_on_failure_with_backoff_then_gives_up(make_host):
    d = make_host(Pool, [otype("crashy", restart="on-failure", restart_delay=0.2, restart_max_delay=0.3,
                               restart_max_starts=3, restart_window=30)])
    uid = d.add("crashy", exit_after=0.2, exit_code=3)
    pids = {module_status(d, uid)["pid"]}

    def restarted(n):
        m = module_status(d, uid)
        if m and m["restarts"] >= n and m["state"] == "running":
            pids.add(m["pid"])
            return m
        return None

    wait_for(lambda: restarted(1), 10, what="first restart")
    wait_for(lambda: restarted(2), 10, what="second restart")
    # Third start within the window: after it ends, the policy gives up.
    # (One status answer reads its modules before its given-up list: wait for both to agree.)
    status = wait_for(lambda: (lambda s: s if s["given_up"] and not s["modules"] else None)(d.ok("status")), 10,
                      what="given up")
    assert status["given_up"][0]["uid"] == uid and status["given_up"][0]["restarts"] == 2
    assert not status["restarting"], status
    assert len(pids) == 3 and all(gone(p) for p in pids)
    ends = [m for m in status["ended"] if m["uid"] == uid]
    assert len(ends) == 3 and all(m["returncode"] == 3 for m in ends)
    kinds = [e["kind"] for e in d.ok("changes", since=0)["events"]]
    assert kinds.count("restarting") == 2 and "gave_up" in kinds
    # The same uid keeps one output across restarts.
    starts = [line for line in d.ok("output", uid=uid)["lines"] if "started" in line["text"]]
    assert len(starts) == 3


def test_restart_policy_respects_clean_exits_and_rm(make_host):
    d = make_host(Pool, [otype("onfail", restart="on-failure", restart_delay=0.1),
                         otype("always", restart="always", restart_delay=0.1),
                         otype("slow", restart="always", restart_delay=30)])
    clean = d.add("onfail", exit_after=0.1, exit_code=0)
    again = d.add("always", exit_after=0.3, exit_code=0)
    wait_for(lambda: any(m["uid"] == clean for m in d.ok("status")["ended"]), 10, what="clean exit")
    wait_for(lambda: (module_status(d, again) or {}).get("restarts", 0) >= 1, 10, what="always restarts")
    assert module_status(d, clean) is None and not d.ok("status")["restarting"]
    d.ok("rm", uids=[again])  # rm is a removal: no restart after it
    waiting = d.add("slow", exit_after=0.1, exit_code=1)
    entry = wait_for(lambda: d.ok("status")["restarting"], 10, what="a planned restart")[0]
    assert entry["uid"] == waiting and 25 < entry["next_try"] <= 30
    d.ok("rm", uids=[waiting])  # rm of a module waiting to restart cancels it
    status = d.ok("status")
    assert not status["restarting"] and not status["modules"]


def test_background_restarts_but_queue_entries_leave(make_host):
    crash = otype("crash", restart="always", restart_delay=0.1)
    d = make_host(Queue, [crash], backgrounds=[crash])
    entry = d.add("crash", exit_after=0.2)
    bg = d.ok("set_bg", type="crash", args={"exit_after": 0.3})["uid"]
    wait_for(lambda: any(m["uid"] == entry for m in d.ok("status")["ended"]), 10, what="entry ended")
    wait_for(lambda: (module_status(d, bg) or {}).get("restarts", 0) >= 1, 10, what="background restarted")
    assert d.ok("queue") == [] and d.ok("bg")["uid"] == bg
    assert all(m["uid"] != entry for m in d.ok("status")["restarting"])


def test_rlimits_end_modules_with_their_own_rung(make_host):
    """The rlimit fallback (forced here; where cgroups can hold limits, see test_limits.py)."""
    d = make_host(Pool, [otype("mem", limit_memory=300 << 20), otype("cpu", limit_cpu=1),
                         otype("files", limit_files=40), otype("free")], limits_mode="rlimit")
    mem = d.add("mem", alloc_mb=400)
    cpu = d.add("cpu", spin=5)
    files = d.add("files", files=100)
    free = d.add("free", alloc_mb=50)

    def ended(uid):
        return next((m for m in d.ok("status")["ended"] if m["uid"] == uid), None)

    m = wait_for(lambda: ended(mem), 15, what="memory limit")
    assert m["ended_by"] == "limit:memory" and "limit_memory" in m["reason"]
    c = wait_for(lambda: ended(cpu), 20, what="cpu limit")
    assert c["ended_by"] == "limit:cpu" and "1 s of CPU" in c["reason"]
    f = wait_for(lambda: ended(files), 15, what="files limit")
    assert f["ended_by"] == "limit:files"
    live = module_status(d, free)
    assert live is not None and "limits" not in live
    assert module_status(d, mem) is None
    metrics = {fam["name"]: fam for fam in d.ok("metrics")}
    ends = {(s[1]["type"], s[1]["rung"]): s[2] for s in metrics["shmooze_module_ends"]["samples"]
            if s[0].endswith("_total")}
    assert ends[("mem", "limit:memory")] == 1 and ends[("cpu", "limit:cpu")] == 1


def test_rlimits_are_set_on_the_process(make_host):
    d = make_host(Pool, [otype("lim", limit_files=64, limit_memory=1 << 30, limit_processes=50)],
                  limits_mode="rlimit")
    uid = d.add("lim")
    pid = module_status(d, uid)["pid"]
    import resource

    assert resource.prlimit(pid, resource.RLIMIT_NOFILE) == (64, 64)
    assert resource.prlimit(pid, resource.RLIMIT_AS) == (1 << 30, 1 << 30)
    assert resource.prlimit(pid, resource.RLIMIT_NPROC) == (50, 50)
    status = module_status(d, uid)
    assert status["limits"] == {"memory": 1 << 30, "files": 64, "processes": 50}
    assert set(status["limits_held"].values()) == {"rlimit"}
    assert d.svc.containment.places.kinds() == {} and d.ok("status")["containment"]["limits"]["why"]
    assert d.svc.containment.places.v1 == {} and not d.svc.table.live()[0].box.v1_folders


def test_cgroups_hold_memory_and_processes_where_they_can(make_host):
    """Where a cgroup holds memory and processes, no RLIMIT_AS or RLIMIT_NPROC is set (files stay)."""
    d = make_host(Pool, [otype("lim", limit_files=64, limit_memory=1 << 30, limit_processes=50)])
    kinds = d.svc.containment.places.kinds()
    if not {"memory", "pids"} <= set(kinds):
        pytest.skip(f"no writable memory and pids cgroup controllers here ({kinds or 'none'})")
    uid = d.add("lim")
    pid = module_status(d, uid)["pid"]
    import resource

    assert resource.prlimit(pid, resource.RLIMIT_NOFILE) == (64, 64)
    assert resource.prlimit(pid, resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY
    assert module_status(d, uid)["limits_held"] == {"memory": kinds["memory"], "processes": kinds["pids"],
                                                    "files": "rlimit"}


def test_metrics_command_counts_commands_and_modules(make_host):
    d = make_host(Pool, [otype("ops"), otype("other")])
    uid = d.add("ops")
    d.ok("tell_module", uid=uid, cmd="say", args={"text": "x"})
    d.err("nonsense")
    d.ok("rm", uids=[uid])
    d.add("ops")
    fams = {fam["name"]: fam for fam in d.ok("metrics")}
    samples = {(s[0], tuple(sorted(s[1].items()))): s[2] for fam in fams.values() for s in fam["samples"]}

    def value(name, **labels):
        return samples.get((name, tuple(sorted({"service": "pool", **labels}.items()))))

    assert value("shmooze_commands_total", command="add", outcome="ok") == 2
    assert value("shmooze_commands_total", command="(unknown)", outcome="error") == 1
    assert value("shmooze_command_seconds_count", command="tell_module") == 1
    assert value("shmooze_module_starts_total", type="ops", result="ok") == 2
    assert value("shmooze_module_ends_total", type="ops", rung=ladder.RM) == 1
    assert value("shmooze_modules_running", type="ops") == 1
    assert value("shmooze_modules_running", type="other") == 0
    assert value("shmooze_change_events_total") >= 3
    assert os.getpid()  # (the service runs in this process here)
