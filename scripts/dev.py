#!/usr/bin/env python3
"""Set up and run the project with nothing but Python 3.

    python3 scripts/dev.py demo    install into .venv and run the example jukebox
    python3 scripts/dev.py test    install into .venv (and Chromium), run the linters, then every test
    python3 scripts/dev.py test tests/test_x.py   only those tests (no linters)
    python3 scripts/dev.py lint    install into .venv and run ruff (shmooze/, pymodule/, tests/, bench/)
                                   and mypy (shmooze/)
    python3 scripts/dev.py bench   install into .venv and run the benchmarks
    python3 scripts/dev.py docs    install into .venv and build the documentation site (mkdocs.yml, docs/)
                                   into site/, failing on any warning (a broken link, a page left out)

Only the standard library is used here: it runs before anything is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("SHMOOZE_VENV", ROOT / ".venv"))
BIN = VENV / "bin"


#: Every benchmark (a module of the bench package, run as `python -m bench.NAME` from the root), in the
#: order `dev.py bench` runs them (each prints its tables and saves them in bench/results/; --quick
#: shortens all); bench.summary then joins them into bench/results.md.
BENCHMARKS = ["run", "push_bench", "cmdlog_bench", "journal_bench", "servicekey_bench", "who_bench", "users_bench", "containment_bench", "soak",
              "attack_bench", "failover_bench"]


def say(text: str) -> None:
    sys.stderr.write(f"[dev] {text}\n")
    sys.stderr.flush()


def run(*argv: str | os.PathLike[str], **kw) -> None:
    subprocess.run([str(a) for a in argv], check=True, **kw)


def ensure_venv(extras: str) -> None:
    if not (BIN / "python").exists():
        say(f"creating {VENV} (a virtualenv with its own pip: some seconds)")
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except Exception as exc:  # e.g. Debian without python3-venv
            sys.exit(f"[dev] cannot create a virtualenv ({exc}); install the python3-venv package")
    # A "strict" editable install is a tree of links on a plain path entry: no import hook runs
    # at every interpreter start (it cost each module process ~8 ms). The tree lists files, so
    # a new file in the package means installing again: the stamp records the file list.
    stamp = VENV / f".installed-{extras or 'base'}"
    state = "\n".join([(ROOT / "pyproject.toml").read_text(), *sorted(
        str(p.relative_to(ROOT)) for folder in ("shmooze", "pymodule") for p in (ROOT / folder).rglob("*")
        # What installing writes into the tree (the egg-info) is no reason to install again.
        if "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts))])
    if stamp.exists() and stamp.read_text() == state:
        return
    say("installing shmooze and its dependencies (a minute the first time; pip's progress follows)")
    started = time.monotonic()
    # Not --quiet: pip's own lines (Collecting, Downloading with a progress bar, Installing) show that it
    # moves; the first install would otherwise print nothing for half a minute.
    run(BIN / "python", "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "on",
        "--config-settings", "editable_mode=strict", "-e", f"{ROOT}[{extras}]" if extras else str(ROOT),
        env={**os.environ, "PYTHONUNBUFFERED": "1"})  # each line as it comes, into a log or a pipe too
    stamp.write_text(state)
    say(f"installed in {time.monotonic() - started:.0f} s")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> None:
    """Browser tests need Debian's Chromium; install it when we can (root with apt-get)."""
    if chromium() or os.environ.get("SHMOOZE_NO_BROWSER"):
        return
    ensure_debian_package("chromium", "Chromium", "browser tests")


def ensure_haproxy() -> None:
    """The simulated-hosts test (tests/test_netns.py) puts Debian's HAProxy before two gateways."""
    if shutil.which("haproxy") or os.environ.get("SHMOOZE_NO_HAPROXY"):
        return
    ensure_debian_package("haproxy", "HAProxy", "load-balancer tests")


def ensure_etcd() -> None:
    """The failover tests run a cluster of three etcd members (Debian's etcd-server)."""
    if shutil.which("etcd") or os.environ.get("SHMOOZE_NO_ETCD"):
        return
    ensure_debian_package("etcd-server", "etcd", "failover tests")


def ensure_node() -> None:
    """tests/test_docs.py runs a Node.js module written from docs/module-protocol.md alone."""
    if shutil.which("node") or os.environ.get("SHMOOZE_NO_NODE"):
        return
    ensure_debian_package("nodejs", "Node.js", "Node.js module test")


