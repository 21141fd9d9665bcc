#!/usr/bin/env bash
# Instructions per step of one cyclic workload for every config, under callgrind.
# usage: bash bench/callgrind_run.sh train 8   (or: cg 90)
set -u
wl=${1:-train}; size=${2:-8}
PY=$(python -c "import os, sys; print(os.path.realpath(sys.executable))")
MI=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2
JE=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
run() {  # name, mode, env...
  local name=$1 mode=$2; shift 2
  local ir=()
  for n in 10 30; do
    env PYTHONHASHSEED=0 "$@" valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$name.$n.out \
      "$PY" bench/callgrind_step.py $mode $n $wl $size >/dev/null 2>/tmp/cg.$name.$n.err
    ir+=($(grep -m1 "^summary:" /tmp/cg.$name.$n.out | awk '{print $2}'))
  done
  echo "$name: instructions/step = $(( (ir[1] - ir[0]) / 20 ))"
}
echo "command: bash bench/callgrind_run.sh $wl $size  (valgrind --tool=callgrind; instructions/step = (Ir(30 steps) - Ir(10 steps)) / 20, after 3 warm-up steps); date: $(date -u +%F)"
run numpy numpy
run glibc_tuned numpy MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
run jemalloc numpy LD_PRELOAD=$JE
run mimalloc numpy LD_PRELOAD=$MI
run limit limit
run wsmem wsmem
