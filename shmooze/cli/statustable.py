"""The table ``shmooze status`` prints: services, their modules and their containment.

It formats a report of :func:`shmooze.deploy.runner.status` (which gathers it) and does nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_status(report: dict[str, Any]) -> str:
    """The report as text: a table of services, one of modules, each service's problem, then each host's
    containment."""
    # The worker's pid first (it runs the service and its modules; the dashboard shows it), then the master's.
    rows = [("SERVICE", "STATE", "WORKER PID", "MASTER PID", "UPTIME", "MODULES")]
    module_rows = [("  MODULE", "TYPE", "STATE", "PID", "UPTIME / ENDED BY", "CPU", "CPU%", "MEMORY", "RESTARTS")]
    for name, entry in report["services"].items():
        st = entry.get("status") or {}
        modules = st.get("modules", [])
        state = entry["state"] if entry.get("answering") or entry["state"] not in ("RUNNING", "REMOTE") else \
            "NOT ANSWERING" if entry["state"] == "RUNNING" else "DOWN"
        if st.get("role"):  # with etcd: the elected leader among the service's candidates, or a standby
            state += f" {st['role']}"
        if st.get("problem"):
            state += " (PROBLEM)"
        if entry["state"] == "REMOTE":
            state += f" ({entry['host'] or 'no leader'})"
        rows.append((name, state, str(st.get("pid") or "-"), str(entry["pid"] or "-"), _duration(entry.get("uptime")),
                     str(len(modules)) if "modules" in st else "-"))
        for m in modules:
            module_rows.append((f"  {name}/{m['uid']}", m["type"], m["state"], str(m.get("pid") or "-"),
                                _duration(m.get("uptime")), *_figures(m)))
        for m in st.get("restarting", []) + st.get("given_up", []):
            state = "given up" if m.get("given_up") else f"restart in {m.get('next_try', 0):.1f} s"
            module_rows.append((f"  {name}/{m['uid']}", m["type"], state, "-", str(m.get("last_end") or "-"),
                                "-", "-", "-", str(m.get("restarts", 0))))
        for m in st.get("ended", [])[-5:]:
            module_rows.append((f"  {name}/{m['uid']}", m["type"], "ended", str(m.get("pid") or "-"),
                                str(m.get("ended_by")) + (f" ({m['reason']})" if m.get("reason") else ""),
                                "", "", "", ""))
    return _table(rows) + ("\n\n" + _table(module_rows) if len(module_rows) > 1 else "") + _problem_lines(report) \
        + _containment_lines(report)


def _problem_lines(report: dict[str, Any]) -> str:
    """What keeps a service from working as it should (its status ``problem``: a full disk)."""
    lines = [f"{name}: PROBLEM: {problem}" for name, entry in report["services"].items()
             if (problem := (entry.get("status") or {}).get("problem"))]
    lines += [f"{name}: {_role_line(st)}" for name, entry in report["services"].items()
              if (st := entry.get("status") or {}).get("role")]
    return "\n\n" + "\n".join(lines) if lines else ""


def _role_line(st: dict[str, Any]) -> str:
    """Where the leader is, and what keeps the service from changing state (no quorum, fenced)."""
    leader = st.get("leader") or {}
    where = f"{leader.get('url')} on {leader.get('host')} (pid {leader.get('pid')})" if leader else "none elected"
    line = f"{st['role']}: leader {where}"
    if st.get("fenced"):
        line += f"; fenced: {st['fenced']}"
    elif not st.get("quorum", True):
        line += f"; NO QUORUM: {st.get('etcd_problem')} (changes refused, reads answered)"
    held = st.get("held") or []
    if held:
        line += f"; {len(held)} module(s) kept stopped here: " + "; ".join(f"{m['uid']} ({m['reason']})" for m in held)
    return line


def _containment_lines(report: dict[str, Any]) -> str:
    """Which containment each module host uses (see shmooze.system.containment)."""
    lines = []
    for name, entry in report["services"].items():
        info = (entry.get("status") or {}).get("containment")
        if info:
            how = f"a cgroup v2 per module ({info['path']})" if info["kind"] == "cgroup" else \
                f"process group + environment sweep ({info.get('why') or 'no cgroup v2'})"
            lines.append(f"{name}: containment: {how}; limits: {limits_in_words(info.get('limits') or {})}")
    return "\n\n" + "\n".join(lines) if lines else ""


def limits_in_words(places: dict[str, str]) -> str:
    """Where a host's module limits go (status ``containment.limits``): "memory, pids, cpu in cgroup v1"."""
    by_kind: dict[str, list[str]] = {}
    for ctl, kind in places.items():
        if ctl != "why":
            by_kind.setdefault(kind, []).append(ctl)
    held = "; ".join(f"{', '.join(ctls)} in {kind}" for kind, ctls in sorted(by_kind.items()))
    return (held + ", others as rlimits") if held else f"rlimits ({places.get('why') or 'no cgroup controller'})"


def _figures(m: dict[str, Any]) -> tuple[str, str, str, str]:
    """CPU time, CPU %, resident memory and restarts of a module's status entry."""
    cpu = f"{m['cpu_seconds']:.1f}s" if isinstance(m.get("cpu_seconds"), (int, float)) else "-"
    pct = f"{m['cpu_percent']:.0f}%" if isinstance(m.get("cpu_percent"), (int, float)) else "-"
    rss = f"{m['rss_bytes'] / (1 << 20):.1f}M" if isinstance(m.get("rss_bytes"), int) else "-"
    restarts = str(m.get("restarts", 0)) + (" (given up)" if m.get("given_up") else "")
    return cpu, pct, rss, restarts


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
