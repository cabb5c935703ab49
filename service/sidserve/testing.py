"""Real processes for tests, demos and load tests: a private redis-server (or a Redis Cluster of
them) on free ports.

Not used by the service itself; it lives in the package so the tests, scripts/demo.py and the
load-test runner start Redis the same way.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis
import redis.cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A redis-server child process that can be stopped and started again on the same port.

    By default it keeps nothing on disk. With `config` (e.g. deploy/redis.conf) it runs with that
    file's persistence settings in `workdir`, so a restart reloads the data; `args` are extra
    command-line options (e.g. ["--appendfsync", "always"]).
    """

    def __init__(
        self, workdir: Path, port: int | None = None, config: Path | None = None, args: Sequence[str] = ()
    ) -> None:
        self.workdir, self.port = workdir, port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.config, self.args = config, list(args)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = [str(self.config)] if self.config else ["--save", "", "--appendonly", "no"]
        self._proc = subprocess.Popen(
            ["redis-server", *persistence, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start, see {self.workdir}/redis.log")
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)  # a paused server would never act on SIGTERM
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync or save (a crash of the Redis process, not the host)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung Redis)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


class RedisClusterProcess:
    """A Redis Cluster of `masters` redis-server children (no replicas) on free loopback ports.

    Each node runs with `--cluster-enabled yes` and its own nodes.conf under `workdir/<port>/`;
    `redis-cli --cluster create` then spreads the 16,384 slots evenly over them, and start()
    returns once every node reports `cluster_state:ok`. Nothing is kept on disk beyond
    nodes.conf (no RDB, no AOF) unless `args` say so (e.g. ["--appendonly", "yes"]): then a node
    killed and started again (`nodes[i].kill()`, `.start()`, `wait_ok()`) rejoins with its data.
    `url` is the first node's: a cluster client discovers the rest.
    """

    def __init__(self, workdir: Path, masters: int = 3, args: Sequence[str] = ()) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.workdir = workdir
        self.nodes = []
        for i in range(masters):
            port = free_port()
            while port > 55535:  # without --cluster-port Redis refuses ports above 65535 - 10000
                port = free_port()
            node_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-port", str(free_port()), "--cluster-node-timeout", "2000", *args]  # fmt: skip
            self.nodes.append(RedisProcess(workdir / str(i), port=port, args=node_args))
        self.ports = [node.port for node in self.nodes]
        self.url = self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.workdir.mkdir(parents=True, exist_ok=True)
            node.start()
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        result = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")
        try:
            self.wait_ok()
        except RuntimeError:
            self.stop()
            raise

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Return once every node reports cluster_state:ok (e.g. after a node was restarted)."""
        deadline = time.monotonic() + timeout_s
        while not all(self._state_ok(port) for port in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster on ports {self.ports} did not reach cluster_state:ok")
            time.sleep(0.05)

    @staticmethod
    def _state_ok(port: int) -> bool:
        client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            return client.execute_command("CLUSTER INFO").get("cluster_state") == "ok"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node_clients(self) -> list[redis.Redis]:
        """One plain client per master (e.g. for per-node DBSIZE)."""
        return [node.client() for node in self.nodes]

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster.from_url(self.url)
