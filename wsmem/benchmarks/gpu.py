"""GPU benchmark suite (placeholder: CuPy allocation and kernels come later).

``unavailable()`` is the protocol every suite may implement: it returns why
the suite cannot run here (the CLI then prints ``[gpu] skipped: <reason>``
and goes on), or None when it can.
"""
from __future__ import annotations

DESCRIPTION = "GPU: CuPy allocation and kernels in device workspaces (needs CUDA)"


def unavailable() -> str | None:
    """Why this suite cannot run on this machine, or None."""
    try:
        import cupy
    except Exception as exc:   # ImportError, or a broken CUDA install raising anything
        return f"CuPy is not importable ({type(exc).__name__}); pip install 'wsmem[gpu]'"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no CUDA device ({type(exc).__name__}: {exc})".splitlines()[0]
    return None if n > 0 else "no CUDA device"


def run(quick=False, *, tiny=False, rounds=None, progress=None) -> dict:
    raise NotImplementedError("the GPU suite is not written yet")


def format_table(results: dict) -> str:
    raise NotImplementedError("the GPU suite is not written yet")
