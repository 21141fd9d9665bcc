"""Exceptions raised by wsmem.

Every message says what happened and what to do next.
"""

__all__ = ["WorkspaceError", "WorkspaceLeakError", "WorkspaceOverflowError"]


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
