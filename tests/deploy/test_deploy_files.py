"""Static checks of deploy/ (no Docker engine runs here) plus a real start of its redis.conf."""

import re
import shutil
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def compose_config(**env: str) -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (Debian package) not installed; .ci/run installs it")
    result = subprocess.run(
        [binary, "-f", str(DEPLOY / "docker-compose.yml"), "config"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_compose_file_is_valid_and_scales_the_service() -> None:
    config = compose_config(SIDSERVE_REPLICAS="3", REDIS_APPENDFSYNC="always")
    assert "replicas: 3" in config
    assert "- always" in config  # the durability choice reaches redis-server's command line
    assert "redis-data:/data" in config  # AOF lives on a named volume, surviving container restarts
    # API keys come from a mounted secret file (the service refuses to start without a key).
    assert "SIDSERVE_API_KEYS_FILE: /run/secrets/sidserve_api_keys" in config
    assert "source: sidserve_api_keys" in config


def test_dockerfile_installs_the_service_without_torch() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"pip install --no-cache-dir --prefix=/install \.\n", dockerfile), "no extras: no torch"
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.MULTILINE):
        assert (ROOT / source).exists(), f"Dockerfile copies missing path {source}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert re.search(r'^CMD \["(\w+)"\]', dockerfile, flags=re.MULTILINE).group(1) in scripts
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(dep.startswith("torch") for dep in runtime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shipped_redis_conf_starts_with_aof_and_no_eviction(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", str(DEPLOY / "redis.conf"), "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(tmp_path), "--appendfsync", "everysec"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server with deploy/redis.conf did not start"
                time.sleep(0.05)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
