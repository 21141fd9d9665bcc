"""wsmem: workspace (cyclic arena) memory for NumPy, after ND4J's workspaces.

Code that runs the same step again and again gets its arrays from a workspace
that hands memory out by bumping a pointer and takes it all back at the end of
each cycle.  Arrays that escape their cycle raise WorkspaceLeakError instead
of reading reused memory.

>>> import numpy as np, wsmem
>>> ws = wsmem.Workspace("doc_init")
>>> for _ in range(3):
...     with ws:
...         a = wsmem.empty((64, 256), dtype=np.float32)
...         b = wsmem.zeros_like(a)
...         c = a * 0 + b + 1
...         total = float(c.sum())
>>> total
16384.0
>>> ws.destroy()
"""
from wsmem._config import (AllocationPolicy, DebugMode, LearningPolicy, Location,
                           ResetPolicy, SpillPolicy, WorkspaceConfig)
from wsmem._errors import (PerformanceWarning, WorkspaceError, WorkspaceLeakError,
                           WorkspaceOverflowError)
from wsmem._stats import LeakInfo, WorkspaceHistory, WorkspaceStats
from wsmem._array import (WsArray, asarray, empty, empty_like, full, full_like, ones,
                          ones_like, zeros, zeros_like)
from wsmem._workspace import (HISTORY_LENGTH, Workspace, align_ufunc_buffers, aligned_heap,
                              current_workspace, debug_mode, get_debug_mode_name,
                              heap_is_aligned, scope_out, ufunc_buffers_aligned)
from wsmem._registry import destroy_thread_workspaces, get_workspace, thread_workspaces
from wsmem._mgr import ArrayType, WorkspaceMgr, WorkspaceMode
from wsmem._gc import set_gc_window, toggle_periodic_gc
from wsmem._prefetch import prefetch, shield
from wsmem._plot import plot_history
from wsmem import _fork  # noqa: F401  (os.register_at_fork handlers)

__version__ = "0.1.0"

__all__ = [
    "AllocationPolicy", "DebugMode", "LearningPolicy", "Location", "ResetPolicy",
    "SpillPolicy", "WorkspaceConfig", "WorkspaceError", "WorkspaceLeakError",
    "WorkspaceOverflowError", "PerformanceWarning", "LeakInfo", "WorkspaceHistory", "WorkspaceStats", "WsArray", "Workspace",
    "asarray", "empty", "empty_like", "full", "full_like", "ones", "ones_like", "zeros",
    "zeros_like", "current_workspace", "debug_mode", "get_debug_mode_name", "scope_out",
    "aligned_heap", "heap_is_aligned", "align_ufunc_buffers", "ufunc_buffers_aligned", "destroy_thread_workspaces", "get_workspace", "thread_workspaces",
    "ArrayType", "WorkspaceMgr", "WorkspaceMode", "set_gc_window", "toggle_periodic_gc",
    "prefetch", "shield", "HISTORY_LENGTH", "plot_history",
]
