#!/usr/bin/env bash
# Regenerate the measured tables the README links to, under results/ (`make results` runs this):
#   results/model.md          parameters and GFLOPs per heatmap size      (popos model info, 68 and 98 points)
#   results/decoders-cpu.md   decoder speed on this machine's CPU         (popos bench decoders)
#   results/oracle.md         decoding without a model, every condition   (popos oracle)
#   results/demo/             the demo's report, if `make demo` has run   (copied from demo/results/report)
# Each markdown file starts with the command, the commit, the torch build and the machine that made it.
# The CSV behind each table lies beside it. Uses .venv/bin (run `make install` first).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
out=results
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

$bin/popos model info --num-landmarks 68 --out "$tmp/model-68.csv" >/dev/null
$bin/popos model info --num-landmarks 98 --out "$tmp/model-98.csv" >/dev/null
$bin/popos bench decoders --out "$tmp/decoders-cpu.csv"
$bin/popos oracle --out "$tmp/oracle.csv" >/dev/null

$bin/python - "$tmp" "$out" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from popos.io import atomic_path, write_csv_atomic
from popos.oracle import format_oracle_table
from popos.report.provenance import environment

tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
env = environment()
machine = f"commit `{env['commit']}`, torch {env['torch']}, CPU {env['cpu']}, GPU {env['gpu']}, Python {env['python']}"


def write(name: str, title: str, command: str, body: str) -> None:
    text = f"# {title}\n\nMade by `{command}` (`make results`); {machine}.\n\n{body}\n"
    with atomic_path(out / name) as path:
        path.write_text(text)


model = pd.concat([pd.read_csv(tmp / f"model-{k}.csv").assign(points=k) for k in (68, 98)])
wide = model.pivot(index="heatmap_size", columns="points", values=["params_m", "gflops"]).sort_index(ascending=False)
wide.columns = [f"{'params (M)' if v == 'params_m' else 'GFLOPs'}, {k} pts" for v, k in wide.columns]
write_csv_atomic(model, out / "model.csv")
write("model.md", "Model cost per heatmap size", "popos model info --num-landmarks 68|98",
      "HRNetV2-W18 at a 256 input (params.yaml's model). GFLOPs are 1e9 multiply-accumulates, as the paper's "
      "(mmcv's get_flops); the paper gives 9.654 M and 4.721 GFLOPs at 64 x 64 and 9.7 M, 1.2 GFLOPs at 32 x 32 "
      "(68 points).\n\n" + wide.to_markdown())

bench = pd.read_csv(tmp / "decoders-cpu.csv")
bench["cell"] = [f"{ms:.2f} ({r:.2f}x)" for ms, r in zip(bench.ms, bench.ratio_to_one_hot, strict=True)]
wide = bench.pivot(index="method", columns="heatmap_size", values="cell").loc[bench.method.unique()]
wide = wide[sorted(wide.columns, reverse=True)]
wide.columns = [f"{c}x{c}" for c in wide.columns]
write_csv_atomic(bench, out / "decoders-cpu.csv")
first = bench.iloc[0]
write("decoders-cpu.md", "Decoder speed on the CPU", "popos bench decoders",
      f"ms per batch of {first.batch} faces x params.yaml's bench.num_landmarks heatmaps (float32), median of "
      "interleaved rounds; in brackets the median over rounds of the time / one_hot's time in the same round "
      "(above 1 = slower). This machine's speed drifts between runs: compare the ratios, not the times.\n\n"
      + wide.rename_axis(None).to_markdown())

oracle = pd.read_csv(tmp / "oracle.csv")
write_csv_atomic(oracle, out / "oracle.csv")
write("oracle.md", "Decoding without a model (the oracle)", "popos oracle",
      "Mean [median] error in input px at a 256 input, per condition (params.yaml's oracle section), decoder "
      "and heatmap size.\n\n```\n" + format_oracle_table(oracle) + "\n```")
PY

if [ -f demo/results/report/report.md ]; then
    rm -rf "$tmp/demo" && cp -r demo/results/report "$tmp/demo" && rm -f "$tmp/demo/.snakemake_timestamp"
    rm -rf "$out/demo.old" && { [ ! -d "$out/demo" ] || mv "$out/demo" "$out/demo.old"; }
    mv "$tmp/demo" "$out/demo" && rm -rf "$out/demo.old"
    echo "results/demo: copied from demo/results/report"
else
    echo "results/demo: not refreshed (run make demo first)"
fi
echo "results: model.md, decoders-cpu.md, oracle.md written"
