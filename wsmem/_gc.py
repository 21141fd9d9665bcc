"""Python's cyclic garbage collector, run at workspace cycle boundaries (ND4J's GC window).

CPython starts a collection whenever enough container objects have been
allocated, which in a training loop means in the middle of a step, at a
moment nobody chose.  ND4J's ``setAutoGcWindow`` instead runs the collector
periodically; here it runs where a step ends: when a workspace cycle closes.

:func:`set_gc_window` turns the allocation-count trigger off
(``gc.disable()``) and installs a cycle-end hook that runs a full
``gc.collect()`` at most once per window.  :func:`toggle_periodic_gc`
switches automatic collection off completely, or gives it back to Python.
"""
from __future__ import annotations

import gc
import math
import numbers
import threading
import time

from wsmem._workspace import add_cycle_end_hook, remove_cycle_end_hook

__all__ = ["set_gc_window", "toggle_periodic_gc"]

# The clock of the window (integer nanoseconds, so that window arithmetic is
# exact); tests replace it with a fake one.
_clock = time.monotonic_ns

# Guards the state below.  The hook runs in whatever thread closes a cycle;
# it reads _window_ns/_last_ns without the lock for the fast "not yet" path and
# takes the lock (without blocking) to claim a collection, so two threads
# never both collect for the same window.
_lock = threading.Lock()
# Window length in ns (>= 1) while the hook is installed, else None.
_window_ns: int | None = None
# _clock() at the last collection (or when the window was set).
_last_ns: int = 0
# Number of collections the hook has run (diagnostics and tests).
_collections: int = 0


def _on_cycle_end(workspace) -> None:
    """Cycle-end hook: a full collection when the window has passed."""
    global _last_ns, _collections
    window = _window_ns
    if window is None:
        return
    now = _clock()
    if now - _last_ns < window:
        return
    if not _lock.acquire(blocking=False):
        return                      # another thread is claiming this window
    try:
        if _window_ns is None or now - _last_ns < _window_ns:
            return
        _last_ns = now
        _collections += 1
    finally:
        _lock.release()
    gc.collect()


def set_gc_window(ms: float) -> None:
    """Run Python's garbage collector at workspace cycle ends, at most every `ms` ms.

    Python's automatic collection (triggered by allocation counts, at any
    point of a step) is switched off with ``gc.disable()``.  Instead, when a
    workspace cycle closes (in any thread) and at least `ms` milliseconds
    have passed since the last such collection (or since this call), a
    **full** collection (``gc.collect()``, generation 2) runs.  Full rather
    than generation 0/1: with the allocation trigger off nothing else ever
    examines the older generations, so reference cycles that survived one
    young collection would never be freed; the window is meant to be long
    (hundreds of ms to seconds), which amortizes the cost of a full pass.

    Calling it again changes the window.  :func:`toggle_periodic_gc` undoes it.

    Parameters
    ----------
    ms : int or float
        Minimum time between two collections, in milliseconds (> 0).

    Raises
    ------
    TypeError
        `ms` is not a real number (bools are refused).
    ValueError
        `ms` is not positive and finite.

    Examples
    --------
    >>> import gc, wsmem
    >>> wsmem.set_gc_window(5000)
    >>> gc.isenabled()
    False
    >>> wsmem.toggle_periodic_gc(True)
    >>> gc.isenabled()
    True
    """
    global _window_ns, _last_ns
    if isinstance(ms, bool) or not isinstance(ms, numbers.Real):
        raise TypeError(f"ms must be a number of milliseconds, got {type(ms).__name__}")
    ms = float(ms)
    if not (ms > 0 and math.isfinite(ms)):
        raise ValueError(f"ms={ms} must be a positive, finite number of milliseconds "
                         "(use wsmem.toggle_periodic_gc(False) to stop automatic gc)")
    with _lock:
        gc.disable()
        _window_ns = max(1, round(ms * 1_000_000))
        _last_ns = _clock()
        add_cycle_end_hook(_on_cycle_end)


def toggle_periodic_gc(enabled: bool) -> None:
    """Switch automatic garbage collection off, or give it back to Python.

    Parameters
    ----------
    enabled : bool
        False: no automatic collection at all (``gc.disable()``, and the
        cycle-end hook of :func:`set_gc_window` removed); call
        ``gc.collect()`` yourself.  True: Python's default behaviour
        (``gc.enable()`` with the thresholds unchanged, hook removed).

    Raises
    ------
    TypeError
        `enabled` is not a bool.

    Examples
    --------
    >>> import gc, wsmem
    >>> wsmem.toggle_periodic_gc(False)
    >>> gc.isenabled()
    False
    >>> wsmem.toggle_periodic_gc(True)
    >>> gc.isenabled()
    True
    """
    global _window_ns
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    with _lock:
        remove_cycle_end_hook(_on_cycle_end)
        _window_ns = None
        if enabled:
            gc.enable()
        else:
            gc.disable()


def gc_window_ms() -> float | None:
    """The window set by :func:`set_gc_window` in ms, or None when it is not active."""
    window = _window_ns
    return None if window is None else window / 1_000_000
