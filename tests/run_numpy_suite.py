"""Run NumPy's own test suite with every test body inside a wsmem cycle.

Usage (from the repository root, wsmem importable)::

    python tests/run_numpy_suite.py [--modes plain,capture,spill_everything]
                                    [--jobs N] [--out FILE] [PYARGS...]

``PYARGS`` are the packages handed to ``pytest --pyargs`` (default:
``numpy``, the whole installed suite).  Each mode is one pytest run in its
own process, ``N`` of them at a time (default 1):

- ``plain``: NumPy's suite as installed, the reference;
- ``capture``: ``--wsmem-capture`` (wsmem's pytest plugin): the body of every
  test runs inside ``with ws:`` of one workspace, so NumPy allocates the
  test's arrays there and frees them through wsmem's handler, in that cycle
  or any later one;
- ``spill_everything``: ``--wsmem-spill-everything``: the same, with every
  allocation in its own mapping, unmapped once its cycle has ended and it
  died, so a read of memory the arena has taken back faults or fails.

Then every test's outcome (from the JUnit XML of each run) is compared with
the plain run's.  A test that passes (or is skipped, or xfails) in the plain
run and fails or errors in a wsmem mode is a regression; so is a run that
crashed (no XML, or a pytest exit status other than 0 or 1).  Prints a
summary (and writes it to ``--out`` when given); exits 1 on any regression.

Fixtures run outside the cycle, and so does code in other threads (NumPy's
handler is per thread): see ``wsmem.pytest_plugin``.
"""
import argparse
import collections
import concurrent.futures
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

MODES = {"plain": [], "capture": ["--wsmem-capture"],
         "spill_everything": ["--wsmem-spill-everything"]}
BAD = ("failed", "error")


def outcomes(xml_path):
    """{test id: outcome} from a pytest JUnit XML file."""
    result = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        tid = f"{case.get('classname', '')}::{case.get('name', '')}"
        tags = {child.tag for child in case}
        if "failure" in tags:
            state = "failed"
        elif "error" in tags:
            state = "error"
        elif "skipped" in tags:
            state = "skipped"
        else:
            state = "passed"
        # a test can appear twice (an error in teardown after a pass): keep the worst
        if result.get(tid) not in BAD:
            result[tid] = state
    return result


def plugin_args():
    """Load wsmem's pytest plugin by hand unless its entry point is installed
    (a checkout on PYTHONPATH has none)."""
    import importlib.metadata
    eps = importlib.metadata.entry_points(group="pytest11")
    if any(ep.value == "wsmem.pytest_plugin" for ep in eps):
        return []
    return ["-p", "wsmem.pytest_plugin"]


def run_mode(mode, pyargs, workdir):
    xml = os.path.join(workdir, f"{mode}.xml")
    cmd = [sys.executable, "-m", "pytest", "--pyargs", *pyargs, "-q", "-p", "no:cacheprovider",
           "-W", "ignore", f"--junitxml={xml}", *plugin_args(), *MODES[mode]]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    tail = [ln for ln in lines[-40:] if ln.startswith("wsmem --wsmem-capture:")
            or re.match(r"=* ?\d+ (passed|failed|error)", ln)]
    return {"mode": mode, "cmd": cmd, "rc": proc.returncode, "elapsed": elapsed,
            "xml": xml if os.path.exists(xml) else None, "tail": tail,
            "stderr": proc.stderr[-2000:]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="plain,capture,spill_everything")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at a time (default 1: NumPy's big-memory tests check "
                         "the free memory before they start, and runs side by side "
                         "defeat that check)")
    ap.add_argument("--out", help="also write the summary to this file")
    ap.add_argument("pyargs", nargs="*", default=["numpy"])
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown or "plain" not in modes:
        ap.error(f"--modes takes 'plain' and any of {sorted(MODES)}; got {args.modes!r}")

    import numpy
    import wsmem
    with tempfile.TemporaryDirectory(prefix="wsmem-numpy-suite-") as workdir:
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            runs = list(pool.map(lambda m: run_mode(m, args.pyargs, workdir), modes))
        found = {r["mode"]: outcomes(r["xml"]) for r in runs if r["xml"]}

    head = [f"command: python tests/run_numpy_suite.py {' '.join(argv or sys.argv[1:])}".rstrip(),
            f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S%z}; "
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs; Python "
            f"{platform.python_version()}, NumPy {numpy.__version__}, wsmem {wsmem.__version__}",
            f"suite: pytest --pyargs {' '.join(args.pyargs)}", ""]
    body, bad = [], False
    base = found.get("plain", {})
    for r in runs:
        mode = r["mode"]
        counts = collections.Counter(found.get(mode, {}).values())
        body.append(f"{mode}: exit status {r['rc']}, {r['elapsed']:.0f} s, "
                    + ", ".join(f"{counts[k]} {k}" for k in
                                ("passed", "skipped", "failed", "error")))
        body.extend("  " + ln for ln in r["tail"])
        if r["xml"] is None or r["rc"] not in (0, 1):
            bad = True
            body.append(f"  CRASHED or did not run (exit status {r['rc']}); stderr tail:")
            body.extend("    " + ln for ln in r["stderr"].splitlines()[-15:])
            continue
        if mode == "plain":
            continue
        got = found[mode]
        regressions = sorted(t for t, s in got.items() if s in BAD and base.get(t) not in BAD)
        missing = sorted(set(base) - set(got))
        body.append(f"  against plain: {len(regressions)} regressions (fail or error here "
                    f"only), {len(missing)} tests not run here")
        body.extend(f"    REGRESSION {t}: {got[t]}" for t in regressions[:50])
        body.extend(f"    NOT RUN {t}" for t in missing[:20])
        bad = bad or bool(regressions) or bool(missing)
    body.append("")
    body.append("result: " + ("REGRESSIONS (see above)" if bad else
                              "every wsmem mode ran the whole suite with no test failing "
                              "that passes in the plain run"))
    text = "\n".join(head + body) + "\n"
    print(text, end="")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
