"""Value types returned by Workspace.stats() and Workspace.leaks()."""
from __future__ import annotations

import dataclasses
import traceback as _tb

import numpy as np

__all__ = ["WorkspaceStats", "LeakInfo"]


@dataclasses.dataclass(frozen=True)
class WorkspaceStats:
    """Counters of one workspace (bytes unless said otherwise).

    ``capacity`` is the reserved block (0 before learning); ``offset`` the bump
    offset in the open cycle (0 when closed); ``cycle_bytes``,
    ``spilled_bytes`` and ``spilled_count`` describe the open cycle, or the
    last one when none is open; ``pinned_bytes`` is memory kept out of reuse
    by live views (line-rounded); ``pages`` counts mapped regions (block,
    spills, and blocks kept alive by views).
    """

    name: str
    location: str
    capacity: int
    offset: int
    cycle_bytes: int
    last_cycle_bytes: int
    peak_cycle_bytes: int
    spilled_bytes: int
    spilled_count: int
    pinned_bytes: int
    cycles: int
    generation: int
    pages: int
    is_open: bool
    initialized: bool


@dataclasses.dataclass(frozen=True)
class LeakInfo:
    """Memory pinned by a view from an earlier cycle (see Workspace.leaks())."""

    nbytes: int
    shape: tuple | None          # None for a NumPy array captured by the workspace
    dtype: np.dtype | None
    generation: int
    traceback: _tb.StackSummary | None = None

    def format(self) -> str:
        """Human-readable description, with the allocation traceback if recorded."""
        what = (f"a view of a {self.shape} {self.dtype} array" if self.shape is not None
                else "a NumPy array allocated in the workspace")
        head = f"{self.nbytes} bytes pinned by {what} from generation {self.generation}"
        if self.traceback is None:
            return head + " (allocation site unknown: set track=True or WSMEM_TRACK=1)"
        return head + ", allocated at:\n" + "".join(self.traceback.format())
