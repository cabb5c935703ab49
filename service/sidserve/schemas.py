"""Request and response bodies of the HTTP API (the OpenAPI schema at /docs comes from here).

Limits are module constants so the docs, the validation and the client agree on them.
Embedding length is checked against the loaded model at request time (D comes from the
bundle), with the same error shape as pydantic's validation errors.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from .features import FeatureConfig

MAX_ITEM_ID_BYTES = 256
MAX_BATCH_ITEMS = 1_000
MAX_CANDIDATES = 1_000
MAX_HISTORY = 500


def _check_utf8_length(item_id: str) -> str:
    # The limit is on stored bytes: max_length alone counts characters, not bytes.
    if len(item_id.encode()) > MAX_ITEM_ID_BYTES:
        raise ValueError(f"item_id is longer than {MAX_ITEM_ID_BYTES} bytes of UTF-8")
    return item_id


ItemId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ITEM_ID_BYTES),
    AfterValidator(_check_utf8_length),
    Field(
        description=f"Item identifier: 1 to {MAX_ITEM_ID_BYTES} bytes of UTF-8, any characters.",
        examples=["85123A"],
    ),
]
# The features lists check UTF-8 length once per list (FeaturesIn._utf8_lengths), not with a Python
# validator call per ID: for 300 IDs that call was ~6% of the features handler (pyinstrument).
_FeatureItemId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ITEM_ID_BYTES),
    Field(description=f"Item identifier: 1 to {MAX_ITEM_ID_BYTES} bytes of UTF-8, any characters.", examples=["85123A"]),
]
Sid = Annotated[
    list[int],
    Field(description="Semantic ID: L codes c_1..c_L, coarse to fine, each in [0, K).", examples=[[17, 201, 3]]),
]
WriteStatus = Literal["created", "updated", "unchanged"]
# Model versions are the manifests' 16 hex digits; the pattern keeps Redis key patterns and paths safe.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
ModelVersion = Annotated[
    str,
    StringConstraints(pattern=f"^{VERSION_PATTERN.pattern}$"),
    Field(description="A model version (a bundle manifest's model_version).", examples=["92ee1ceefae7e2ca"]),
]
CollisionIndex = Annotated[
    int,
    Field(
        ge=0,
        description="TIGER's collision index k (SIDSERVE_COLLISION_INDEX): 0, 1, 2... in the order items got "
        "this full SID under this model version; unique among the items sharing it, kept while the item's "
        "SID is unchanged.",
    ),
]


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: ItemId
    embedding: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        description="Content embedding, exactly D finite floats (D is the loaded model's input_dim, see /readyz); "
        "each must also be finite as float32 (|x| < 3.4e38).",
        examples=[[0.12, -0.03, 0.57]],
    )


class ItemBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description=f"1 to {MAX_BATCH_ITEMS} items. All-or-nothing: one invalid item rejects the call "
        "(the error names its index) and nothing is written.",
    )


class VersionSidOut(BaseModel):
    model_version: str = Field(description="A loaded model version other than the active one.")
    sid: Sid
    status: WriteStatus = Field(description="What the upload did under this version (as `status`).")
    collision_index: CollisionIndex | None = Field(
        default=None, description="k under this version; present only with SIDSERVE_COLLISION_INDEX."
    )


class ItemOut(BaseModel):
    item_id: ItemId
    sid: Sid
    model_version: str = Field(description="Version (weights hash) of the model that computed the SID: the active one.")
    status: WriteStatus = Field(
        description="created: new item; updated: its SID changed; unchanged: same SID was already stored."
    )
    collision_index: CollisionIndex | None = Field(
        default=None, description="The item's k; present only with SIDSERVE_COLLISION_INDEX."
    )
    other_versions: list[VersionSidOut] | None = Field(
        default=None,
        description="The item as stored under each other loaded model version (an upload writes all of "
        "them); present only while several versions are loaded.",
    )


class ItemBatchOut(BaseModel):
    model_version: str = Field(description="Version of the model that computed the SIDs.")
    items: list[ItemOut] = Field(description="One entry per input item, in input order.")


class ItemRead(BaseModel):
    item_id: ItemId
    sid: Sid
    model_version: str = Field(description="Version of the model that computed the SID (the requested or active one).")
    collision_index: CollisionIndex | None = Field(
        default=None, description="The item's k; present only with SIDSERVE_COLLISION_INDEX."
    )


class FeaturesIn(BaseModel):
    # pydantic-core's JSON parser by default interns every string of up to 64 characters in a 16k-entry
    # cache: 300 mostly distinct item IDs per request thrash it (parse 96-100 against 36-40 us in-process
    # with a 2 ms pause between requests). Only keys are interned here.
    model_config = ConfigDict(extra="forbid", cache_strings="keys")

    candidates: list[_FeatureItemId] = Field(
        max_length=MAX_CANDIDATES,
        description=f"Up to {MAX_CANDIDATES} candidate item IDs to rank. Duplicates are answered at each position.",
    )
    history: list[_FeatureItemId] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description=f"Up to {MAX_HISTORY} item IDs of the user's watch history.",
    )
    version: ModelVersion | None = Field(
        default=None,
        description="Serve the SIDs of this loaded model version (GET /v1/models); default: the active one.",
    )

    @field_validator("candidates", "history")
    @classmethod
    def _utf8_lengths(cls, ids: list[str]) -> list[str]:
        # Only an ID of more than 256 / 4 characters can exceed 256 bytes of UTF-8; max() runs in C.
        quarter = MAX_ITEM_ID_BYTES // 4
        if max(map(len, ids), default=0) <= quarter:
            return ids
        too_long = [i for i, item_id in enumerate(ids) if len(item_id) > quarter and len(item_id.encode()) > MAX_ITEM_ID_BYTES]
        if too_long:
            raise ValueError(f"item IDs at positions {too_long[:20]} are longer than {MAX_ITEM_ID_BYTES} bytes of UTF-8")
        return ids


class FeatureConfigOut(BaseModel):
    """The deployment's feature configuration: check it matches your embedding tables."""

    parameterization: Literal["prefix_ngram", "unigram", "bigram", "overlapping_bigram"] = Field(
        description="Which SID tokens map to rows (README, 'The feature contract'): prefix n-grams (Meta), "
        "per-level unigrams or non-overlapping bigrams (Google), or overlapping bigrams (Meta)."
    )
    ngram: int = Field(description="N: prefix-ngram tokens per item (prefix_ngram only).")
    table_size: int = Field(description="H: rows of the embedding table; row 0 is reserved for unknown items.")
    codebook_size: int = Field(description="K: codes per level.")
    levels: int = Field(description="L: codes per SID.")
    num_tokens: int = Field(description="Rows per item in `rows`.")

    @classmethod
    def of(cls, config: FeatureConfig) -> FeatureConfigOut:
        return cls(
            parameterization=config.parameterization.value, ngram=config.ngram, table_size=config.table_size,
            codebook_size=config.codebook_size, levels=config.levels, num_tokens=config.num_tokens,
        )  # fmt: skip


