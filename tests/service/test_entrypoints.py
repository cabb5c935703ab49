"""The service starts from the console script and under plain uvicorn, as separate processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sidserve.testing import free_port


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {proc.stdout.read().decode()}")
        try:
            r = httpx.get(url + "/readyz", timeout=1)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("not ready within 30 s")


@pytest.mark.parametrize("how", ["console-script", "uvicorn-app", "uvicorn-factory"])
def test_starts(how: str, sid_bundle: Path, redis_url: str) -> None:
    port = free_port()
    env = {**os.environ, "SIDSERVE_BUNDLE": str(sid_bundle), "SIDSERVE_REDIS_URL": redis_url}
    bin_dir = Path(sys.executable).parent
    command = {
        "console-script": [shutil.which("sidserve", path=str(bin_dir)) or "sidserve", "--port", str(port),
                           "--table-size", "1000", "--log-level", "warning"],
        "uvicorn-app": [sys.executable, "-m", "uvicorn", "sidserve.app:app", "--port", str(port)],
        "uvicorn-factory": [sys.executable, "-m", "uvicorn", "--factory", "sidserve.app:create_app", "--port", str(port)],
    }[how]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        body = _wait_ready(proc, f"http://127.0.0.1:{port}")
        assert body["input_dim"] == 32
        assert body["feature_config"]["table_size"] == (1000 if how == "console-script" else 1_000_004)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
