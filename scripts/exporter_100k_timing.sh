#!/usr/bin/env bash
# CPU training time at 100k x 384: the DEV embeddings replicated with noise (renormalised), then
# `sid-exporter train` with default settings for both methods. Usage:
#   bash scripts/exporter_100k_timing.sh [out dir] [extra train flags, e.g. --threads 1]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
OUT=${1:-artifacts/big}; shift $(( $# < 1 ? $# : 1 ))
mkdir -p "$OUT"
python - "$OUT" <<'PY'
import sys
import numpy as np
from sid_exporter.verify import pad_with_jitter
x = np.load("../shared/data/online_retail/item_embeddings.npy")
big = pad_with_jitter(x, 100_000, seed=1, scale=0.05)
big /= np.linalg.norm(big, axis=1, keepdims=True)
np.save(f"{sys.argv[1]}/x100k.npy", big.astype(np.float32))
open(f"{sys.argv[1]}/ids100k.txt", "w").write("".join(f"i{i}\n" for i in range(len(big))))
PY
echo "load before: $(cat /proc/loadavg), nproc $(nproc)"
for m in rqvae rqkmeans; do
    /usr/bin/time -f "$m 100k train: user %Us sys %Ss wall %es" sid-exporter train \
        --embeddings "$OUT/x100k.npy" --ids "$OUT/ids100k.txt" --out "$OUT/$m.pt" --method "$m" "$@"
    echo "load after $m: $(cat /proc/loadavg)"
done
