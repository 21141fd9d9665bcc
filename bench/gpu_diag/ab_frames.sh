#!/bin/bash
# A/B of the frame code on the lent GPU machine: the tree against OLD_PYX_DIR,
# a folder of earlier pyx/wsmem files (e.g. `git show SHA:pyx/wsmem/F`) laid
# over the tree for the "old" build:
#   bash bench/gpu_diag/ab_frames.sh OLD_PYX_DIR [ROUNDS] [gpu]
# Both builds' extensions are kept and swapped in turn; each round runs
# bench/gpu_diag/frame_parts.py with each (and, given `gpu`, the gpu bench
# suite's comparison rows).  The tree's files are put back.
set -e
export PYTHONUNBUFFERED=1 PYTHONPATH=.
old=$1; rounds=${2:-2}; suite=$3
python3 setup.py build_ext --inplace -j16 >/tmp/abf_build.log 2>&1
rm -rf /tmp/abf; mkdir -p /tmp/abf/new /tmp/abf/old /tmp/abf/tree
cp wsmem/_*.so /tmp/abf/new/
for f in "$old"/*; do cp "pyx/wsmem/$(basename "$f")" /tmp/abf/tree/; cp "$f" pyx/wsmem/; done
python3 setup.py build_ext --inplace -j16 >>/tmp/abf_build.log 2>&1
cp wsmem/_*.so /tmp/abf/old/
cp /tmp/abf/tree/* pyx/wsmem/
for r in $(seq "$rounds"); do
  for v in old new; do
    cp /tmp/abf/$v/*.so wsmem/
    echo "=== round $r: $v"
    python3 bench/gpu_diag/frame_parts.py
    if [ "$suite" = gpu ]; then
      python3 -m wsmem bench --suite gpu --out /tmp/abf/bench_${v}_$r 2>/dev/null | grep -E '^\| gpu '
    fi
  done
done
cp /tmp/abf/new/*.so wsmem/