class FeatureBlock(BaseModel):
    """Column-oriented answer for one list of IDs, aligned with the request's order."""

    known: list[bool] = Field(description="False where the item has no SID stored (rows are then all 0).")
    sids: list[Sid | None] = Field(description="Each item's SID, null when unknown.")
    rows: list[list[int]] = Field(description="Each item's num_tokens embedding-table rows, in [0, H).")
    collision_index: list[CollisionIndex | None] | None = Field(
        default=None,
        description="Each item's collision index k (TIGER's extra token), null when unknown; present only "
        "with SIDSERVE_COLLISION_INDEX.",
    )


class FeaturesOut(BaseModel):
    model_version: str = Field(description="Version of the model whose SIDs are served (requested, or the active one).")
    feature_config: FeatureConfigOut
    candidates: FeatureBlock
    history: FeatureBlock


class NoopOut(BaseModel):
    ids: int = Field(description="How many IDs the request carried (candidates + history).")


class ErrorOut(BaseModel):
    detail: str = Field(description="What went wrong, for a human.")


class HealthOut(BaseModel):
    status: Literal["ok"] = Field(description="The process is up and serving HTTP.")


class ReadyOut(BaseModel):
    """What this instance serves: check D before uploading, and the feature config against your tables."""

    status: Literal["ready"] = Field(description="Always `ready` in a 200 answer.")
    model_version: str = Field(description="Version (weights hash) of the active model bundle, served by default.")
    method: str = Field(description="How the bundle's quantizer was trained (rqvae, rqkmeans).")
    input_dim: int = Field(description="D: floats per embedding the model expects.")
    levels: int = Field(description="L: codes per SID.")
    codebook_size: int = Field(description="K: codes per level.")
    feature_config: FeatureConfigOut
    loaded_versions: list[str] = Field(description="Every model version this instance serves (GET /v1/models).")
    active_version_in_redis: str | None = Field(
        description="The active version shared by all replicas; differs from model_version while this "
        "instance has not loaded it (see warnings)."
    )
    collision_index: bool = Field(description="Whether items carry a collision index (SIDSERVE_COLLISION_INDEX).")
    warnings: list[str] = Field(description="Lifecycle problems this instance still serves through.")


class ActiveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: ModelVersion = Field(description="A model version loaded on this instance (and, for a clean "
                                  "switch, on every replica) and not retired.")  # fmt: skip


class ModelOut(BaseModel):
    model_version: str = Field(description="Version (weights hash) of a loaded bundle.")
    active: bool = Field(description="Served when a request names no version.")
    method: str = Field(description="How the bundle's quantizer was trained (rqvae, rqkmeans).")
    input_dim: int = Field(description="D: floats per embedding.")
    levels: int = Field(description="L: codes per SID.")
    codebook_size: int = Field(description="K: codes per level.")


class RetirementOut(BaseModel):
    model_version: str = Field(description="The retired version: no longer served or written.")
    state: Literal["draining", "deleting", "done", "failed"] | None = Field(
        description="draining: waiting until no replica writes it; deleting: its keys are being UNLINKed; "
        "done; failed (see error; retire it again to resume)."
    )
    keys_deleted: int | None = Field(description="Redis keys deleted so far.")
    requested_at: str | None = Field(description="When the retirement was (last) requested, ISO 8601 UTC.")
    updated_at: str | None = Field(description="Last progress report, ISO 8601 UTC.")
    error: str | None = Field(description="The last error met, if any (Redis errors are retried).")


class ModelsOut(BaseModel):
    active_version: str | None = Field(description="What this instance serves when a request names no version.")
    active_version_in_redis: str | None = Field(description="The active version shared by all replicas.")
    collision_index: bool = Field(description="Whether items carry a collision index (SIDSERVE_COLLISION_INDEX).")
    models: list[ModelOut] = Field(description="Versions loaded here and not retired, in configured order.")
    retired: list[RetirementOut] = Field(description="Retired versions and their deletion progress.")
    warnings: list[str] = Field(description="Lifecycle problems this instance still serves through.")
