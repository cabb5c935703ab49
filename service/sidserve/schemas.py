"""Request and response bodies of the HTTP API (the OpenAPI schema at /docs comes from here).

Limits are module constants so the docs, the validation and the client agree on them.
Embedding length is checked against the loaded model at request time (D comes from the
bundle), with the same error shape as pydantic's validation errors.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

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


class ItemOut(BaseModel):
    item_id: ItemId
    sid: Sid
    model_version: str = Field(description="Version (weights hash) of the model that computed the SID.")
    status: WriteStatus = Field(
        description="created: new item; updated: its SID changed; unchanged: same SID was already stored."
    )


class ItemBatchOut(BaseModel):
    model_version: str = Field(description="Version of the model that computed the SIDs.")
    items: list[ItemOut] = Field(description="One entry per input item, in input order.")


class ItemRead(BaseModel):
    item_id: ItemId
    sid: Sid
    model_version: str = Field(description="Version of the model that computed the SID (the loaded one).")


class FeaturesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidates: list[_FeatureItemId] = Field(
        max_length=MAX_CANDIDATES,
        description=f"Up to {MAX_CANDIDATES} candidate item IDs to rank. Duplicates are answered at each position.",
    )
    history: list[_FeatureItemId] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description=f"Up to {MAX_HISTORY} item IDs of the user's watch history.",
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


class FeatureBlock(BaseModel):
    """Column-oriented answer for one list of IDs, aligned with the request's order."""

    known: list[bool] = Field(description="False where the item has no SID stored (rows are then all 0).")
    sids: list[Sid | None] = Field(description="Each item's SID, null when unknown.")
    rows: list[list[int]] = Field(description="Each item's num_tokens embedding-table rows, in [0, H).")


class FeaturesOut(BaseModel):
    model_version: str = Field(description="Version of the model whose SIDs are served.")
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
    model_version: str = Field(description="Version (weights hash) of the loaded model bundle.")
    method: str = Field(description="How the bundle's quantizer was trained (rqvae, rqkmeans).")
    input_dim: int = Field(description="D: floats per embedding the model expects.")
    levels: int = Field(description="L: codes per SID.")
    codebook_size: int = Field(description="K: codes per level.")
    feature_config: FeatureConfigOut
