"""A Python module in a cgroup box starts its interpreter where the service is and waits at a gate until
the service has moved it into its cgroup (shmooze.system.containment.GATED_PYTHON): its first line runs
inside, and never when the move failed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from shmooze.system import cgroup
from shmooze.system.containment import Containment

pytestmark = pytest.mark.skipif(cgroup.usable_parent()[0] is None, reason="no usable cgroup v2 here")

#: The module's first line writes where it runs (its cgroup, argv, __name__, sys.path[0]) to the file in argv[1].
FIRST_LINE = textwrap.dedent("""\
    import json, os, sys
    with open(sys.argv[1], "w") as f:
        json.dump({"cgroup": open("/proc/self/cgroup").read(), "argv": sys.argv, "name": __name__,
                   "path0": sys.path[0], "file": __file__}, f)
    """)


@pytest.fixture
def containment():
    made = Containment(f"{os.getpid()}-gated-test", "cgroup")
    yield made
    made.close()


def _run(box, argv: list[str]) -> subprocess.CompletedProcess:
    proc = box.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_a_python_module_runs_its_first_line_inside_its_cgroup_as_python_file_runs_it(containment, tmp_path):
    import json

    script = tmp_path / "first.py"
    script.write_text(FIRST_LINE)
    seen = tmp_path / "seen.json"
    box = containment.box("gated")
    done = _run(box, [sys.executable, str(script), str(seen), "more"])
    assert done.returncode == 0, done.stderr
    facts = json.loads(seen.read_text())
    inside = "0::/" + str(box.path.relative_to(cgroup.mount_point()))
    assert inside in facts["cgroup"].splitlines(), facts["cgroup"]
    # As `python FILE ARGS` runs it: its argv, __name__, __file__ and its folder first on sys.path.
    assert facts["argv"] == [str(script), str(seen), "more"]
    assert facts["name"] == "__main__" and facts["file"] == str(script)
    assert facts["path0"] == str(tmp_path.resolve())
    box.release()


def test_when_the_move_fails_the_module_never_runs(containment, tmp_path):
    script = tmp_path / "first.py"
    script.write_text(FIRST_LINE)
    seen = tmp_path / "seen.json"
    box = containment.box("gone")
    box.release()  # its folder removed: the move into it fails
    with pytest.raises(FileNotFoundError):
        _run(box, [sys.executable, str(script), str(seen)])
    assert not seen.exists()


def test_a_missing_file_fails_as_python_says_it(containment, tmp_path):
    box = containment.box("missing")
    done = _run(box, [sys.executable, str(tmp_path / "nowhere.py")])
    assert done.returncode == 2
    assert b"can't open file" in done.stderr and b"No such file or directory" in done.stderr, done.stderr
    box.release()
