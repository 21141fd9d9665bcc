#!/usr/bin/env bash
# Simulated cache misses per step of one cyclic workload, for the given modes
# of bench/callgrind_step.py (default: aligned emptyws capfalse wsmem).
# usage: bash bench/cachegrind_run.sh train 8 [MODE...]
set -u
wl=${1:-train}; size=${2:-8}; shift 2 || true
modes=${*:-aligned emptyws capfalse wsmem}
PY=$(python -c "import os, sys; print(os.path.realpath(sys.executable))")
echo "command: bash bench/cachegrind_run.sh $wl $size $modes  (valgrind --tool=cachegrind --cache-sim=yes; per step = (count(30 steps) - count(10 steps)) / 20, after 3 warm-up steps; cachegrind's simulated I1/D1/LL for this CPU); date: $(date -u +%F)"
for m in $modes; do
  for n in 10 30; do
    env PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=yes \
      --cachegrind-out-file=/tmp/cachegrind.$m.$n.out "$PY" bench/callgrind_step.py $m $n $wl $size \
      >/dev/null 2>/tmp/cachegrind.$m.$n.err
  done
  python - "$m" <<'PY'
import sys
m = sys.argv[1]
def summary(n):
    for line in open(f"/tmp/cachegrind.{m}.{n}.out"):
        if line.startswith("summary:"):
            return [int(x) for x in line.split()[1:]]
a, b = summary(10), summary(30)
d = [(y - x) / 20 for x, y in zip(a, b)]   # Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw
print(f"{m}: per step: Ir {d[0]:.0f}  I1 misses {d[1]:.1f}  D1 read misses {d[4]:.1f}  "
      f"D1 write misses {d[7]:.1f}")
PY
done
