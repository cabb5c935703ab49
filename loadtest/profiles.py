"""Profiles: which corpus, model and scenarios a run uses. Budgets live in budgets.toml."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # fetch | upload_single | upload_batch | mix
    rate: float  # requests per second (open model, constant arrivals)
    popularity: str = "zipf"  # zipf | uniform
    candidates: int = 200
    history: int = 100
    batch: int = 100  # items per upload_batch request
    fetch_share: float = 0.95  # mix: share of fetches (the rest are uploads)
    mix_upload: str = "upload_single"  # mix: upload_single | upload_batch (of `batch` items)
    batch_body: str = "json"  # upload_batch bodies: json | binary (application/x-sidserve-embeddings)


@dataclass(frozen=True)
class Profile:
    name: str
    corpus: int  # items preloaded with real SIDs
    dim: int  # bundle trained when none is given: D, L, K, training items, epochs
    levels: int
    codebook_size: int
    train_n: int
    epochs: int
    warmup_s: float
    duration_s: float
    workers: int  # uvicorn workers per replica
    late_ms: float  # a send later than this after its intended time is a late send
    scenarios: tuple[Scenario, ...] = field(default_factory=tuple)
    # Service processes on their own ports, requests spread round-robin over them (procs.Service).
    replicas: int = 1
    zipf_s: float = 1.0


def _fetch(name: str, rate: float, popularity: str = "zipf", ids: tuple[int, int] = (200, 100)) -> Scenario:
    return Scenario(name, "fetch", rate, popularity, candidates=ids[0], history=ids[1])


SMOKE = Profile(
    name="smoke", corpus=20_000, dim=32, levels=3, codebook_size=16, train_n=2000, epochs=30,
    warmup_s=0.5, duration_s=2.0, workers=1, late_ms=5.0,
    scenarios=(
        _fetch("fetch_300_zipf", 100),
        _fetch("fetch_300_uniform", 100, "uniform"),
        _fetch("fetch_1_zipf", 100, ids=(1, 0)),
        _fetch("fetch_1000_zipf", 20, ids=(1000, 0)),
        Scenario("upload_single", "upload_single", 20),
        Scenario("upload_batch_100", "upload_batch", 2, batch=100),
        Scenario("mix_zipf", "mix", 100),
        Scenario("mix_batch_zipf", "mix", 100, batch=100, fetch_share=0.98, mix_upload="upload_batch"),
    ),
)  # fmt: skip

FULL = Profile(
    name="full", corpus=1_000_000, dim=384, levels=8, codebook_size=2048, train_n=20_000, epochs=3,
    warmup_s=10.0, duration_s=60.0, workers=1, replicas=2, late_ms=1.0,
    scenarios=(
        _fetch("fetch_300_zipf", 500),
        _fetch("fetch_300_uniform", 500, "uniform"),
        _fetch("fetch_300_zipf_1000rps", 1000),
        _fetch("fetch_1_zipf", 500, ids=(1, 0)),
        _fetch("fetch_1000_zipf", 200, ids=(1000, 0)),
        Scenario("upload_single", "upload_single", 200),
        Scenario("upload_batch_1000", "upload_batch", 10, batch=1000),
        Scenario("mix_zipf", "mix", 500),
        # JSON batches of 1,000 items (2.5 a second) reaching the workers that serve the fetches
        Scenario("mix_batch_zipf", "mix", 500, batch=1000, fetch_share=0.995, mix_upload="upload_batch"),
        # The same with binary batch bodies: no JSON parse beside the fetches (README's advice)
        Scenario("mix_batch_binary_zipf", "mix", 500, batch=1000, fetch_share=0.995, mix_upload="upload_batch",
                 batch_body="binary"),
        # Overload (~1.5x what a 2-core machine serves): the service must shed the excess and keep
        # what it admits fast (SIDSERVE_MAX_IN_FLIGHT, lowered while the loop runs late). Last: it
        # leaves a backlog behind.
        _fetch("fetch_300_uniform_overload", 1500, "uniform"),
    ),
)  # fmt: skip

PROFILES = {p.name: p for p in (SMOKE, FULL)}


def get(name: str, **overrides) -> Profile:
    if name not in PROFILES:
        raise SystemExit(f"unknown profile {name!r}; choose from {sorted(PROFILES)}")
    return replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})


def scale_rates(profile: Profile, factor: float) -> Profile:
    return replace(profile, scenarios=tuple(replace(s, rate=s.rate * factor) for s in profile.scenarios))
