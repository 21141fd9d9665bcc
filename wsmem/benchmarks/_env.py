"""Facts about the machine a benchmark ran on (shared by ``bench`` and ``info``)."""
from __future__ import annotations

import datetime
import os
import platform
import sys

__all__ = ["cpu_model", "transparent_hugepage", "thp_defrag", "hugetlb_pages", "mapping_huge_kib",
           "smaps_of",
           "cupy_status", "cuda_devices", "matplotlib_status", "machine_info"]

_THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"


def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _bracketed_mode(path: str) -> str:
    """The mode in force in a sysfs choice file (its bracketed word), or "unavailable"."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return "unavailable"
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else text


def transparent_hugepage() -> str:
    """The THP mode in force (the bracketed word of the sysfs file), or "unavailable"."""
    return _bracketed_mode(_THP_PATH)


def thp_defrag() -> str:
    """The transparent hugepage defrag mode (bracketed word), or "unavailable"."""
    return _bracketed_mode(_THP_PATH.replace("enabled", "defrag"))


def smaps_of(addr: int) -> dict | None:
    """The /proc/self/smaps entry of this process's mapping that holds
    address `addr`: ``{"start": ..., "end": ..., "size_kib": ...,
    "AnonHugePages": "18432 kB", "VmFlags": "rd wr mr mw me ac hg", ...}``
    (``end`` exclusive), or None where that cannot be read."""
    entry = None
    try:
        with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
            for line in f:
                head, _, rest = line.strip().partition(" ")
                if "-" in head and all(c in "0123456789abcdef-" for c in head):
                    if entry is not None:
                        return entry
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    if lo <= addr < hi:
                        entry = {"start": lo, "end": hi, "size_kib": (hi - lo) // 1024}
                elif entry is not None and head.endswith(":"):
                    entry[head[:-1]] = rest.strip()
    except (OSError, ValueError):
        return None
    return entry


def mapping_huge_kib(addr: int) -> tuple[int, int] | None:
    """(size, AnonHugePages) in KiB of this process's mapping that holds
    address `addr` (/proc/self/smaps), or None where that cannot be read."""
    entry = smaps_of(addr)
    if entry is None or "AnonHugePages" not in entry:
        return None
    return entry["size_kib"], int(entry["AnonHugePages"].split()[0])


def hugetlb_pages() -> str:
    """Explicit (hugetlbfs) huge pages from /proc/meminfo: total, free and size."""
    info = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        return "unavailable"
    if "HugePages_Total" not in info:
        return "unavailable"
    return (f"{info['HugePages_Total']} total, {info.get('HugePages_Free', '?')} free, "
            f"{info.get('Hugepagesize', '?')} each (wsmem uses transparent huge pages, "
            f"not these)")


def cuda_devices() -> list[str]:
    """One line per CUDA device CuPy sees ([] without CuPy or a device)."""
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
        out = []
        for i in range(n):
            p = cupy.cuda.runtime.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
            out.append(f"cuda:{i} {name}, {p['totalGlobalMem'] / 2**30:.1f} GiB, "
                       f"compute capability {p['major']}.{p['minor']}")
        return out
    except Exception:
        return []


def cuda_status() -> str:
    """Why no CUDA device is usable, or how many there are (one line)."""
    try:
        import cupy
    except Exception as exc:
        return f"unavailable: CuPy not importable ({type(exc).__name__})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"unavailable ({type(exc).__name__}: {exc})".splitlines()[0]
    return f"{n} device(s)"


def matplotlib_status() -> str:
    """``"matplotlib X.Y"`` or how to install it (charts are optional)."""
    try:
        import matplotlib
    except ImportError:
        return "not installed (no charts; pip install 'wsmem[plot]')"
    return f"matplotlib {matplotlib.__version__}"


def cupy_status() -> str:
    """``"cupy X.Y.Z"`` when CuPy imports, else why not (one line)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising anything
        return f"not importable ({type(exc).__name__}: {exc})".splitlines()[0]
    return f"cupy {cupy.__version__}"


def machine_info() -> dict:
    """Versions and machine facts recorded with every benchmark result."""
    import numpy as np

    import wsmem

    libc, libc_version = platform.libc_ver()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "libc": f"{libc} {libc_version}".strip() or "unknown",
        "transparent_hugepage": transparent_hugepage(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "wsmem": wsmem.__version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc)
                    .isoformat(timespec="seconds"),
    }


