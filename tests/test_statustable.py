"""The ``shmooze status`` table, from a report like :func:`shmooze.deploy.runner.status` gathers."""

from shmooze.cli.statustable import format_status


def test_services_modules_restarts_ended_and_containment():
    report = {"services": {
        "queue": {"state": "RUNNING", "pid": 30, "uptime": 3725, "answering": True, "status": {"pid": 33,
            "modules": [{"uid": "q-1", "type": "text", "state": "running", "pid": 31, "uptime": 5,
                         "cpu_seconds": 1.25, "cpu_percent": 12.0, "rss_bytes": 3 << 20, "restarts": 1}],
            "restarting": [{"uid": "q-2", "type": "clock", "next_try": 1.5, "last_end": "exited", "restarts": 2}],
            "ended": [{"uid": "q-0", "type": "text", "pid": 29, "ended_by": "sigterm", "reason": "rm"}],
            "containment": {"kind": "process-group", "why": "no cgroup v2"}}},
        "wsgi": {"state": "RUNNING", "pid": 40, "answering": False},
        "pool": {"state": "FATAL", "pid": None, "answering": False},
    }}
    lines = format_status(report).splitlines()
    assert lines[0].split() == ["SERVICE", "STATE", "WORKER", "PID", "MASTER", "PID", "UPTIME", "MODULES"]
    assert lines[1].split() == ["queue", "RUNNING", "33", "30", "1:02:05", "1"]  # the worker's pid, as the dashboard's
    assert lines[2].split() == ["wsgi", "NOT", "ANSWERING", "-", "40", "-", "-"]  # running but silent
    assert lines[3].split() == ["pool", "FATAL", "-", "-", "-", "-"]
    modules = [line.split() for line in lines if line.startswith("  queue/")]
    assert modules[0] == ["queue/q-1", "text", "running", "31", "0:00:05", "1.2s", "12%", "3.0M", "1"]
    assert modules[1][:6] == ["queue/q-2", "clock", "restart", "in", "1.5", "s"] and modules[1][-1] == "2"
    assert modules[2] == ["queue/q-0", "text", "ended", "29", "sigterm", "(rm)"]
    assert lines[-1] == ("queue: containment: process group + environment sweep (no cgroup v2); "
                         "limits: rlimits (no cgroup controller)")


def test_no_module_table_without_modules():
    text = format_status({"services": {"volume": {"state": "STOPPED", "pid": None, "answering": False}}})
    assert text.splitlines()[1].split() == ["volume", "STOPPED", "-", "-", "-", "-"] and "UPTIME / ENDED BY" not in text


def test_services_on_other_hosts_show_their_address_or_down():
    report = {"services": {
        "queue": {"state": "REMOTE", "pid": None, "host": "10.0.0.2", "answering": True, "status": {}},
        "pool": {"state": "REMOTE", "pid": None, "host": "10.0.0.3", "answering": False},
    }}
    rows = {line.split()[0]: line.split()[1:] for line in format_status(report).splitlines()[1:] if line.strip()}
    assert rows["queue"][:2] == ["REMOTE", "(10.0.0.2)"]
    assert rows["pool"][:2] == ["DOWN", "(10.0.0.3)"]


def test_a_service_with_candidates_shows_its_role_and_its_leader():
    leader = {"url": "http://10.0.0.21:8081", "host": "a", "pid": 7, "since": 0}
    report = {"services": {
        "queue": {"state": "RUNNING", "pid": 30, "answering": True, "status": {
            "pid": 33, "role": "STANDBY", "leader": leader, "quorum": False, "etcd_problem": "etcd cannot commit",
            "held": [{"uid": "q-1", "reason": "type 'speaker' is bound to the host 10.0.0.21"}]}},
    }}
    text = format_status(report)
    assert text.splitlines()[1].split()[:3] == ["queue", "RUNNING", "STANDBY"]
    assert ("queue: STANDBY: leader http://10.0.0.21:8081 on a (pid 7); NO QUORUM: etcd cannot commit (changes "
            "refused, reads answered); 1 module(s) kept stopped here: q-1 (type 'speaker' is bound to the host "
            "10.0.0.21)") in text
