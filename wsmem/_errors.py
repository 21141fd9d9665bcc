"""Exceptions raised by wsmem.

Every message says what happened and what to do next.
"""

__all__ = ["WorkspaceError", "WorkspaceLeakError", "WorkspaceOverflowError",
           "PerformanceWarning"]


class WorkspaceError(RuntimeError):
    """A workspace was used in a way its state does not allow.

    Raised for a destroyed workspace, a workspace used from a thread that does
    not own it, a device workspace without CUDA, and similar misuse.
    """


class WorkspaceLeakError(WorkspaceError):
    """An array was used after the workspace cycle it was allocated in.

    The memory behind it may already belong to another array.  Keep arrays
    that must survive a cycle with ``detach()`` (heap copy) or
    ``leverage_to(ws)`` (copy into an outer workspace), or allocate them
    under ``wsmem.scope_out()``.
    """


class WorkspaceOverflowError(WorkspaceError, MemoryError):
    """A workspace could not provide the memory asked for.

    Raised when an allocation would exceed ``max_size``, when the spill policy
    is ``"fail"`` and the block is full, or when the operating system (or the
    CUDA driver) refuses more memory.  ``stats`` holds the workspace's
    :class:`~wsmem.WorkspaceStats` at the time of the failure.  The workspace
    stays usable.
    """

    def __init__(self, message, stats=None):
        super().__init__(message)
        self.stats = stats


class PerformanceWarning(UserWarning):
    """A workspace works, but its configuration makes it slow.

    Issued once per workspace.  Now for one case: a workspace with
    ``spill="external"`` that, after learning, spills into memory of its own
    (an array of 256 KiB or more, or any array of a device or pinned
    workspace) in 8 of its last 16 cycles.  Each such spill is allocated and
    released again every cycle (on the host, a page fault per page), which a
    block sized for the largest cycle avoids; variable-length batches whose
    first batch was a small one do this.  The message gives the sizes and the
    settings that fix it (``spill="reallocate"``, ``learning="over_time"``,
    or a ``min_size``).  Silence it with
    ``warnings.filterwarnings("ignore", category=wsmem.PerformanceWarning)``.
    """
