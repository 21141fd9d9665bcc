"""Workspace configuration: policies as enums, and the validated config."""
from __future__ import annotations

import dataclasses
import enum
import os
from typing import TYPE_CHECKING

__all__ = [
    "AllocationPolicy", "LearningPolicy", "SpillPolicy", "ResetPolicy",
    "Location", "DebugMode", "WorkspaceConfig",
]


class _Policy(str, enum.Enum):
    """A policy enum whose members also accept their string values."""

    @classmethod
    def coerce(cls, value, field):
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{field}={value!r} is not valid; use one of {choices} "
                         f"(or wsmem.{cls.__name__}.*)")

    def __str__(self):
        return self.value


class AllocationPolicy(_Policy):
    """How much to reserve: exactly the need, or the need plus overallocation_limit."""
    STRICT = "strict"
    OVERALLOCATE = "overallocate"


class LearningPolicy(_Policy):
    """When the workspace sizes its block from measured cycles."""
    NONE = "none"
    FIRST_LOOP = "first_loop"
    OVER_TIME = "over_time"


class SpillPolicy(_Policy):
    """What happens when the block is full."""
    EXTERNAL = "external"
    REALLOCATE = "reallocate"
    FAIL = "fail"


class ResetPolicy(_Policy):
    """When the bump pointer goes back to the start."""
    BLOCK_LEFT = "block_left"
    ENDOFBUFFER_REACHED = "endofbuffer_reached"


class Location(_Policy):
    """Where the workspace's pages live."""
    HOST = "host"
    PINNED = "pinned"
    DEVICE = "device"
    MMAP = "mmap"


class DebugMode(_Policy):
    """Process-wide debug switches (see :func:`wsmem.debug_mode`)."""
    DISABLED = "disabled"
    SPILL_EVERYTHING = "spill_everything"
    BYPASS_EVERYTHING = "bypass_everything"


def _size(name, value):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int number of bytes, got bool")
    if not isinstance(value, int):
        try:
            import operator
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int number of bytes, got "
                            f"{type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{name}={value} is negative; sizes are bytes >= 0")
    if value >= 1 << 62:
        raise ValueError(f"{name}={value} is larger than any machine can map")
    return int(value)


