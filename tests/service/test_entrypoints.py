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
def test_starts(how: str, sid_bundle: Path, redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SIDSERVE_BUNDLE": str(sid_bundle), "SIDSERVE_REDIS_URL": redis_url}
    if how == "console-script":  # keys from a mounted-secret style file; the others from the environment
        (tmp_path / "keys").write_text("# rotated 2024-05\nold-key-0123456789abcdef\nnew-key-0123456789abcdef\n")
        env["SIDSERVE_API_KEYS_FILE"] = str(tmp_path / "keys")
    else:
        env["SIDSERVE_API_KEYS"] = "env-key-0123456789abcdef"
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


def test_refuses_to_start_without_keys() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDSERVE_")}
    sidserve = shutil.which("sidserve", path=str(Path(sys.executable).parent)) or "sidserve"
    result = subprocess.run([sidserve, "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    assert "no API key configured" in result.stderr and "SIDSERVE_ALLOW_UNAUTHENTICATED" in result.stderr
    result = subprocess.run([sidserve, "--api-keys", "short"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0 and "entry 1 is not a usable key" in result.stderr
    assert "short" not in result.stderr.replace("SIDSERVE_API_KEYS", "")  # never echoes a key