def ensure_nchan() -> None:
    """The push benchmark's third anchor is nchan in nginx (Debian's nginx and libnginx-mod-nchan): the
    benchmark runs its own nginx (its own config, a loopback port, stopped by its pid) and leaves the
    anchor out when they are missing. (Where an init system runs, Debian's package also starts its own
    nginx service on port 80: stop it, or install the two packages yourself, if that is unwanted.)"""
    if (os.path.exists("/usr/sbin/nginx") and os.path.exists("/usr/lib/nginx/modules/ngx_nchan_module.so")) \
            or os.environ.get("SHMOOZE_NO_NCHAN"):
        return
    ensure_debian_package("nginx libnginx-mod-nchan", "nginx with nchan", "push benchmark's nchan rows")


def ensure_debian_package(package: str, what: str, tests: str) -> None:
    """Install a Debian package (or several, separated by spaces) the tests need, when we can (root with
    apt-get). In CI (``$CI`` set) a component that cannot be installed fails the run: CI never goes green
    without those tests."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        missing(f"{what} is not installed and cannot be installed here", tests)
        return
    say(f"installing {what} from Debian's packages for the {tests}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run("apt-get", "update", "-qq", env=env, stdout=subprocess.DEVNULL)
        run("apt-get", "install", "-y", "-qq", *package.split(), env=env, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        missing(f"could not install {what} ({exc})", tests)


def missing(why: str, tests: str) -> None:
    if os.environ.get("CI"):
        sys.exit(f"[dev] {why}: the {tests} cannot run, and CI does not skip them")
    say(f"{why}; {tests} will be skipped")


#: What ruff checks, one folder at a time so that the report says where the problems are.
LINTED = ["shmooze", "pymodule", "tests", "bench"]


def lint() -> int:
    """ruff on every folder of :data:`LINTED`, then mypy on the framework (their settings are in
    pyproject.toml); 0 when all are clean."""
    caches = {**os.environ, "RUFF_CACHE_DIR": str(VENV / "ruff-cache")}
    checks = {f"ruff {folder}/": [BIN / "ruff", "check", folder] for folder in LINTED}
    checks["mypy shmooze/"] = [BIN / "python", "-m", "mypy", "--cache-dir", VENV / "mypy-cache"]
    failed = []
    for name, argv in checks.items():
        say(f"{name}: checking")
        if subprocess.call([str(a) for a in argv], env=caches) != 0:
            failed.append(name)
    if failed:
        say(f"lint found problems in: {', '.join(failed)} (see above)")
        return 1
    return 0


def docs(*extra: str) -> int:
    """Build the documentation site with ``mkdocs build --strict``: every warning (a broken link or
    anchor, a page missing from the nav) fails it; 0 when it built."""
    say("mkdocs build --strict: building the documentation into site/")
    # (Not --quiet: mkdocs then drops the warnings before --strict counts them, and passes.)
    return subprocess.call([str(BIN / "python"), "-m", "mkdocs", "build", "--strict", "--site-dir",
                            str(ROOT / "site"), *extra])


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "help"
    rest = argv[1:]
    os.chdir(ROOT)
    if what == "demo":
        ensure_venv("")
        settings = rest[0] if rest else str(ROOT / "examples" / "settings.json")
        os.execv(str(BIN / "shmooze"), [str(BIN / "shmooze"), "run", settings])
    if what == "lint":
        ensure_venv("test")
        return lint()
    if what == "docs":
        ensure_venv("docs")
        return docs(*rest)
    if what == "test":
        ensure_venv("test,docs")
        # The whole run (CI's) fails on lint problems or a documentation that does not build, before any test.
        if not rest and (lint() != 0 or docs() != 0):
            return 1
        ensure_chromium()
        ensure_haproxy()
        ensure_etcd()
        ensure_node()
        env = dict(os.environ)
        if env.get("CI") and not rest:
            env.setdefault("SHMOOZE_SLOW_TESTS", "1")  # CI's whole run includes the slow proofs (the 120 s keep-alive)
        return subprocess.call([str(BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *rest], env=env)
    if what == "bench":
        ensure_venv("bench")  # circus, websockets and py-spy besides the test extras
        ensure_chromium()  # the idle-page row of the push benchmark loads the demo page
        ensure_nchan()  # the push benchmark's nchan anchor
        results = ROOT / "bench" / "results"
        shutil.rmtree(results, ignore_errors=True)  # the summary is of this run only
        started = time.monotonic()
        status = 0
        for name in BENCHMARKS:
            say(f"python -m bench.{name} {' '.join(rest)}")
            status |= subprocess.call([str(BIN / "python"), "-m", f"bench.{name}", *rest])
        seconds = time.monotonic() - started
        status |= subprocess.call([str(BIN / "python"), "-m", "bench.summary", "--seconds", f"{seconds:.0f}"])
        say(f"benchmarks done in {seconds / 60:.1f} min")
        return status
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
