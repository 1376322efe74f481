#!/usr/bin/env bash
# The prepared GPU check (issue 15): CUDA tests, the throughput benchmark and one full ReBias cell, on one CUDA GPU
# in at most 8 minutes, written as one JSON record under benchmarks/results/ (and copied to $OUT when set).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --dry-run  # on any CPU machine: checks imports, files and one tiny step of each
#
# Needs only torch, torchvision, numpy, pandas, pyyaml, tqdm (no pytest, Jupyter, grad-cam or ART) and MNIST in
# <$SHORTCUT_BOOK_DATA or <repo>/data>/MNIST/raw: the GPU machine has no network, so carry data/MNIST/raw.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY="${PYTHON:-}"  # $PYTHON, else the repository's .venv, else python / python3 on PATH
[[ -z "$PY" && -x .venv/bin/python ]] && PY=.venv/bin/python
[[ -z "$PY" ]] && PY="$(command -v python || command -v python3)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1

# stage budgets (s): hard timeouts; together with start-up they stay under 480 s
T_TESTS=60 T_THROUGHPUT=100 T_CELL=290 CELL_TRAIN_S=230
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
if (( DRY )); then
  WORK="$(mktemp -d)"; RESULTS="$WORK"; ARGS=(--dry-run); export CUDA_VISIBLE_DEVICES=""
else
  WORK="$(mktemp -d)"; RESULTS="benchmarks/results"; ARGS=()
fi
mkdir -p "$RESULTS"
RECORD="$RESULTS/gpu_check_$STAMP.json"

echo "gpu_check $( ((DRY)) && echo '(dry run, CPU)' ) at $STAMP, python: $PY"
echo "plan (hard limits; total <= $((T_TESTS + T_THROUGHPUT + T_CELL)) s + start-up, budget 480 s):"
echo "  1. CUDA tests of tests/test_precision.py (benchmarks/cuda_tests.py)            <= ${T_TESTS} s"
echo "  2. throughput: book loop vs DataLoader loop, ReBias step vs reference step    <= ${T_THROUGHPUT} s"
echo "  3. ReBias cell, full profile: rho 0.997, Vanilla + ReBias, 80 epochs, 60k images <= ${T_CELL} s" \
     "(training stops at ${CELL_TRAIN_S} s and says so)"
echo "  record: $RECORD"

for f in tests/test_precision.py benchmarks/cuda_tests.py benchmarks/throughput.py benchmarks/rebias_cell.py \
         notebooks/profiles/05_rebias.yaml; do
  [[ -f "$f" ]] || { echo "missing file: $f" >&2; exit 2; }
done
"$PY" -c "import torch, torchvision, numpy, pandas, yaml, tqdm" || { echo "missing python packages" >&2; exit 2; }
if (( ! DRY )); then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA GPU visible: run with --dry-run on CPU machines" >&2; exit 2; }
fi
GPU_CHECK_DRY=$DRY "$PY" - <<'EOF' || exit 2
from helpers.data.mnist import RAW_FILES, raw_dir
import importlib.util, os, sys
missing = [n for n in RAW_FILES if not (raw_dir() / n).is_file()]
print(f"MNIST: {raw_dir()} " + ("complete" if not missing else f"MISSING {missing}"))
if missing and os.environ["GPU_CHECK_DRY"] != "1":  # the real run needs it; a dry run only reports
    sys.exit("MNIST is absent and this machine has no network: carry data/MNIST/raw (or set SHORTCUT_BOOK_DATA)")
# the GPU machine lacks grad-cam and ART: nothing the check imports may pull them in
modules = {}
for path in ("benchmarks/cuda_tests.py", "benchmarks/throughput.py", "benchmarks/rebias_cell.py"):
    spec = importlib.util.spec_from_file_location(path.split("/")[-1][:-3], path)
    modules[path] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(modules[path])
modules["benchmarks/cuda_tests.py"].collect()  # imports tests/test_precision.py (with a pytest stand-in if needed)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"pytorch_grad_cam", "art", "papermill", "IPython"})
if heavy:
    sys.exit(f"the check imports {heavy}, which the GPU machine does not have")
print("imports: no grad-cam / ART / Jupyter needed")
EOF

stage() {  # name, limit, command...: run with a hard timeout, remember the exit status
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  echo "$rc $((SECONDS - t0))" > "$WORK/$name.rc"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
}
stage cuda_tests "$T_TESTS" "$PY" benchmarks/cuda_tests.py --json "$WORK/cuda_tests.json" ${ARGS[@]+"${ARGS[@]}"}
stage throughput "$T_THROUGHPUT" "$PY" benchmarks/throughput.py --epochs 1 --workers 4 \
  --json "$WORK/throughput.json" ${ARGS[@]+"${ARGS[@]}"}
stage rebias_cell "$T_CELL" "$PY" benchmarks/rebias_cell.py --rho 0.997 --epochs 80 --train-size -1 \
  --budget-s "$CELL_TRAIN_S" --json "$WORK/rebias_cell.json" ${ARGS[@]+"${ARGS[@]}"}

"$PY" - "$WORK" "$RECORD" "$DRY" <<'EOF'
import json, subprocess, sys
from pathlib import Path

import torch

work, record, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
out = {"dry_run": dry, "torch": torch.__version__,
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "stages": {}}
try:
    out["git_commit"] = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                       text=True).stdout.strip() or None
except OSError:
    out["git_commit"] = None
for name in ("cuda_tests", "throughput", "rebias_cell"):
    rc, secs = (work / f"{name}.rc").read_text().split()
    part = work / f"{name}.json"
    out["stages"][name] = {"exit": int(rc), "wall_s": int(secs),
                           "result": json.loads(part.read_text()) if part.is_file() else None}
record.write_text(json.dumps(out, indent=2) + "\n")
failed = [n for n, s in out["stages"].items() if s["exit"] != 0]
print(f"record: {record}" + (f"; FAILED: {failed}" if failed else "; all stages passed"))
sys.exit(1 if failed else 0)
EOF
rc=$?
if [[ -n "${OUT:-}" && -d "${OUT:-}" ]] && (( ! DRY )); then cp "$RECORD" "$OUT/"; fi
(( DRY )) && rm -rf "$WORK"
exit $rc
