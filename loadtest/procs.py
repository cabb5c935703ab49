"""What a run starts: a private redis-server and the service (`sidserve`: R replicas of W uvicorn
workers each)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

from sidserve.testing import RedisProcess, free_port


def _wait(check, what: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting:\n{tail}")
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout_s} s (last error: {last!r})")


def process_tree_cpu_s(root_pid: int) -> float | None:
    """CPU seconds (user + system) used so far by a process and its living descendants (for the
    service: uvicorn's supervisor, its workers and their JSON parse helpers), read from /proc.
    None where there is no /proc (not Linux)."""
    proc = Path("/proc")
    if not (proc / str(root_pid) / "stat").exists():
        return None
    parent_of, ticks = {}, {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except OSError:  # exited while we looked
            continue
        pid = int(stat.parent.name)
        parent_of[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        children = [pid for pid, parent in parent_of.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


class RedisServer(RedisProcess):
    """`redis-server` on a free port, no persistence, stopped (and its files removed) on exit."""

    def __init__(self, maxmemory: str | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        super().__init__(Path(tempfile.mkdtemp(prefix="loadtest-redis-")),
                         args=["--maxmemory", maxmemory] if maxmemory else [])  # fmt: skip
        self.start()
        self.client = redis.Redis(host="127.0.0.1", port=self.port)

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def cpu_s(self) -> float:
        """CPU seconds (user + system) Redis has used since it started (INFO cpu)."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def stop(self) -> None:
        try:
            self.client.close()
        finally:
            super().stop()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Service:
    """The service under test: `replicas` processes of the `sidserve` console script, each with
    `workers` uvicorn workers on its own port.

    Several single-worker replicas, with the generator spreading requests over them
    (rawhttp.SpreadPool), is the deployment README recommends (one worker per replica behind a load
    balancer). Several workers on one port split load unevenly: the workers share one listening
    socket and the kernel hands most new connections to one of them (10 connections opened at once
    to 2 workers were split 3/7, 9/1 and 10/0 in three tries), and the keep-alive connections stay
    where they landed.

    Access logs are off (log level warning): at 1,000 requests/s they would cost more CPU than
    the handlers. /metrics of any replica aggregates every process of every replica through
    prometheus-client's multiprocess mode (one PROMETHEUS_MULTIPROC_DIR, fresh per run).
    """

    def __init__(self, bundle: Path, redis_url: str, workers: int = 1, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 60, replicas: int = 1) -> None:
        self.ports = [free_port() for _ in range(replicas)]
        self.dir = Path(tempfile.mkdtemp(prefix="loadtest-sidserve-"))
        prom = self.dir / "prometheus"
        prom.mkdir()
        self.log = self.dir / "sidserve.log"
        # A real API key, as a deployment has (writes need it; the check is part of what is measured).
        self.api_key = secrets.token_urlsafe(24)
        keys = self.dir / "api-keys"
        keys.write_text(self.api_key + "\n")
        full_env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom), "SIDSERVE_LOG_LEVEL": "warning",
                    "SIDSERVE_API_KEYS_FILE": str(keys), **(env or {})}
        exe = shutil.which("sidserve", path=str(Path(sys.executable).parent)) or shutil.which("sidserve")
        cmd = [exe] if exe else [sys.executable, "-m", "sidserve.cli"]
        cmd += ["--bundle", str(bundle), "--redis-url", redis_url, "--host", "127.0.0.1", "--workers", str(workers)]
        self.base = f"http://127.0.0.1:{self.ports[0]}"  # get()'s default: the first replica
        t0 = time.monotonic()
        with self.log.open("wb") as log:  # the replicas' output, interleaved
            self.procs = [subprocess.Popen(cmd + ["--port", str(port)], env=full_env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
                          for port in self.ports]  # fmt: skip
        try:
            for port, proc in zip(self.ports, self.procs):
                base = f"http://127.0.0.1:{port}"
                _wait(lambda: self.get("/readyz", base=base)[0] == 200, "sidserve", ready_timeout_s, proc, self.log)
        except BaseException:
            self.stop()  # no replica outlives a failed start
            raise
        self.ready_s = time.monotonic() - t0  # until every replica is ready

    def cpu_s(self) -> float | None:
        """CPU seconds used so far by the service's processes (None where /proc is missing)."""
        used = [process_tree_cpu_s(proc.pid) for proc in self.procs]
        return None if None in used else sum(used)  # type: ignore[arg-type]

    @property
    def target(self):
        from .rawhttp import Target

        return Target(f"127.0.0.1:{self.ports[0]}", {"Authorization": f"Bearer {self.api_key}"})

    def get(self, path: str, timeout: float = 5.0, base: str | None = None) -> tuple[int, bytes]:
        """GET from the first replica (or from `base`)."""
        try:
            with urllib.request.urlopen((base or self.base) + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> None:
        running = [proc for proc in self.procs if proc.poll() is None]
        for proc in running:
            proc.terminate()  # uvicorn's supervisor stops its workers on SIGTERM
        for proc in running:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