def time_interleaved(fns: dict, rounds: int, steps: int, *, warm: int | None = None,
                     seed: int = 0) -> dict:
    """Seconds per call of each function in ``fns``, one block of ``steps``
    timed calls per function per round, the functions in turn (slow drift
    of the machine hits all alike), ``rounds`` rounds, the garbage
    collector off (as ``timeit`` does).

    A block that follows another function's block starts on that
    function's caches, TLB and heap layout: at rows=8 the first step after
    a block of the same step on other inputs ran 1.6x its steady time, so a
    block's time depended on which function ran before it (an A/A pair, one
    function under two names, read 1.005 instead of 1.00 under a rotated
    order without warm-in: ``bench/results/harness_ab.txt``).
    Two measures keep that out of the comparison:

    - each timed block is preceded by ``warm`` untimed calls of the same
      function (default ``max(1, steps // 5)``);
    - each round runs the functions in a fresh random order (seeded by
      ``seed``, so a run can be repeated): a fixed or rotated order gives
      every function the same predecessor in every round, and a lasting
      effect of that predecessor (glibc's heap left in another layout)
      would be charged to the function as a constant bias instead of
      showing as round-to-round noise.

    Returns ``{name: [seconds per call, per round]}``.
    """
    import gc
    import random
    import time

    if warm is None:
        warm = max(1, steps // 5)
    names = list(fns)
    times: dict = {k: [] for k in names}
    order = list(names)
    rng = random.Random(seed)
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            for k in order:
                f = fns[k]
                for _ in range(warm):
                    f()
                t0 = time.perf_counter()
                for _ in range(steps):
                    f()
                times[k].append((time.perf_counter() - t0) / steps)
    finally:
        gc.enable()
    return times


def parse_cases(parser, cases) -> list:
    """``WORKLOAD:SIZE`` strings (``train:64``, ``cg:90``) of a bench script's
    ``--cases`` as ``(workload, size)`` pairs; anything else is a usage
    error through ``parser`` (an ``argparse.ArgumentParser``)."""
    out = []
    for case in cases:
        workload, _, size = case.partition(":")
        if workload not in ("train", "cg") or not size.isdigit():
            parser.error(f"--cases takes WORKLOAD:SIZE with WORKLOAD train or cg "
                         f"(train:ROWS, cg:N), got {case!r}")
        out.append((workload, int(size)))
    return out


def write_script_results(script: str, name: str, notes: list[str], sections) -> str:
    """Write ``bench/results/<name>.txt`` for a ``bench/*.py`` measurement script.

    The file starts with the command line (``script`` and this process's
    arguments), the date, the machine (CPU, cores, NumPy and wsmem versions,
    BLAS threads), then ``notes``; then each text of the iterable
    ``sections``, printed as it arrives (a slow section shows progress).
    Returns the path written.
    """
    import numpy as np
    import wsmem

    root = os.path.dirname(os.path.dirname(os.path.abspath(script)))
    rel = os.path.relpath(os.path.abspath(script), root)
    out = [f"command: python {rel} {' '.join(sys.argv[1:])}".rstrip(),
           f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S%z}; "
           f"machine: {cpu_model()}, {os.cpu_count()} cores; numpy {np.__version__}, "
           f"wsmem {wsmem.__version__}; OPENBLAS_NUM_THREADS="
           f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}",
           *notes, ""]
    for text in sections:
        print(text, flush=True)
        out += [text, ""]
    path = os.path.join(root, "bench", "results", f"{name}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    print(f"wrote {path}")
    return path


def select_configs(suite, known, configs, available, progress=None, require=()):
    """The configurations a suite runs: `configs` (default: all `known`),
    validated, with `require` added in front, minus the unavailable ones.

    `available(key) -> (ok, note)`.  Returns ``(use, skipped_notes)``; each
    skip is also reported through `progress` as ``"<suite>: <note>"``.
    """
    wanted = list(known if configs is None else configs)
    for k in wanted:
        if k not in known:
            raise ValueError(f"unknown config {k!r}; known: {', '.join(known)}")
    for k in reversed(require):
        if k not in wanted:
            wanted.insert(0, k)
    use, skipped = [], []
    for k in wanted:
        ok, note = available(k)
        if ok:
            use.append(k)
        else:
            skipped.append(note)
            if progress is not None:
                progress(f"{suite}: {note}")
    return use, skipped
