"""Real processes for tests, demos and load tests: a private redis-server on a free port.

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
