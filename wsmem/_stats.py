"""Value types returned by Workspace.stats() and Workspace.leaks()."""
from __future__ import annotations

import dataclasses
import traceback as _tb

import numpy as np

__all__ = ["WorkspaceStats", "LeakInfo", "WorkspaceHistory"]


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


_HISTORY_FIELDS = (("cycle", np.uint64), ("capacity", np.uint64),
                   ("capacity_after", np.uint64), ("cycle_bytes", np.uint64),
                   ("spilled_bytes", np.uint64), ("spilled_count", np.uint64),
                   ("pinned_bytes", np.uint64), ("page_faults", np.int64),
                   ("learned", np.bool_))


@dataclasses.dataclass(frozen=True)
class WorkspaceHistory:
    """Per-cycle history of a workspace (see Workspace.history()).

    One element per finished outermost cycle, oldest first; at most
    ``wsmem.HISTORY_LENGTH`` cycles are kept.

    Attributes
    ----------
    name : str
        The workspace's name.
    cycle : numpy.ndarray of uint64
        Cycle number (1 = the workspace's first cycle).
    capacity : numpy.ndarray of uint64
        Bytes of the block the cycle ran with (0 before learning).
    capacity_after : numpy.ndarray of uint64
        Bytes of the block after the cycle (learning or growth changes it).
    cycle_bytes, spilled_bytes, spilled_count : numpy.ndarray of uint64
        What the cycle allocated, and how much of it spilled outside the block.
    pinned_bytes : numpy.ndarray of uint64
        Bytes still pinned by live views when the cycle ended.  Growing
        from cycle to cycle means something keeps views of old cycles: a leak.
    page_faults : numpy.ndarray of int64
        Minor page faults of the thread during the cycle, or -1 where not
        measured (measured only with ``track=True`` or ``WSMEM_TRACK=1``).
    learned : numpy.ndarray of bool
        True for the cycle at whose end learning sized the block.
    """

    name: str
    cycle: np.ndarray
    capacity: np.ndarray
    capacity_after: np.ndarray
    cycle_bytes: np.ndarray
    spilled_bytes: np.ndarray
    spilled_count: np.ndarray
    pinned_bytes: np.ndarray
    page_faults: np.ndarray
    learned: np.ndarray

    @classmethod
    def from_rows(cls, name: str, rows: list) -> "WorkspaceHistory":
        """Build from tuples in the order of the array fields."""
        cols = list(zip(*rows)) if rows else [()] * len(_HISTORY_FIELDS)
        arrays = {f: np.array(c, dtype=t) for (f, t), c in zip(_HISTORY_FIELDS, cols)}
        return cls(name=name, **arrays)

    def __len__(self) -> int:
        return len(self.cycle)

    def as_dict(self) -> dict:
        """The arrays by field name (JSON-ready after ``.tolist()``)."""
        return {f: getattr(self, f) for f, _ in _HISTORY_FIELDS}
