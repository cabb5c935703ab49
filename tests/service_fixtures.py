"""The service under test in a real uvicorn server on a free port (background thread), so clients
talk real HTTP to it, and Redis is the real one from redis_fixtures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from sidserve.app import create_app
from sidserve.settings import Settings

# The key the test services accept (SIDSERVE_API_KEYS); writes need it.
TEST_API_KEY = "test-key-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TEST_API_KEY}"}


@dataclass
class LiveService:
    url: str
    app: FastAPI
    settings: Settings
    loop: asyncio.AbstractEventLoop  # the server's event loop (its thread's)
    api_key: str = TEST_API_KEY


@contextmanager
def serve(settings: Settings) -> Iterator[LiveService]:
    """Run create_app(settings) under uvicorn on 127.0.0.1:<free port> until the block ends."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start (see the log above)")
        time.sleep(0.01)
    listener = server.servers[0]
    port = listener.sockets[0].getsockname()[1]
    try:
        yield LiveService(f"http://127.0.0.1:{port}", app, settings, listener.get_loop())
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def service_settings(bundle: Path, redis_url: str, **overrides: object) -> Settings:
    # Short timeouts and Retry-After keep the outage tests fast; prefix_ngram N = L, default H. No JSON
    # parse helper process (~0.4 s of CPU per service started): tests/service/test_json_offload.py has them.
    overrides.setdefault("api_keys", TEST_API_KEY)
    overrides.setdefault("json_parse_processes", 0)
    overrides.setdefault("redis_connect_timeout", 0.25)
    overrides.setdefault("redis_socket_timeout", 0.5)
    return Settings(bundle=bundle, redis_url=redis_url, **overrides)


@pytest.fixture(scope="session")
def live_service(sid_bundle: Path, redis_url: str) -> Iterator[LiveService]:
    """The service on the session's bundle and Redis, shared by the tests that do not stop Redis."""
    with serve(service_settings(sid_bundle, redis_url)) as service:
        yield service
