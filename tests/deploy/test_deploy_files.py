"""Static checks of deploy/ (no Docker engine runs here) plus a real start of its redis.conf."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from sidserve.testing import RedisProcess

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def compose_config(*options: str, **env: str) -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (Debian package) not installed; .ci/run installs it")
    result = subprocess.run(
        [binary, "-f", str(DEPLOY / "docker-compose.yml"), *options, "config"],
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


def test_cluster_profile_forms_a_three_master_cluster_and_points_a_service_at_it() -> None:
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load(compose_config("--profile", "cluster", REDIS_APPENDFSYNC="always"))["services"]
    nodes = [f"redis-node-{i}" for i in (1, 2, 3)]
    volumes = set()
    for name in nodes:
        node = services[name]
        assert node["profiles"] == ["cluster"]
        command = node["command"]
        assert command[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]  # AOF from redis.conf
        assert command[command.index("--appendfsync") + 1] == "always"
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--cluster-config-file") + 1].startswith("/data/")  # survives restarts
        assert command[command.index("--cluster-announce-hostname") + 1] == name
        [data] = [v for v in node["volumes"] if v.endswith(":/data:rw")]
        volumes.add(data)
    assert len(volumes) == 3  # one data volume (AOF + nodes.conf) per node

    init = services["redis-cluster-init"]
    assert init["profiles"] == ["cluster"] and init["restart"] == "no"
    assert {n: d["condition"] for n, d in init["depends_on"].items()} == dict.fromkeys(nodes, "service_healthy")
    script = "\n".join(init["command"])
    assert "redis-cli --cluster create" in script and "--cluster-replicas 0" in script and "--cluster-yes" in script
    assert all(n in script for n in nodes) and "cluster_state:ok" in script

    service = services["service-cluster"]
    assert service["profiles"] == ["cluster"]
    env = service["environment"]
    assert env["SIDSERVE_REDIS_CLUSTER"] == "true" and env["SIDSERVE_REDIS_URL"].startswith("redis://redis-node-")
    assert env["SIDSERVE_API_KEYS_FILE"] == "/run/secrets/sidserve_api_keys"
    assert service["depends_on"] == {"redis-cluster-init": {"condition": "service_completed_successfully"}}
    # The default stack is untouched by the profile.
    assert "profiles" not in services["service"] and "profiles" not in services["redis"]


def test_dockerfile_installs_the_service_without_torch() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"pip install --no-cache-dir --prefix=/install \.\n", dockerfile), "no extras: no torch"
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.MULTILINE):
        assert (ROOT / source).exists(), f"Dockerfile copies missing path {source}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert re.search(r'^CMD \["(\w+)"\]', dockerfile, flags=re.MULTILINE).group(1) in scripts
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(dep.startswith("torch") for dep in runtime)


def test_shipped_redis_conf_starts_with_aof_and_no_eviction(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, config=DEPLOY / "redis.conf", args=["--appendfsync", "everysec"])
    server.start()
    try:
        client = server.client()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        server.stop()
