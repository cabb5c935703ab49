#!/usr/bin/env python3
"""Regenerate data/sample/ (900 Online Retail items: ids, texts, MiniLM embeddings) from the
full DEV data in ../shared/data/online_retail/. Deterministic: same source files => same bytes.

    python scripts/make_sample_data.py [--src ../shared/data/online_retail] [--out data/sample]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path

import numpy as np

N_ITEMS = 900  # float32 x 384: 1.38 MB, the sample stays under ~1.5 MB with its texts
SEED = 0


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--src", type=Path, default=root.parent / "shared/data/online_retail")
    p.add_argument("--out", type=Path, default=root / "data/sample")
    args = p.parse_args()

    x = np.load(args.src / "item_embeddings.npy")
    ids = (args.src / "item_ids.txt").read_text(encoding="utf-8").splitlines()
    with open(args.src / "item_texts.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(ids) == len(rows) == len(x) and all(r["item_id"] == i for r, i in zip(rows, ids))

    # Real products only (at least one sale), a seeded uniform sample kept in the source order.
    sold = np.flatnonzero([int(r["n_sale_rows"]) > 0 for r in rows])
    pick = np.sort(np.random.default_rng(SEED).choice(sold, N_ITEMS, replace=False))

    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "item_embeddings.npy", np.ascontiguousarray(x[pick], dtype=np.float32))
    (args.out / "item_ids.txt").write_text("".join(ids[i] + "\n" for i in pick), encoding="utf-8")
    with open(args.out / "item_texts.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["item_id", "text", "first_seen", "n_sale_rows", "source_row"])
        w.writerows(
            [rows[i]["item_id"], rows[i]["text"], rows[i]["first_seen"], rows[i]["n_sale_rows"], i]
            for i in pick
        )
    for name in ("item_embeddings.npy", "item_ids.txt", "item_texts.csv"):
        print(name, hashlib.sha256((args.out / name).read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
