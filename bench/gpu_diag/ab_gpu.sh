#!/bin/bash
# A/B of wsmem._gpu on the lent GPU machine, same machine and process layout:
#   bash bench/gpu_diag/ab_gpu.sh OLD_GPU_PYX [ROUNDS]
# Builds the tree, keeps its _gpu extension as "new", builds OLD_GPU_PYX (an
# earlier pyx/wsmem/_gpu.pyx, e.g. from `git show SHA:pyx/wsmem/_gpu.pyx`) as
# "old", then alternates old/new: bench/gpu_diag/frame_parts.py and the gpu
# bench suite each round.  The tree's _gpu.pyx is put back at the end.
set -e
export PYTHONUNBUFFERED=1 PYTHONPATH=.
old=$1; rounds=${2:-2}
so=$(python3 -c "import sysconfig; print('wsmem/_gpu' + sysconfig.get_config_var('EXT_SUFFIX'))")
python3 setup.py build_ext --inplace -j16 >/tmp/ab_build.log 2>&1
cp "$so" /tmp/gpu_new.so
cp pyx/wsmem/_gpu.pyx /tmp/gpu_tree.pyx
cp "$old" pyx/wsmem/_gpu.pyx
python3 setup.py build_ext --inplace -j16 >>/tmp/ab_build.log 2>&1
cp "$so" /tmp/gpu_old.so
cp /tmp/gpu_tree.pyx pyx/wsmem/_gpu.pyx
for r in $(seq "$rounds"); do
  for v in old new; do
    cp /tmp/gpu_$v.so "$so"
    echo "=== round $r: $v"
    python3 bench/gpu_diag/frame_parts.py
    python3 -m wsmem bench --suite gpu --out /tmp/ab_${v}_$r 2>/dev/null | grep -E '^\| gpu '
  done
done
cp /tmp/gpu_new.so "$so"
