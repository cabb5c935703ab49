"""Adapter: UCI Online Retail I+II raw parquet files -> the sid_eval dataset format.

Follows the data README (shared/data/online_retail/README.md): concatenate the 2009-10 and
2010-11 files without their overlapping week, keep real sales (customer known, quantity > 0,
not a cancellation), drop non-product stock codes. Embeddings and ids are copied as they are.
Data: UCI ML Repository datasets 352 and 502 (CC BY 4.0), donated by Dr Daqing Chen; Chen, Sain
& Guo (2012), doi:10.1057/dbm.2012.17.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

# Fees, postage, adjustments and vouchers listed in the data README; not products.
NON_PRODUCTS = {"POST", "DOT", "M", "D", "C2", "BANK CHARGES", "AMAZONFEE", "ADJUST", "S", "CRUK", "B", "TEST001"}


def prep_online_retail(raw: str | Path, out: str | Path) -> Path:
    raw, out = Path(raw), Path(out)
    a = pd.read_parquet(raw / "online_retail_2010_2011.parquet")
    b = pd.read_parquet(raw / "online_retail_ii_2009_2010.parquet")
    b.columns = a.columns
    for d in (a, b):
        d["InvoiceDate"] = pd.to_datetime(d["InvoiceDate"])
    log = pd.concat([b[b.InvoiceDate < "2010-12-01"], a], ignore_index=True)  # the README's overlap rule
    log["StockCode"] = log.StockCode.astype(str).str.strip().str.upper()
    sales = log[
        log.CustomerID.notna()
        & (log.Quantity > 0)
        & ~log.InvoiceNo.astype(str).str.startswith("C")
        & ~log.StockCode.isin(NON_PRODUCTS)
        & ~log.StockCode.str.startswith("GIFT_0001")
    ]
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "user_id": sales.CustomerID.astype("int64").astype(str),
            "item_id": sales.StockCode,
            "timestamp": sales.InvoiceDate,
        }
    ).to_parquet(out / "interactions.parquet", index=False)
    for name in ("item_ids.txt", "item_embeddings.npy"):
        shutil.copyfile(raw / name, out / name)
    return out
