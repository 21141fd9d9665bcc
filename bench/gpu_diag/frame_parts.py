# Run from the repository root on a machine with CuPy and a CUDA device:
#   python3 bench/gpu_diag/frame_parts.py
"""What a device workspace's `with ws:` frame costs, hot, and its parts.

Each line is the best of 5 loops of 20,000 calls, in ns per call (loop
overhead included; the "empty call" line is that overhead)."""
import time

import cupy as cp
import numpy as np

import wsmem
from wsmem import _gpu


def best(f, n=20000):
    t = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        t = min(t, (time.perf_counter() - t0) / n)
    return t * 1e9


dev = wsmem.Workspace("frame_parts_dev", location="device")
host = wsmem.Workspace("frame_parts_host")
nocap = wsmem.Workspace("frame_parts_nocap", capture=False)
for _ in range(3):
    with dev:
        cp.empty(1000, cp.float32)
    with host:
        np.empty(1000)


def empty_call():
    pass


def frame_dev():
    with dev:
        pass


def frame_host():
    with host:
        pass


def frame_nocap():
    with nocap:
        pass


def begin_cycle():
    _gpu.begin_cycle(dev)


def old_begin_cycle():          # what begin_cycle did before: enter the device
    with cp.cuda.Device(0):
        s = cp.cuda.get_current_stream()
        s.ptr


def push_pop_allocator():
    _gpu.pop_allocator(_gpu.push_allocator(dev))


def dev_alloc():
    with dev:
        cp.empty(1000, cp.float32)


def pool_alloc():
    cp.empty(1000, cp.float32)


by_id = getattr(_gpu, "_stream_by_id_for_tests", lambda: "n/a (older tree)")()
print(f"cupy {cp.__version__}; stream by device id: {by_id}")
for f in (empty_call, frame_host, frame_nocap, frame_dev, begin_cycle, old_begin_cycle,
          push_pop_allocator, dev_alloc, pool_alloc):
    print(f"  {f.__name__:20s} {best(f):8.0f} ns")
