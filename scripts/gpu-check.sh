#!/usr/bin/env bash
# GPU check, in under 8 minutes on a machine with a CUDA GPU: the CUDA tests (decoders, compiled decoders,
# benchmark, training), then the decoders at 64 x 64 and 4 x 4 with a batch of 1,024 faces x 98 landmarks,
# eager and compiled (torch.compile: Triton kernels), against one `max(dim)` pass over the same maps; the
# summary table comes last (faces/s and ratio to the max pass).
#
#   scripts/gpu-check.sh [OUT_DIR]     (default: results/gpu-check)
#
# It needs no network and no install: on a machine that has Python with torch (CUDA), numpy, pandas, scipy,
# opencv, h5py and matplotlib but not popos's other dependencies, it unpacks what is missing from the
# wheels kept in .whl/ (git-ignored) into .whl/site, and puts that and the checkout on PYTHONPATH
# (nothing is installed into that Python). Refresh the wheels on a machine with PyPI access (pydantic
# and pydantic-core must be a matching pair; add `--python-version 3.11` etc. for other Pythons):
#
#   pip download --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl pydantic pydantic-core annotated-types typing-inspection \
#       typing-extensions pyyaml tqdm pytest pluggy iniconfig packaging pygments safetensors
#
# Uses $PYTHON, else .venv/bin/python when present, else python3. GPU_CHECK_CPU=1 rehearses it on a
# machine without CUDA (the CUDA parts are skipped, the benchmark runs small on the CPU). Exits non-zero,
# saying why, when torch sees no CUDA device or any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python
out=${1:-results/gpu-check}
rehearsal=${GPU_CHECK_CPU:-0}
export PYTHONUNBUFFERED=1

if [ "$rehearsal" != 1 ] && ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu-check: FAILED: torch sees no CUDA device (torch.cuda.is_available() is False); nothing was run." >&2
    exit 1
fi

# Unpack the wheels of the missing modules (a wheel is a zip of its site-packages files).
"$py" - <<'EOF'
import importlib.util
import sys
import zipfile
from pathlib import Path

NEEDED = {  # module -> distributions (with their own dependencies)
    "pydantic": ["pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions"],
    "yaml": ["pyyaml"], "tqdm": ["tqdm"], "safetensors": ["safetensors"],
    "pytest": ["pytest", "pluggy", "iniconfig", "packaging", "pygments"],
}
site = Path(".whl/site")
sys.path.insert(0, str(site))
missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
for module in missing:
    for dist in NEEDED[module]:
        wheels = [w for w in sorted(Path(".whl").glob(f"{dist}-*.whl"), key=lambda p: p.name.lower())
                  if "-py3-none-any" in w.name or "-abi3-" in w.name or f"-{tag}-" in w.name]
        if not wheels:
            sys.exit(f"gpu-check: FAILED: {module} is missing and .whl/ has no {dist} wheel for {tag} "
                     "(see this script's header to refresh .whl/)")
        with zipfile.ZipFile(wheels[-1]) as wheel:
            wheel.extractall(site)
    print(f"gpu-check: {module} unpacked from .whl/ into {site}")
EOF
export PYTHONPATH="$PWD/.whl/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import torch; print(f"gpu-check: torch {torch.__version__}, " + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA (rehearsal)"))'
mkdir -p "$out"

echo "== CUDA tests (pytest -m cuda)"
# pytest exits with 5 when no test is selected: that fails the check too (not in a rehearsal without CUDA,
# where every CUDA test is skipped; there the modules are collected, so imports are checked).
tests=(tests/test_decoders.py tests/test_compile.py tests/test_bench.py tests/test_train.py)
if [ "$rehearsal" = 1 ]; then
    "$py" -m pytest -p no:cacheprovider -o addopts= -m cuda -q -rs "${tests[@]}" || [ $? = 5 ]
else
    "$py" -m pytest -p no:cacheprovider -o addopts= -m cuda -q -rs "${tests[@]}"
fi

echo "== decoders, batch 1024 x 98 landmarks, eager and compiled"
"$py" - "$out" "$rehearsal" <<'EOF'
import sys
from pathlib import Path

import pandas as pd

from popos.bench import bench_decoders
from popos.decoders import VARIANTS

out, rehearsal = Path(sys.argv[1]), sys.argv[2] == "1"
device, batch, sizes = ("cpu", 8, [8, 4]) if rehearsal else ("cuda", 1024, [64, 4])
eager = bench_decoders(device, batch, 98, sizes, warmup=2, repeats=10, methods=list(VARIANTS))
compiled = bench_decoders(device, batch, 98, sizes, warmup=2, repeats=10,
                          methods=["one_hot", "two_hot", "dark", "keyposs", "keyposs_peak", "popos"], compile=True)
table = pd.concat([eager, compiled[compiled.compiled]], ignore_index=True)
table.to_csv(out / f"decoders-{device}-b{batch}.csv", index=False)
EOF

echo "== summary: decoders on $( [ "$rehearsal" = 1 ] && echo 'CPU (rehearsal)' || echo CUDA ), 98 landmarks; CSV in $out"
"$py" - "$out" <<'EOF'
import sys
from pathlib import Path

import pandas as pd

for path in sorted(Path(sys.argv[1]).glob("decoders-*-b*.csv")):
    table = pd.read_csv(path)
    table["mode"] = table.compiled.map({True: "compiled", False: "eager"})
    table["cell"] = [f"{f:,.0f} ({r:.2f}x)" for f, r in zip(table.faces_per_s, table.ratio_to_floor, strict=True)]
    for batch, part in table.groupby("batch"):
        wide = part.pivot_table(index="method", columns=["heatmap_size", "mode"], values="cell", aggfunc="first")
        wide = wide.reindex(part.method.unique())
        sizes = sorted(part.heatmap_size.unique(), reverse=True)
        wide = wide[[c for s in sizes for c in ((s, "eager"), (s, "compiled")) if c in wide.columns]]
        wide.columns = [f"{s}x{s} {m}" for s, m in wide.columns]
        compile_s = part[part.compiled].groupby("heatmap_size").compile_s.sum()
        print(f"{path.name}: batch {batch}, faces/s (time / the max pass of the same run; compiled columns: a second run); compile s per size: "
              f"{', '.join(f'{s}: {v:.0f}' for s, v in compile_s.items())}")
        print(wide.rename_axis(None).fillna("-").to_string() + "\n")
EOF
echo "gpu-check: OK"
