"""Run the test suite against an AddressSanitizer build of wsmem.

Usage (from the repository root)::

    python tests/run_asan.py [pytest args...]    # default: tests -q, less the mimalloc workers

1. copies the tracked (and untracked, not ignored) files of the checkout to
   a scratch directory (``--tree DIR``, default /tmp/wsmem-asan), so that the
   normal in-place build is not replaced;
2. builds the extensions there with ``WSMEM_SANITIZE=address`` (setup.py:
   ``-fsanitize=address -O1 -g -fno-omit-frame-pointer``);
3. runs pytest there with the sanitizer runtime preloaded
   (``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``: CPython itself is
   not instrumented, so the runtime must come first) and
   ``ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:log_path=...``.
   Leak detection is off because CPython does not free everything at exit
   by design; ``allocator_may_return_null`` lets tests that ask NumPy for
   absurd sizes get their MemoryError instead of an ASan abort;
   ``verify_asan_link_order=0`` lets the benchmark workers run, which replace
   LD_PRELOAD with jemalloc/mimalloc (the runtime is then loaded as a
   dependency of the instrumented wsmem modules, and still reports).
   ``PYTHONMALLOC=malloc`` makes every Python object its own malloc block.
4. classifies every report in the logs: a report with a frame in a wsmem
   extension module is ours.  Exits 1 on any report, or on a pytest failure.

Subprocesses started by tests inherit the preload and write their reports to
the same log directory, so interpreter-exit, fork and CLI tests are covered.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WSMEM_FRAME = re.compile(r"wsmem/_(arena|array|capture|workspace|pages)|pyx/wsmem/")


def copy_tree(dest):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = os.path.join(ROOT, f)
        if not os.path.isfile(src):
            continue
        dst = os.path.join(dest, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)


def main(argv):
    tree = "/tmp/wsmem-asan"
    if argv[:1] == ["--tree"]:
        tree, argv = argv[1], argv[2:]
    # The benchmark workers preloaded with mimalloc die at start under ASan
    # (two allocators replacing malloc): not wsmem's code, left out by default.
    args = argv or ["tests", "-q", "-p", "no:cacheprovider",
                    "-k", "not mimalloc and not bench_rounds_override"]
    os.makedirs(tree, exist_ok=True)
    # Generated C from an earlier run may look newer than the copied sources
    # (copy2 keeps their mtimes), and cythonize would then reuse it.
    for stale in glob.glob(os.path.join(tree, "pyx", "wsmem", "*.c")):
        os.remove(stale)
    copy_tree(tree)
    logdir = os.path.join(tree, "asan-logs")
    shutil.rmtree(logdir, ignore_errors=True)
    os.makedirs(logdir)
    print(f"+ building with WSMEM_SANITIZE=address in {tree}", flush=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j2", "--force"],
                   cwd=tree, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, WSMEM_SANITIZE="address"))
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    # libstdc++ after the runtime: a C++ extension (matplotlib's ft2font)
    # throwing an exception otherwise hits ASan's __cxa_throw interceptor
    # before the real one is resolved, and ASan aborts the process.
    libstdcxx = subprocess.run(["gcc", "-print-file-name=libstdc++.so.6"],
                               capture_output=True, text=True).stdout.strip()
    if os.path.isabs(libstdcxx) and os.path.exists(libstdcxx):
        libasan = f"{libasan} {os.path.realpath(libstdcxx)}"
    env = dict(os.environ, LD_PRELOAD=libasan, PYTHONMALLOC="malloc", PYTHONPATH=tree,
               ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:verify_asan_link_order=0:"
                            f"log_path={logdir}/asan")
    cmd = [sys.executable, "-m", "pytest", *args]
    print("+ LD_PRELOAD=" + libasan, "ASAN_OPTIONS=" + env["ASAN_OPTIONS"],
          "PYTHONMALLOC=malloc", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=tree, env=env)
    reports = []
    for log in sorted(glob.glob(os.path.join(logdir, "asan.*"))):
        text = open(log, errors="replace").read()
        reports += [r for r in re.split(r"(?m)^=+\n(?===\d+==ERROR)", text) if "==ERROR" in r]
    ours = [r for r in reports if WSMEM_FRAME.search(r)]
    print(f"\nAddressSanitizer: {len(reports)} reports in all (logs: {logdir})")
    print(f"  with a wsmem frame: {len(ours)}")
    for r in reports[:10]:
        print(r[:3000], "\n")
    print(f"pytest exit status under ASan: {rc}")
    return 1 if (reports or rc) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
