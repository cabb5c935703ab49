"""Python client of the sidserve HTTP API: item upload and ranking-server feature fetch.

    from sidserve_client import SidServeClient
    with SidServeClient("http://127.0.0.1:8000", api_key=os.environ["SIDSERVE_API_KEY"]) as client:
        client.upsert_items(ids, embeddings)               # auto-chunked, retried on 503
        features = client.features(candidates, history)   # numpy rows, aligned with the inputs
"""

from .client import MAX_BATCH_ITEMS, AsyncSidServeClient, RetryPolicy, SidServeClient
from .models import (
    FeatureBlock,
    FeatureConfig,
    Features,
    InvalidRequest,
    ItemNotFound,
    ItemSid,
    ItemWrite,
    RateLimited,
    Readiness,
    ServiceUnavailable,
    SidServeError,
    Unauthorized,
    VersionWrite,
)

__all__ = [
    "MAX_BATCH_ITEMS", "AsyncSidServeClient", "RetryPolicy", "SidServeClient",
    "FeatureBlock", "FeatureConfig", "Features", "InvalidRequest", "ItemNotFound", "ItemSid",
    "ItemWrite", "RateLimited", "Readiness", "ServiceUnavailable", "SidServeError", "Unauthorized",
    "VersionWrite",
]  # fmt: skip
