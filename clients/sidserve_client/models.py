"""Typed results and errors of the sidserve client (plain dataclasses + numpy, no server imports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Sid = tuple[int, ...]
WriteStatus = Literal["created", "updated", "unchanged"]


class SidServeError(Exception):
    """The server answered with an error. `detail` is its message: a string, or for validation
    errors FastAPI's list of {"loc", "msg", "type"} entries (loc names the field and item index)."""

    def __init__(self, status: int | None, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {detail}" if status is not None else str(detail))


class InvalidRequest(SidServeError):
    """400/413/422: the request was refused as it is; retrying will not help."""


class ItemNotFound(SidServeError):
    """404: no SID is stored for the item under the server's model version."""


class ServiceUnavailable(SidServeError):
    """503 (Redis unreachable, no model loaded) or no connection, still so after all retries."""


class Unauthorized(SidServeError):
    """401 (no API key sent: pass api_key=) or 403 (the key is not accepted)."""


class RateLimited(SidServeError):
    """429: over the server's per-key request rate, still so after all retries."""


@dataclass(frozen=True)
class ItemSid:
    item_id: str
    sid: Sid
    model_version: str
    # TIGER's collision index k, when the server runs with SIDSERVE_COLLISION_INDEX; else None.
    collision_index: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class VersionWrite:
    """The item as an upload wrote it under another loaded model version (the server writes all)."""

    model_version: str
    sid: Sid
    status: WriteStatus
    collision_index: int | None = None


@dataclass(frozen=True)
class ItemWrite(ItemSid):
    status: WriteStatus  # created | updated (SID changed) | unchanged
    # Under each other loaded model version, while the server has several loaded; else empty.
    other_versions: tuple[VersionWrite, ...] = field(default=(), kw_only=True)


@dataclass(frozen=True)
class FeatureConfig:
    parameterization: str
    ngram: int  # N
    table_size: int  # H, row 0 = unknown/padding
    codebook_size: int  # K
    levels: int  # L
    num_tokens: int  # rows per item


@dataclass(frozen=True)
class FeatureBlock:
    """Answers for one ID list, aligned with the request order."""

    known: np.ndarray  # bool [n]
    sids: list[Sid | None]  # None where unknown
    rows: np.ndarray  # int64 [n, num_tokens]; all 0 where unknown
    collision_index: list[int | None] | None = None  # k (None where unknown); None without SIDSERVE_COLLISION_INDEX

    def __len__(self) -> int:
        return len(self.sids)


@dataclass(frozen=True)
class Features:
    model_version: str
    feature_config: FeatureConfig
    candidates: FeatureBlock
    history: FeatureBlock


@dataclass(frozen=True)
class Readiness:
    """`ready` False carries the server's reason in `detail`; the model fields are then None."""

    ready: bool
    detail: str | None = None
    model_version: str | None = None
    input_dim: int | None = None
    levels: int | None = None
    codebook_size: int | None = None
    feature_config: FeatureConfig | None = None


def parse_block(body: dict[str, Any], num_tokens: int) -> FeatureBlock:
    sids = [None if s is None else tuple(s) for s in body["sids"]]
    rows = np.asarray(body["rows"], dtype=np.int64).reshape(len(sids), num_tokens)
    return FeatureBlock(known=np.asarray(body["known"], dtype=bool), sids=sids, rows=rows,
                        collision_index=body.get("collision_index"))  # fmt: skip


def parse_features(body: dict[str, Any]) -> Features:
    config = FeatureConfig(**body["feature_config"])
    return Features(
        model_version=body["model_version"],
        feature_config=config,
        candidates=parse_block(body["candidates"], config.num_tokens),
        history=parse_block(body["history"], config.num_tokens),
    )


def parse_readiness(status: int, body: dict[str, Any]) -> Readiness:
    if status != 200:
        return Readiness(ready=False, detail=str(body.get("detail")))
    return Readiness(
        ready=True,
        model_version=body["model_version"],
        input_dim=body["input_dim"],
        levels=body["levels"],
        codebook_size=body["codebook_size"],
        feature_config=FeatureConfig(**body["feature_config"]),
    )


def parse_write(body: dict[str, Any]) -> ItemWrite:
    others = tuple(
        VersionWrite(o["model_version"], tuple(o["sid"]), o["status"], o.get("collision_index"))
        for o in body.get("other_versions") or ()
    )
    return ItemWrite(body["item_id"], tuple(body["sid"]), body["model_version"], body["status"],
                     collision_index=body.get("collision_index"), other_versions=others)  # fmt: skip
