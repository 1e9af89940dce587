"""Every example runs, so that none rots."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def test_quickstart_loses_no_job(tmp_path):
    result = run_example("quickstart.py", str(tmp_path / "jobs.db"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "restart:  5 jobs still there" in out
    for i in range(1, 6):
        assert "done resize photo %d" % i in out
    assert "done resize photo 1 (attempt 2: its first worker died)" in out
    assert out.rstrip().endswith("all jobs done, none lost")
