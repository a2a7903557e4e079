#!/usr/bin/env bash
# The check a lent GPU runs (an H200: under 8 minutes), one call, everything under $OUT:
#  1. `record` against both peers' scripts on one span (hiverge's, whitening through TTA, beside each
#     recipe's own timer), 25 runs each where the time allows: benchmarks/gpu_bench.py -> $OUT/<date>-<gpu>.csv;
#  2. a series of 50 `record` runs with no warm-up run: the first run's compile and CUDA-graph recording
#     (its warm-up seconds, and its timed seconds against the later runs'), per-run time and peak memory
#     across the series (does either grow with the run number?) -> $OUT/series/runs.csv, $OUT/series.csv;
#  3. the profiler's summary of one run (idle share, phases, kernels, FLOP floor) -> $OUT/profile/.
# Without CUDA it says what it would measure and exits 0.
#
#   OUT=/tmp/check DATA=.carry/cifar10-jpeg.tar.gz bash benchmarks/gpu_check.sh
# Inputs (benchmarks/README.md): the data and both peers' scripts in .carry/ (git-ignored).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
DATA=${DATA:-.carry/cifar10-jpeg.tar.gz}
AIRBENCH=${AIRBENCH:-.carry/airbench94_muon.py}
SPEEDRUN=${SPEEDRUN:-.carry/cifar10_speedrun.py}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    cat <<TEXT
gpu_check: no CUDA device here, so nothing is measured. On a GPU this script would write under \$OUT:
  1. record against airbench94_muon ($AIRBENCH) and cifar10_speedrun ($SPEEDRUN), 25 runs each where
     time allows, on $DATA: each recipe's own timer and hiverge's span (whitening through TTA) for all
     (benchmarks/gpu_bench.py, at most 300 s);
  2. 50 record runs in one process, no warm-up run: run 1's compile and CUDA-graph recording cost, and
     per-run seconds and peak memory across the series (at most 90 s);
  3. the profiler's summary of one record run (benchmarks/profile_run.py, at most 80 s).
TEXT
    exit 0
fi

mkdir -p "$OUT"
for f in "$DATA" "$AIRBENCH" "$SPEEDRUN"; do
    [ -e "$f" ] || { echo "gpu_check: $f is missing (see benchmarks/README.md: carry it in .carry/)"; exit 2; }
done
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee "$OUT/torch.txt"

echo "== 1. record against both peers"
timeout 300 "$PY" benchmarks/gpu_bench.py --data "$DATA" --only record,airbench94_muon,cifar10_speedrun \
    --runs 25 --time-budget 280 --peer airbench94_muon="$AIRBENCH" --peer cifar10_speedrun="$SPEEDRUN" \
    --out "$OUT" --work "$OUT/work"

echo "== 2. a 50-run series, run 1 included"
TORCH_LOGS=recompiles,cudagraphs timeout 90 "$PY" -m hlb_utils train --profile record --runs 50 --warmup-runs 0 \
    --data "$DATA" --out "$OUT/series" --quiet > "$OUT/series.log" 2>&1
"$PY" - "$OUT" <<'PYTHON'
import csv, statistics, sys
out = sys.argv[1]
rows = [r for r in csv.DictReader(open(f"{out}/series/runs.csv")) if r.get("status", "finished") == "finished"]
if rows:
    secs = [float(r["train_seconds"]) for r in rows]
    later = secs[1:] or secs
    half = len(later) // 2
    summary = dict(runs=len(rows), first_compile_seconds=rows[0]["compile_seconds"], first_train_seconds=secs[0],
                   median_later_train_seconds=statistics.median(later),
                   first_half_median=statistics.median(later[:half] or later), second_half_median=statistics.median(later[half:]),
                   peak_memory_mb_first=rows[0]["peak_memory_mb"], peak_memory_mb_last=rows[-1]["peak_memory_mb"])
    with open(f"{out}/series.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary))
        writer.writeheader()
        writer.writerow(summary)
    print(summary)
PYTHON
grep -c "Recompiling\|recompil" "$OUT/series.log" | sed 's/^/recompile lines in the series log: /'

echo "== 3. the profiler's summary"
timeout 80 "$PY" benchmarks/profile_run.py --profile record --data "$DATA" --out "$OUT/profile" | tee "$OUT/profile.txt"
echo "gpu_check: done; files under $OUT"
