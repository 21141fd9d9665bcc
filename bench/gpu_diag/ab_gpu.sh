#!/bin/bash
# A/B of wsmem._gpu on the lent GPU machine (frame parts and the gpu suite):
#   bash bench/gpu_diag/ab_gpu.sh OLD_GPU_PYX [ROUNDS]
# OLD_GPU_PYX: an earlier pyx/wsmem/_gpu.pyx (`git show SHA:pyx/wsmem/_gpu.pyx`);
# bench/gpu_diag/ab_frames.sh does the builds and the alternating rounds.
set -e
rm -rf /tmp/ab_gpu_old; mkdir -p /tmp/ab_gpu_old
cp "$1" /tmp/ab_gpu_old/_gpu.pyx
exec bash "$(dirname "$0")/ab_frames.sh" /tmp/ab_gpu_old "${2:-2}" gpu
