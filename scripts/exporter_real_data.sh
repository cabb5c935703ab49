#!/usr/bin/env bash
# The exporter's whole pipeline on the real DEV data, both methods; the README's figures come from
# here. Usage: bash scripts/exporter_real_data.sh [data dir] [out dir] [extra train flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
DATA=${1:-../shared/data/online_retail}; OUT=${2:-artifacts/real}; shift $(( $# < 2 ? $# : 2 ))
X=$DATA/item_embeddings.npy; IDS=$DATA/item_ids.txt
mkdir -p "$OUT"
for m in rqvae rqkmeans; do
    /usr/bin/time -f "$m train: user %Us sys %Ss wall %es" \
        sid-exporter train --embeddings "$X" --ids "$IDS" --out "$OUT/$m.pt" --method "$m" "$@"
    sid-exporter export --checkpoint "$OUT/$m.pt" --out "$OUT/bundle_$m"
    sid-exporter verify --bundle "$OUT/bundle_$m" --checkpoint "$OUT/$m.pt" --embeddings "$X" \
        --n 10000 --threads 1 --json "$OUT/verify_$m.json"
done
sid-exporter report --bundle "$OUT/bundle_rqvae" --bundle "$OUT/bundle_rqkmeans" \
    --embeddings "$X" --ids "$IDS" --json "$OUT/report.json" | tee "$OUT/report.txt"
