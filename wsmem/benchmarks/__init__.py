"""Benchmark suites behind ``python -m wsmem bench``.

A suite is a module with three names (and one optional):

- ``DESCRIPTION``: one line for ``--help``;
- ``run(quick=False, *, rounds=None, target_s=None, progress=None) -> dict``:
  measures and returns JSON-ready results (``"suite"``, ``"machine"``,
  ``"method"``, ``"rows"``, ...); ``progress(msg)`` receives one-line status
  messages;
- ``format_table(results) -> str``: the results as a Markdown table;
- optional ``unavailable() -> str | None``: why the suite cannot run on this
  machine (e.g. no CUDA device), or None.  ``bench`` then prints
  ``[NAME] skipped: <reason>`` and goes on with the next suite;
- optional ``comparison(results) -> list[dict]``: rows for the combined
  table (see :mod:`wsmem.benchmarks._compare`; built-in suites are adapted
  there).

Suites are registered by name and imported only when used, so a suite whose
dependencies are missing (e.g. a GPU suite without CuPy) costs nothing until
it is asked for.

>>> from wsmem.benchmarks import get_suite, suite_names
>>> "alloc" in suite_names()
True
>>> get_suite("alloc").load().DESCRIPTION.startswith("allocation")
True
"""
from __future__ import annotations

import dataclasses
import os
import importlib
from types import ModuleType

__all__ = ["Suite", "register_suite", "get_suite", "suite_names", "save_full_run"]


@dataclasses.dataclass(frozen=True)
class Suite:
    """A registered benchmark suite: its name and the module that implements it."""

    name: str
    module: str   # dotted import path of a module with DESCRIPTION, run, format_table
    summary: str  # one line for --help, available without importing the module

    def load(self) -> ModuleType:
        """Import the suite's module (ImportError names the missing dependency)."""
        return importlib.import_module(self.module)


# Registration order is the order in which ``bench`` runs the suites.
_SUITES: dict[str, Suite] = {}


def register_suite(name: str, module: str, summary: str) -> Suite:
    """Register (or replace) the suite ``name`` implemented by ``module``."""
    suite = Suite(name, module, summary)
    _SUITES[name] = suite
    return suite


def get_suite(name: str) -> Suite:
    """The suite registered as ``name``; KeyError lists the known ones."""
    try:
        return _SUITES[name]
    except KeyError:
        raise KeyError(f"no benchmark suite {name!r}; known suites: "
                       f"{', '.join(_SUITES) or 'none'}") from None


def suite_names() -> list[str]:
    """Names of the registered suites, in run order."""
    return list(_SUITES)


register_suite("alloc", "wsmem.benchmarks.alloc",
               "allocation microbenchmark: np.empty vs wsmem.empty / ws.empty / "
               "np.asarray(wsmem.empty), 64 B .. 16 MiB")
register_suite("cyclic", "wsmem.benchmarks.cyclic",
               "cyclic NumPy steps (training-style step, 2-D Poisson CG), one process "
               "per config: glibc, tuned glibc, jemalloc, mimalloc, out= limits (in place, "
               "same calls), wsmem")
register_suite("example", "wsmem.benchmarks.example",
               "worked example: MLP training epoch and evaluation, plain NumPy vs "
               "WorkspaceMgr (+ prefetch), one process per config")
register_suite("gpu", "wsmem.benchmarks.gpu",
               "GPU: CuPy allocation and kernels in device workspaces "
               "(skipped without CuPy and a CUDA device)")


def save_full_run(name: str, script: str, out_name: str | None = None, **run_kwargs) -> str:
    """Run suite `name` in full and keep its results (the ``bench/*.py`` scripts).

    `script` is the calling script's ``__file__``: results go to ``results/``
    beside it, as ``<out_name>.txt`` (command, date, machine, load, the table)
    and ``<out_name>.json`` (every number); `out_name` defaults to `name`.
    `run_kwargs` go to the suite's ``run`` (sizes, configs).  Returns the table.
    """
    import argparse
    import json
    import shlex
    import sys

    here = os.path.dirname(os.path.abspath(script))
    results_dir = os.path.join(here, "results")
    root = os.path.dirname(here)
    rel = os.path.relpath(os.path.abspath(script), root)
    # The scripts take no arguments: --help explains, anything else is refused
    # before minutes of benchmarking overwrite the kept results.
    doc = (sys.modules["__main__"].__doc__ or "").strip()
    argparse.ArgumentParser(prog=f"python {rel}", description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args()
    command = "python " + shlex.quote(rel)

    module = get_suite(name).load()
    results = module.run(quick=False,
                         progress=lambda m: print(m, file=sys.stderr, flush=True),
                         **run_kwargs)
    results["command"] = command
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        load = "unknown"
    results["loadavg_at_end"] = load
    m = results["machine"]
    table = module.format_table(results)
    header = [
        f"command: {command}   (run from the repository root)",
        f"date:    {m['date_utc']}",
        f"machine: {m['cpu_model']}, {m['cpu_count']} logical cores, {m['platform']}, "
        f"{m['libc']}, transparent_hugepage={m['transparent_hugepage']}",
        f"versions: wsmem {m['wsmem']}, numpy {m['numpy']}, "
        f"python {m['python']} ({m['python_implementation']})",
        f"elapsed: {results['elapsed_s']} s; load average at end: {load}",
        "",
    ]
    os.makedirs(results_dir, exist_ok=True)
    out_name = name if out_name is None else out_name
    with open(os.path.join(results_dir, f"{out_name}.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(header) + "\n" + table + "\n")
    with open(os.path.join(results_dir, f"{out_name}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    return table
