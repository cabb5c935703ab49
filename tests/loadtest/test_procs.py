"""The load runner's CPU accounting: a process tree's CPU seconds, read from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest.procs import process_tree_cpu_s
from loadtest.runner import cpu_use

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\nprint('burnt', flush=True)\ntime.sleep(60)"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_tree_cpu_counts_living_descendants() -> None:
    # A child that burns 0.4 s of CPU, then a grandchild that does the same: both count.
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys\n"
                               f"subprocess.Popen([sys.executable, '-c', {BURN!r}])\n{BURN}"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "burnt\n"
        deadline = time.monotonic() + 30
        used = process_tree_cpu_s(parent.pid)
        while used is not None and used < 0.75 and time.monotonic() < deadline:  # the grandchild still burning
            time.sleep(0.05)
            used = process_tree_cpu_s(parent.pid)
        assert used is not None and 0.75 <= used < 5, used
        assert process_tree_cpu_s(os.getpid()) >= used  # this test process is their ancestor
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the grandchild too: it is in the parent's session
        parent.wait()


def test_tree_cpu_of_a_missing_process_is_none() -> None:
    assert process_tree_cpu_s(2**22 + 7) is None  # above Linux's pid_max


def test_cpu_use_per_request_and_cores() -> None:
    assert cpu_use(1.5, 0.3, ok=1000, elapsed_s=3.0) == {
        "service_us_per_request": 1500.0, "service_cores": 0.5, "redis_us_per_request": 300.0, "redis_cores": 0.1,
    }  # fmt: skip
    assert cpu_use(None, 0.3, ok=1000, elapsed_s=3.0) == {"redis_us_per_request": 300.0, "redis_cores": 0.1}
    assert cpu_use(1.5, 0.3, ok=0, elapsed_s=3.0) == {}  # nothing answered: no per-request figure
