"""Service configuration, read from environment variables prefixed `SIDSERVE_`.

Every field below is one variable: `bundle` is `SIDSERVE_BUNDLE`, `redis_url` is
`SIDSERVE_REDIS_URL`, and so on. The `sidserve` console script offers the same options as flags
(flags win over the environment). README "Configuration" lists them with their defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .features import Parameterization

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIDSERVE_", extra="ignore")

    # Model
    bundle: Path | None = Field(
        default=None,
        description="Model bundle directory (encoder.onnx + manifest.json). Unset (and no bundles): the "
        "service starts but is not ready and answers item/feature calls with 503.",
    )
    bundles: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="More model bundles to load at once, comma-separated paths or a JSON list; each keeps "
        "its SIDs under its own model version, and uploads write every loaded version. The first bundle "
        "(`bundle` if set, then these) is the default active version until one is recorded in Redis. "
        "All must take the same input_dim.",
    )
    active_refresh_s: PositiveFloat = Field(
        default=1.0,
        description="How often each process re-reads the active model version (and retirements) from Redis, "
        "in the background: a switch reaches every replica within about this long. Keep it equal on all "
        "replicas (a retirement waits 2 x this + redis_socket_timeout before deleting).",
    )
    retire_batch_keys: int = Field(
        default=500, ge=1, le=100_000,
        description="Retiring a version: SCAN COUNT per call, and so about how many keys each UNLINK removes.",
    )  # fmt: skip
    retire_pause_s: NonNegativeFloat = Field(
        default=0.01, description="Retiring a version: pause after each SCAN call, to leave Redis to the requests."
    )
    collision_index: bool = Field(
        default=False,
        description="TIGER's collision index: each item also gets k = 0, 1, 2... among the items sharing its "
        "full SID (an atomic Redis counter per SID; stable while the item's SID is unchanged), served beside "
        "the SID. Widens stored values by 4 bytes; must match what a model version was first written with. "
        "The per-process SID cache holds k beside the SID, under the same staleness bound.",
    )
    onnx_intra_op_threads: PositiveInt = Field(
        default=1,
        description="onnxruntime intra-op threads per process. 1 suits several workers sharing the cores.",
    )
    onnx_spinning: bool = Field(
        default=False,
        description="Let onnxruntime threads spin-wait between runs (lower latency, burns idle CPU).",
    )

    @field_validator("bundles", mode="before")
    @classmethod
    def _split_bundles(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @property
    def bundle_paths(self) -> list[Path]:
        """Every bundle to load, in order: `bundle` first, then `bundles`."""
        return ([self.bundle] if self.bundle is not None else []) + list(self.bundles)

    # Redis
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis connection URL.")
    redis_cluster: bool = Field(
        default=False,
        description="Redis is a Redis Cluster: redis_url names one of its nodes (db 0), the others are "
        "discovered. Reads and writes then make one Redis Function call per hash-tag group (up to 16), "
        "pipelined per node; a batch write is atomic per group, not across groups (README \"Redis Cluster\").",
    )
    redis_connect_timeout: PositiveFloat = Field(
        default=0.5, description="Seconds to wait for a TCP connection to Redis."
    )
    redis_socket_timeout: PositiveFloat = Field(
        default=1.0, description="Seconds to wait for any one Redis reply; bounds a 503 when Redis hangs."
    )
    redis_max_connections: PositiveInt = Field(
        default=64,
        description="Redis connections per process for SID reads and writes, and as many again for every other "
        "command (health checks, model lifecycle, update notices); a command beyond waits for one up to the socket timeout.",
    )
    key_prefix: str = Field(
        default="sid", min_length=1, description="First component of every Redis key (see the key layout)."
    )
    store_bucket_bits: int = Field(
        default=14, ge=1, le=32,
        description="Redis layout: 2^bits hash buckets per model version; aim for ~64 items per bucket "
        "(14 for ~1M items, +1 per doubling). Items are found again only with the bits they were written "
        "with: the first writer records them in Redis and later processes adopt that value.",
    )  # fmt: skip
    store_fingerprint_bytes: int = Field(
        default=4, ge=4, le=8,
        description="Redis layout: bytes of the hash that identifies an item inside its bucket. 4 keeps "
        "~23 B per item; two items collide (share a SID) with ~0.75 expected pairs at 100M items, so set 5 "
        "for corpora of 100M+ items (+1.26 B per item). Like the bucket bits, the first writer of a model "
        "version records it and later processes adopt the recorded value.",
    )  # fmt: skip
    write_chunk_items: NonNegativeInt = Field(
        default=0,
        description="0 (default): a batch is written in Redis in one atomic call per model version, all or "
        "nothing. n > 0: in calls of n items, each atomic, the batch as a whole not (a failure between calls "
        "answers 503 with the earlier calls applied; re-sending the batch completes it). Each call holds Redis "
        "~6.4 us per item, stalling every read behind it: 256 cut the fetches' p99 beside 1,000-item batch "
        "uploads by 36-48 % in the load test.",
    )
    cache_ttl_s: NonNegativeFloat = Field(
        default=5.0,
        description="Per-process cache of hot items' SIDs and feature rows (sidserve.lookup): while this "
        "process does not hear update notices (see cache_max_age_s), an entry is served at most this many "
        "seconds after Redis answered it, which bounds how stale an item re-uploaded with new content through "
        "another worker or replica can be (this process's own writes are seen at once; unknown items are never "
        "cached). 0 = no cache: every lookup goes to Redis.",
    )
    cache_max_age_s: NonNegativeFloat = Field(
        default=60.0,
        description="While this process hears update notices (Redis Pub/Sub, published by every write of an "
        "updated item in the same atomic call; sidserve.notices), cache entries live up to this many seconds: "
        "other processes' updates then reach the cache within milliseconds, and a longer life raises the hit "
        "rate. When notices are not heard (connection lost, 3 s without a heartbeat) cache_ttl_s applies. "
        "0 = do not follow notices (cache_ttl_s always). Values below cache_ttl_s count as cache_ttl_s.",
    )
    cache_max_items: PositiveInt = Field(
        default=200_000,
        description="Entries of that cache per process and loaded model version (~275 B each with L = 8 and 13-byte IDs: up to ~55 MB).",
    )
    retry_after_s: PositiveInt = Field(
        default=1, description="Retry-After (seconds) sent with 503 answers while Redis is unreachable."
    )

    # Features
    parameterization: Parameterization = Field(
        default=Parameterization.PREFIX_NGRAM, description="Which SID tokens are served (feature contract)."
    )
    ngram: PositiveInt | None = Field(
        default=None, description="N, prefix-ngram tokens per item; default L (all prefixes)."
    )
    # H - 1 = 1,000,003 is prime, so coprime with any codebook size K.
    table_size: int = Field(
        default=1_000_004, ge=2, description="H, rows of the ranking model's embedding table (row 0 = unknown)."
    )

    # HTTP
    host: str = Field(default="127.0.0.1", description="Bind address (console script only).")
    port: int = Field(default=8000, ge=0, le=65535, description="Bind port (console script only).")
    workers: PositiveInt = Field(default=1, description="uvicorn worker processes (console script only).")
    keep_alive_s: PositiveInt = Field(
        default=75,
        description="Seconds an idle keep-alive connection stays open (console script only). Longer than the "
        "clients' and proxies' idle timeouts (httpx 5 s, nginx upstream 60 s), so they close first: with "
        "uvicorn's 5 s a client could send on a connection the server was just closing (a reset).",
    )
    max_in_flight: NonNegativeInt = Field(
        default=32,
        description="Load shedding: requests one route may have in flight in one process, at most (the bound "
        "drops while the event loop runs late: SIDSERVE_SHED_LOOP_LAG_MS); beyond, 503 with "
        "Retry-After at once, before the body is read (sidserve.admission). Health, readiness and metrics are "
        "not bounded. 0 = no bound (an overloaded worker then queues every request until Redis calls time out).",
    )
    shed_loop_lag_ms: NonNegativeFloat = Field(
        default=5.0,
        description="Adaptive load shedding: once this process's event loop has woken more than this late 4 "
        "times in a row (sampled every 50 ms), every route's in-flight bound drops by a quarter at each further "
        "late sample (1 at least); once it has woken on time 4 times in a row, the bound rises by one at each "
        "further sample, up to SIDSERVE_MAX_IN_FLIGHT (sidserve.admission). 0 = the bound stays at "
        "SIDSERVE_MAX_IN_FLIGHT.",
    )
    max_body_bytes: PositiveInt = Field(
        default=32 * 1024 * 1024, description="Larger request bodies are refused with 413."
    )
    ingest_nice: int = Field(
        default=10, ge=0, le=19,
        description="Linux niceness of ingest work: the JSON parse helpers and the threads that encode "
        "batches. Ingest is throughput work and features are latency work: where they share cores, ingest "
        "yields the CPU (at 10, about a tenth of a worker's share while both want it); 0 = equal priority.",
    )
    json_parse_processes: NonNegativeInt = Field(
        default=1,
        description="Helper processes per worker that parse large JSON batch bodies off the event loop "
        "(sidserve.bodies; ~85 MB each); 0 parses them on the worker's loop, which then serves nothing else "
        "for ~25 ms per 1,000 items.",
    )
    json_parse_offload_min_bytes: NonNegativeInt = Field(
        default=256 * 1024,
        description="JSON batch bodies from this size on go to a helper; smaller ones (~60 items at D = 384) "
        "are parsed in-line, where the hand-over would cost more than the parse.",
    )
    log_level: LogLevel = Field(default="info", description="Log level of the service and uvicorn.")
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's built-in OpenTelemetry instrumentation of each request (traces, metrics, logs), "
        "for a deployment that configures an OpenTelemetry SDK. Off, the default: the service exports its own "
        "Prometheus metrics (/metrics), and the instrumentation otherwise looks up the OpenTelemetry providers "
        "on every request, even when none is configured (~5 us each).",
    )

    # Security (README "Security"; sidserve.security)
    api_keys: SecretStr | None = Field(
        default=None,
        description="Comma-separated API keys, all valid at once (rotation). Prefer api_keys_file: "
        "environment variables and flags show up in process listings.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File with one API key per line (a mounted secret); re-read when it changes.",
    )
    protect_reads: bool = Field(
        default=False, description="Require a key for reads too (features, GET item); writes always need one."
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Start without any API key, open to anyone. Without this, no key configured = refuse to start.",
    )
    rate_limit_per_s: NonNegativeFloat = Field(
        default=5000.0,
        description="Requests per second per key (per client address without a key), per process; 0 = no limit.",
    )
    rate_limit_burst: PositiveFloat = Field(
        default=5000.0, description="Token-bucket capacity: requests a key may make at once above the rate."
    )