@dataclasses.dataclass(frozen=True)
class WorkspaceConfig:
    """Configuration of a :class:`~wsmem.Workspace` (ND4J's WorkspaceConfiguration).

    Sizes are bytes.  Strings are accepted wherever a policy enum is.

    Parameters
    ----------
    initial_size : int
        Block reserved at creation (``allocation="overallocate"`` adds
        ``overallocation_limit`` to it).
    min_size, max_size : int
        Bounds of the learned block; ``max_size`` also bounds block plus
        spills in one cycle (0 = unlimited).
    overallocation_limit : float
        Fraction added to the learned (or initial) size.
    cycles_before_init : int
        Cycles measured before ``learning="over_time"`` sizes the block.
    allocation, learning, spill, reset, location
        Policies; see :class:`AllocationPolicy`, :class:`LearningPolicy`,
        :class:`SpillPolicy`, :class:`ResetPolicy`, :class:`Location`.
    device : int or None
        CUDA device for ``"device"`` and ``"pinned"`` workspaces.
    mmap_path : str or None
        File behind an ``"mmap"`` workspace (a temporary file if None).
    alignment : int or None
        Byte alignment of every allocation (default 64 host, 256 device).
    capture : bool
        Whether ``with ws:`` routes NumPy's own allocations here.
    track : bool
        Record allocation tracebacks for :meth:`Workspace.leaks`
        (``WSMEM_TRACK=1`` turns it on everywhere).

    Examples
    --------
    >>> import wsmem
    >>> cfg = wsmem.WorkspaceConfig(initial_size=1 << 20, spill="fail")
    >>> cfg.spill
    <SpillPolicy.FAIL: 'fail'>
    >>> cfg.replace(max_size=4 << 20).max_size
    4194304
    """

    initial_size: int = 0
    min_size: int = 0
    max_size: int = 0
    overallocation_limit: float = 0.3
    cycles_before_init: int = 0
    allocation: AllocationPolicy = AllocationPolicy.OVERALLOCATE
    learning: LearningPolicy = LearningPolicy.FIRST_LOOP
    spill: SpillPolicy = SpillPolicy.EXTERNAL
    reset: ResetPolicy = ResetPolicy.BLOCK_LEFT
    location: Location = Location.HOST
    device: int | None = None
    mmap_path: str | None = None
    alignment: int | None = None
    capture: bool = True
    track: bool = False

    if TYPE_CHECKING:
        # What type checkers see: policies may be given as enums or as their
        # strings (__post_init__ coerces them); the fields hold the enums.
        def __init__(self, initial_size: int = 0, min_size: int = 0, max_size: int = 0,
                     overallocation_limit: float = 0.3, cycles_before_init: int = 0,
                     allocation: AllocationPolicy | str = AllocationPolicy.OVERALLOCATE,
                     learning: LearningPolicy | str = LearningPolicy.FIRST_LOOP,
                     spill: SpillPolicy | str = SpillPolicy.EXTERNAL,
                     reset: ResetPolicy | str = ResetPolicy.BLOCK_LEFT,
                     location: Location | str = Location.HOST, device: int | None = None,
                     mmap_path: str | None = None, alignment: int | None = None,
                     capture: bool = True, track: bool = False) -> None: ...

    def __post_init__(self):
        set_ = object.__setattr__
        for name in ("initial_size", "min_size", "max_size", "cycles_before_init"):
            set_(self, name, _size(name, getattr(self, name)))
        try:
            over = float(self.overallocation_limit)
        except (TypeError, ValueError):
            raise TypeError("overallocation_limit must be a float, got "
                            f"{type(self.overallocation_limit).__name__}") from None
        if not (0.0 <= over <= 1000.0):
            raise ValueError(f"overallocation_limit={over} must be between 0 and 1000 "
                             "(0.3 reserves 30% more than the learned need)")
        set_(self, "overallocation_limit", over)
        set_(self, "allocation", AllocationPolicy.coerce(self.allocation, "allocation"))
        set_(self, "learning", LearningPolicy.coerce(self.learning, "learning"))
        set_(self, "spill", SpillPolicy.coerce(self.spill, "spill"))
        set_(self, "reset", ResetPolicy.coerce(self.reset, "reset"))
        set_(self, "location", Location.coerce(self.location, "location"))
        if self.max_size and self.min_size > self.max_size:
            raise ValueError(f"min_size={self.min_size} exceeds max_size={self.max_size}; "
                             "raise max_size or lower min_size")
        if self.max_size and self.initial_size > self.max_size:
            raise ValueError(f"initial_size={self.initial_size} exceeds max_size="
                             f"{self.max_size}; raise max_size or lower initial_size")
        if self.alignment is not None:
            a = _size("alignment", self.alignment)
            if a == 0 or a & (a - 1) or a > 1 << 21:
                raise ValueError(f"alignment={self.alignment} must be a power of two "
                                 "between 1 and 2 MiB")
            set_(self, "alignment", a)
        if self.device is not None:
            if isinstance(self.device, bool) or not isinstance(self.device, int) or self.device < 0:
                raise ValueError(f"device={self.device!r} must be a CUDA device id >= 0 or None")
            if self.location in (Location.HOST, Location.MMAP):
                raise ValueError(f"device={self.device} only applies to location='device' "
                                 "or 'pinned'")
        if self.reset is ResetPolicy.ENDOFBUFFER_REACHED:
            if self.learning is not LearningPolicy.NONE or self.initial_size == 0:
                raise ValueError("reset='endofbuffer_reached' (a circular workspace) needs "
                                 "learning='none' and initial_size > 0: the ring's size, as "
                                 "in ND4J (it grows by itself when an item does not fit)")
            if self.location is Location.MMAP:
                raise ValueError("a circular workspace cannot be file-backed: its ring "
                                 "grows; use location='host'")
        if self.location is Location.MMAP:
            if self.learning is not LearningPolicy.NONE:
                raise ValueError("location='mmap' needs learning='none' (a file-backed "
                                 "block has a fixed size, as in ND4J); pass learning='none'")
            if self.initial_size == 0:
                raise ValueError("location='mmap' needs initial_size > 0: the size of the "
                                 "file-backed block")
            if self.spill is SpillPolicy.REALLOCATE:
                raise ValueError("location='mmap' cannot use spill='reallocate': the "
                                 "file-backed block has a fixed size; use spill='external' "
                                 "or 'fail'")
        elif self.mmap_path is not None:
            raise ValueError("mmap_path only applies to location='mmap'")
        if self.mmap_path is not None:
            set_(self, "mmap_path", os.fspath(self.mmap_path))
        for flag in ("capture", "track"):
            value = getattr(self, flag)
            if not isinstance(value, (bool, int)) or isinstance(value, int) and value not in (0, 1):
                raise TypeError(f"{flag} must be True or False, got {value!r}")
            set_(self, flag, bool(value))

    @property
    def effective_alignment(self) -> int:
        """The alignment in force: ``alignment``, else 256 on devices, 64 on hosts."""
        if self.alignment is not None:
            return self.alignment
        return 256 if self.location is Location.DEVICE else 64

    def replace(self, **changes) -> "WorkspaceConfig":
        """Return a copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown WorkspaceConfig field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


_tracking_on = False     # set by force_tracking() (e.g. pytest --wsmem-leaks)


def force_tracking(on: bool) -> bool:
    """Turn allocation tracebacks on for workspaces created from now on, as
    WSMEM_TRACK=1 does, without touching the environment of child processes.
    Returns the previous setting."""
    global _tracking_on
    prev, _tracking_on = _tracking_on, bool(on)
    return prev


def tracking_forced() -> bool:
    """True when WSMEM_TRACK=1 (or force_tracking(True)) turns allocation
    tracebacks on everywhere."""
    return _tracking_on or os.environ.get("WSMEM_TRACK", "") not in ("", "0")
