#!/usr/bin/env bash
# GPU check: on a machine with a CUDA GPU, run the CUDA tests (pytest -m cuda: decoders, codec, benchmark,
# training), the decoder benchmark on CUDA at batch 32 and 256 and a training-throughput check (64 and 4
# heatmaps, mixed precision), then print a summary table last.
#
#   scripts/gpu-check.sh [OUT_DIR]     (default: results/benchmarks/gpu-check)
#
# Uses .venv/bin/python when present, else $PYTHON or python3. Exits non-zero, saying why, when torch
# sees no CUDA device or any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-python3}
[ -x .venv/bin/python ] && py=.venv/bin/python
out=${1:-results/benchmarks/gpu-check}
export PYTHONUNBUFFERED=1

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu-check: FAILED: torch sees no CUDA device (torch.cuda.is_available() is False); nothing was run." >&2
    exit 1
fi
"$py" -c 'import torch; print(f"gpu-check: torch {torch.__version__}, {torch.cuda.get_device_name(0)}")'
mkdir -p "$out"

echo "== CUDA tests (pytest -m cuda)"
# pytest exits with 5 when no test is selected: that fails the check too.
"$py" -m pytest -m cuda -q -rs tests

for batch in 32 256; do
    echo "== popos bench decoders --device cuda --batch $batch"
    "$py" -m popos.cli bench decoders --device cuda --batch "$batch" --out "$out/decoders-cuda-b$batch.csv"
done

echo "== training on CUDA: HRNetV2-W18, 256 input, batch 64, 68 landmarks, mixed precision, 200 steps"
# Full training steps (targets, forward, loss, backward, Adam) on random batches: the model's throughput
# without data loading (popos.train.measure_throughput).
"$py" - "$out" <<'EOF'
import sys
from pathlib import Path

import pandas as pd

from popos.config import Params
from popos.train import measure_throughput

rows = [measure_throughput(Params(), size, loss, num_landmarks=68, steps=200, warmup=20, device="cuda")
        for size in (64, 4) for loss in ("mse", "mse_ma")]
table = pd.DataFrame(rows)
table.to_csv(Path(sys.argv[1]) / "train-cuda.csv", index=False)
print(table[["heatmap_size", "loss", "batch", "amp", "images_per_s", "peak_memory_mb"]].round(1).to_string(index=False))
EOF

echo "== summary: decoder ms per batch on CUDA (x one_hot in brackets); CSVs in $out"
"$py" - "$out" <<'EOF'
import sys
from pathlib import Path

import pandas as pd

table = pd.concat(pd.read_csv(p) for p in Path(sys.argv[1]).glob("decoders-cuda-b*.csv"))
table["cell"] = [f"{ms:.3f} [{r:.1f}x]" for ms, r in zip(table.ms, table.ratio_to_one_hot, strict=True)]
for batch, part in table.groupby("batch"):
    wide = part.pivot(index="method", columns="heatmap_size", values="cell")
    wide = wide.loc[part.method.unique(), part.heatmap_size.unique()]
    wide.columns = [f"{c}x{c}" for c in wide.columns]
    print(f"batch {batch}: ms per batch [x one_hot]\n{wide.rename_axis(None).to_string()}\n")
EOF
echo "gpu-check: OK"
