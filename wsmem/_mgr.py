"""Which workspace each kind of array lives in (DL4J's LayerWorkspaceMgr).

A training loop allocates several kinds of arrays with different lifetimes:
activations live for a whole forward/backward pass, working memory only for
one layer, updater state for one update.  :class:`WorkspaceMgr` maps each
:class:`ArrayType` to a named workspace (or to the plain heap, "scoped out")
so that layer code asks for "an ACTIVATIONS array" and never names a
workspace itself.

Workspaces are looked up in the per-thread registry
(:func:`wsmem.get_workspace`), so one manager serves every thread and each
thread gets its own workspaces.
"""
from __future__ import annotations

import enum
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, ContextManager

import numpy.typing as npt

from wsmem._array import WsArray, empty as _empty
from wsmem._config import WorkspaceConfig
from wsmem._errors import WorkspaceError, WorkspaceLeakError
from wsmem._registry import _registry, get_workspace
from wsmem._workspace import Workspace, scope_out

__all__ = ["ArrayType", "WorkspaceMode", "WorkspaceMgr"]


class ArrayType(enum.Enum):
    """Kinds of arrays a layer allocates (ND4J/DL4J's ``ArrayType``).

    Members: ``INPUT``, ``ACTIVATIONS``, ``ACTIVATION_GRAD``,
    ``FF_WORKING_MEM``, ``BP_WORKING_MEM``, ``RNN_FF_LOOP_WORKING_MEM``,
    ``RNN_BP_LOOP_WORKING_MEM``, ``UPDATER_WORKING_MEM``, ``FF_CACHE``.

    Examples
    --------
    >>> from wsmem import ArrayType
    >>> ArrayType.ACTIVATIONS
    <ArrayType.ACTIVATIONS: 'activations'>
    >>> len(ArrayType)
    9
    """

    INPUT = "input"
    ACTIVATIONS = "activations"
    ACTIVATION_GRAD = "activation_grad"
    FF_WORKING_MEM = "ff_working_mem"
    BP_WORKING_MEM = "bp_working_mem"
    RNN_FF_LOOP_WORKING_MEM = "rnn_ff_loop_working_mem"
    RNN_BP_LOOP_WORKING_MEM = "rnn_bp_loop_working_mem"
    UPDATER_WORKING_MEM = "updater_working_mem"
    FF_CACHE = "ff_cache"


# ---------------------------------------------------------------- WorkspaceMode

_DEPRECATED_MODES = ("SINGLE", "SEPARATE")
_HERE = os.path.normcase(os.path.abspath(__file__))
_ENUM_FILE = os.path.normcase(os.path.abspath(enum.__file__))


def _caller_stacklevel() -> int:
    """The warnings.warn stacklevel of the first frame outside this module and enum."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.normcase(
            os.path.abspath(frame.f_code.co_filename)) in (_HERE, _ENUM_FILE):
        frame = frame.f_back
        level += 1
    return level


def _warn_deprecated_mode(name: str) -> None:
    warnings.warn(f"WorkspaceMode.{name} is deprecated (as in DL4J); it is an alias of "
                  f"WorkspaceMode.ENABLED: use WorkspaceMode.ENABLED",
                  DeprecationWarning, stacklevel=_caller_stacklevel())


class _WorkspaceModeMeta(enum.EnumType):
    """Metaclass that serves the deprecated aliases, warning at each use.

    They are not members (``list(WorkspaceMode)`` is ``[NONE, ENABLED]``):
    ``WorkspaceMode.SINGLE`` is a property of the metaclass, which takes
    precedence over the class namespace; ``WorkspaceMode["SINGLE"]`` goes
    through ``__getitem__`` and ``WorkspaceMode("single")`` through
    ``_missing_``.  Every path returns ``ENABLED`` after a DeprecationWarning.
    """

    @property
    def SINGLE(cls) -> "WorkspaceMode":
        _warn_deprecated_mode("SINGLE")
        return cls.ENABLED

    @property
    def SEPARATE(cls) -> "WorkspaceMode":
        _warn_deprecated_mode("SEPARATE")
        return cls.ENABLED

    def __getitem__(cls, name):
        if name in _DEPRECATED_MODES:
            _warn_deprecated_mode(name)
            return cls.ENABLED
        return super().__getitem__(name)


class WorkspaceMode(enum.Enum, metaclass=_WorkspaceModeMeta):
    """Whether a network uses workspaces (DL4J's ``WorkspaceMode``).

    ``NONE``: every array on the plain heap.  ``ENABLED``: the default layout
    of :meth:`WorkspaceMgr.for_mode`.  ``SINGLE`` and ``SEPARATE`` are
    deprecated aliases of ``ENABLED`` (as in DL4J) and emit a
    DeprecationWarning whenever they are used (``WorkspaceMode.SINGLE``,
    ``WorkspaceMode["SINGLE"]``, ``WorkspaceMode("single")``); they are not
    listed when iterating.

    Examples
    --------
    >>> from wsmem import WorkspaceMode
    >>> list(WorkspaceMode)
    [<WorkspaceMode.NONE: 'none'>, <WorkspaceMode.ENABLED: 'enabled'>]
    >>> WorkspaceMode("enabled") is WorkspaceMode.ENABLED
    True
    """

    NONE = "none"
    ENABLED = "enabled"

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            low = value.lower()
            if low.upper() in _DEPRECATED_MODES:
                _warn_deprecated_mode(low.upper())
                return cls.ENABLED
            for member in cls:
                if member.value == low:
                    return member
        return None


def _coerce_mode(mode) -> WorkspaceMode:
    if isinstance(mode, WorkspaceMode):
        return mode
    if isinstance(mode, str):
        try:
            return WorkspaceMode(mode)
        except ValueError:
            pass
        raise ValueError(f"mode={mode!r} is not a workspace mode; use WorkspaceMode.NONE "
                         "or WorkspaceMode.ENABLED (or 'none' / 'enabled')")
    raise TypeError(f"mode must be a wsmem.WorkspaceMode, got {type(mode).__name__}")


# ---------------------------------------------------------------- validation

def _check_type(array_type) -> ArrayType:
    if not isinstance(array_type, ArrayType):
        raise TypeError(f"array type must be a wsmem.ArrayType member (e.g. "
                        f"ArrayType.ACTIVATIONS), got {array_type!r}")
    return array_type


def _check_entry(array_type, name, config) -> tuple[str, WorkspaceConfig]:
    if not isinstance(name, str):
        raise TypeError(f"workspace name for {array_type} must be a str, got "
                        f"{type(name).__name__}")
    if not name:
        raise ValueError(f"workspace name for {array_type} must not be empty")
    if config is None:
        config = WorkspaceConfig()
    elif not isinstance(config, WorkspaceConfig):
        raise TypeError(f"workspace config for {array_type} must be a "
                        f"wsmem.WorkspaceConfig (or None for the default), got "
                        f"{type(config).__name__}")
    return name, config


def _check_array(arr) -> WsArray:
    if not isinstance(arr, WsArray):
        raise TypeError(f"expected a wsmem.WsArray, got {type(arr).__name__}; wrap NumPy "
                        "arrays with wsmem.asarray(x) first")
    return arr


def _where(ws) -> str:
    return "the heap (no workspace)" if ws is None else f"workspace {ws.name!r}"


# ---------------------------------------------------------------- WorkspaceMgr

class WorkspaceMgr:
    """Maps each :class:`ArrayType` to a workspace or to the heap (DL4J's LayerWorkspaceMgr).

    Parameters
    ----------
    mapping : dict[ArrayType, tuple[str, WorkspaceConfig]], optional
        The workspace (name and config) of each array type.  Types that share
        a name share the workspace and must give equal configs.  The
        workspaces themselves come from this thread's registry
        (:func:`wsmem.get_workspace`) when first used, so every thread has
        its own.
    scoped_out : iterable of ArrayType, optional
        Types whose arrays live on the plain heap.  A type may not be both
        mapped and scoped out.  Types in neither are unconfigured: using them
        raises ValueError.

    Notes
    -----
    One manager may serve many threads (each gets its own workspaces); change
    its mapping (``set_workspace``, ``set_scoped_out``) before sharing it.

    Raises
    ------
    TypeError
        A key or scoped-out entry that is not an ArrayType, a value that is
        not a ``(name, config)`` pair, a config that is not a WorkspaceConfig.
    ValueError
        An empty name, a type both mapped and scoped out, one name given two
        different configs.

    Examples
    --------
    >>> import numpy as np, wsmem
    >>> from wsmem import ArrayType, WorkspaceMgr
    >>> cfg = wsmem.WorkspaceConfig()
    >>> mgr = WorkspaceMgr({ArrayType.ACTIVATIONS: ("DOC_ACT", cfg),
    ...                     ArrayType.FF_WORKING_MEM: ("DOC_WORK", cfg)},
    ...                    scoped_out={ArrayType.INPUT})
    >>> with mgr.scope(ArrayType.ACTIVATIONS):
    ...     with mgr.scope(ArrayType.FF_WORKING_MEM):
    ...         tmp = mgr.create(ArrayType.FF_WORKING_MEM, (2, 3), np.float32)
    ...         tmp.fill(1.5)
    ...         act = mgr.leverage_to(ArrayType.ACTIVATIONS, tmp)
    ...     print(tmp.is_valid, act.is_valid, act.workspace.name)
    ...     mgr.validate_array_location(ArrayType.ACTIVATIONS, act)
    ...     total = float(act.numpy().sum())
    False True DOC_ACT
    >>> total
    9.0
    >>> wsmem.destroy_thread_workspaces()
    """

    __slots__ = ("_names", "_configs", "_scoped_out")

    def __init__(self, mapping: Mapping[ArrayType, tuple[str, WorkspaceConfig]] | None = None,
                 scoped_out: Iterable[ArrayType] = ()) -> None:
        # array type -> workspace name; invariant: disjoint from _scoped_out.
        self._names: dict[ArrayType, str] = {}
        # workspace name -> its config; invariant: every value of _names is a key.
        self._configs: dict[str, WorkspaceConfig] = {}
        self._scoped_out: set[ArrayType] = set()
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise TypeError(f"mapping must be a dict of ArrayType -> (name, WorkspaceConfig), "
                            f"got {type(mapping).__name__}")
        if isinstance(scoped_out, (str, bytes, ArrayType)) or not isinstance(scoped_out,
                                                                             Iterable):
            raise TypeError(f"scoped_out must be a set (or other iterable) of ArrayType, "
                            f"got {scoped_out!r}")
        for array_type, entry in mapping.items():
            _check_type(array_type)
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise TypeError(f"mapping[{array_type}] must be a (name, WorkspaceConfig) "
                                f"tuple, got {entry!r}")
            self.set_workspace(array_type, *entry)
        for array_type in scoped_out:
            _check_type(array_type)
            if array_type in self._names:
                raise ValueError(f"{array_type} is both mapped to workspace "
                                 f"{self._names[array_type]!r} and scoped out; pick one")
            self._scoped_out.add(array_type)

    # ------------------------------------------------------------ factories
    @classmethod
    def no_workspaces(cls) -> "WorkspaceMgr":
        """A manager that puts every array type on the plain heap.

        Examples
        --------
        >>> from wsmem import ArrayType, WorkspaceMgr
        >>> WorkspaceMgr.no_workspaces().is_scoped_out(ArrayType.ACTIVATIONS)
        True
        """
        return cls({}, scoped_out=set(ArrayType))

    @classmethod
    def for_mode(cls, mode: WorkspaceMode | str) -> "WorkspaceMgr":
        """The default manager for a :class:`WorkspaceMode` (as DL4J's networks build it).

        ``NONE`` gives :meth:`no_workspaces`.  ``ENABLED`` (and its deprecated
        aliases, which warn) gives:

        - ACTIVATIONS, ACTIVATION_GRAD: ``"WS_LAYER_ACT"``
        - FF_WORKING_MEM, BP_WORKING_MEM: ``"WS_LAYER_WORKING_MEM"``
        - RNN_FF_LOOP_WORKING_MEM, RNN_BP_LOOP_WORKING_MEM:
          ``"WS_RNN_LOOP_WORKING_MEM"``
        - UPDATER_WORKING_MEM: ``"WS_UPDATER_WORKING_MEM"``
        - INPUT, FF_CACHE: the heap (scoped out)

        Every workspace learns its size in the first cycle
        (``learning="first_loop"``) and spills to separate memory when a later
        cycle needs more (``spill="external"``).

        Parameters
        ----------
        mode : WorkspaceMode or str

        Examples
        --------
        >>> from wsmem import ArrayType, WorkspaceMgr, WorkspaceMode
        >>> mgr = WorkspaceMgr.for_mode(WorkspaceMode.ENABLED)
        >>> mgr.workspace_name(ArrayType.ACTIVATION_GRAD)
        'WS_LAYER_ACT'
        >>> mgr.is_scoped_out(ArrayType.INPUT)
        True
        """
        mode = _coerce_mode(mode)
        if mode is WorkspaceMode.NONE:
            return cls.no_workspaces()
        cfg = WorkspaceConfig(learning="first_loop", spill="external")
        return cls({
            ArrayType.ACTIVATIONS: ("WS_LAYER_ACT", cfg),
            ArrayType.ACTIVATION_GRAD: ("WS_LAYER_ACT", cfg),
            ArrayType.FF_WORKING_MEM: ("WS_LAYER_WORKING_MEM", cfg),
            ArrayType.BP_WORKING_MEM: ("WS_LAYER_WORKING_MEM", cfg),
            ArrayType.RNN_FF_LOOP_WORKING_MEM: ("WS_RNN_LOOP_WORKING_MEM", cfg),
            ArrayType.RNN_BP_LOOP_WORKING_MEM: ("WS_RNN_LOOP_WORKING_MEM", cfg),
            ArrayType.UPDATER_WORKING_MEM: ("WS_UPDATER_WORKING_MEM", cfg),
        }, scoped_out={ArrayType.INPUT, ArrayType.FF_CACHE})

    # ------------------------------------------------------------ configuration
    def set_workspace(self, array_type: ArrayType, name: str,
                      config: WorkspaceConfig | None = None) -> None:
        """Put `array_type` in workspace `name` (no longer scoped out).

        Parameters
        ----------
        array_type : ArrayType
        name : str
            Workspace name; types that share it share the workspace.
        config : WorkspaceConfig, optional
            Must equal the config of other types already mapped to `name`.
        """
        _check_type(array_type)
        name, config = _check_entry(array_type, name, config)
        known = self._configs.get(name)
        if known is not None and known != config:
            others = sorted(str(t) for t, n in self._names.items()
                            if n == name and t is not array_type)
            if others:
                raise ValueError(f"workspace {name!r} is already used by {', '.join(others)} "
                                 f"with a different config; give {array_type} the same "
                                 "config or another workspace name")
        self._scoped_out.discard(array_type)
        self._names[array_type] = name
        self._configs[name] = config
        self._drop_unused_configs()

    def set_scoped_out(self, array_type: ArrayType) -> None:
        """Put `array_type` on the plain heap (no workspace)."""
        _check_type(array_type)
        self._names.pop(array_type, None)
        self._scoped_out.add(array_type)
        self._drop_unused_configs()

    def _drop_unused_configs(self) -> None:
        used = set(self._names.values())
        for name in [n for n in self._configs if n not in used]:
            del self._configs[name]

    def is_scoped_out(self, array_type: ArrayType) -> bool:
        """True when `array_type` lives on the heap."""
        return _check_type(array_type) in self._scoped_out

    def workspace_name(self, array_type: ArrayType) -> str | None:
        """Name of `array_type`'s workspace, or None when it is scoped out."""
        if self._lookup(array_type) is None:
            return None
        return self._names[array_type]

    def workspace_config(self, array_type: ArrayType) -> WorkspaceConfig | None:
        """Config of `array_type`'s workspace, or None when it is scoped out."""
        name = self._lookup(array_type)
        return None if name is None else self._configs[name]

    def _lookup(self, array_type) -> str | None:
        """Workspace name of a configured type; None when scoped out."""
        if not isinstance(array_type, ArrayType):
            _check_type(array_type)
        name = self._names.get(array_type)
        if name is not None:
            return name
        if array_type in self._scoped_out:
            return None
        raise ValueError(f"{array_type} has no workspace in this WorkspaceMgr; configure it "
                         f"with mgr.set_workspace({array_type}, name, config) or "
                         f"mgr.set_scoped_out({array_type})")

    # ------------------------------------------------------------ workspaces
    def workspace(self, array_type: ArrayType) -> Workspace | None:
        """This thread's workspace for `array_type` (created on first use), or None when
        the type is scoped out."""
        name = self._lookup(array_type)
        if name is None:
            return None
        return get_workspace(name, self._configs[name])

    def _open_workspace(self, array_type, name, doing) -> Workspace:
        ws = _registry().get(name)
        if ws is None or ws.is_destroyed or not ws.is_open:
            raise WorkspaceError(
                f"cannot {doing} {array_type}: its workspace {name!r} is not open in this "
                f"thread; wrap the call in `with mgr.scope({array_type}):`")
        return ws

    def is_workspace_open(self, array_type: ArrayType) -> bool:
        """True when `array_type`'s workspace is open in this thread (always True for a
        scoped-out type: the heap is always there)."""
        name = self._lookup(array_type)
        if name is None:
            return True
        ws = _registry().get(name)
        return ws is not None and not ws.is_destroyed and ws.is_open

    def scope(self, array_type: ArrayType) -> Workspace | ContextManager[None]:
        """Context manager that makes `array_type`'s workspace current in this thread.

        Opens a new cycle of the workspace, or re-enters it without a reset
        when it is already open (e.g. a working-memory scope inside an
        activations scope that share a workspace).  For a scoped-out type it
        is :func:`wsmem.scope_out`.

        Returns
        -------
        Workspace or context manager
            The workspace itself (``with mgr.scope(t) as ws:``), or
            ``wsmem.scope_out()`` (binds None) for a scoped-out type.
        """
        name = self._lookup(array_type)
        if name is None:
            return scope_out()
        return get_workspace(name, self._configs[name])

    # ------------------------------------------------------------ arrays
    def create(self, array_type: ArrayType, shape: Any, dtype: npt.DTypeLike = float,
               order: str = "C") -> WsArray:
        """Uninitialized array of `array_type` (DL4J's ``createUninitialized``).

        Allocated in that type's workspace, which must be open in this thread
        (it need not be the innermost one), or on the heap for a scoped-out
        type.

        Raises
        ------
        WorkspaceError
            The type's workspace is not open in this thread.
        """
        name = self._lookup(array_type)
        if name is None:
            with scope_out():
                return _empty(shape, dtype=dtype, order=order)
        return self._open_workspace(array_type, name, "create an array of").empty(
            shape, dtype, order)

    def leverage_to(self, array_type: ArrayType, arr: WsArray) -> WsArray:
        """`arr` in `array_type`'s workspace: itself when it is already there, else a copy.

        For a scoped-out type: `arr` itself when it is on the heap, else a
        heap copy (``arr.detach()``).

        Raises
        ------
        WorkspaceError
            The type's workspace is not open in this thread.
        WorkspaceLeakError
            `arr` is stale.
        """
        _check_array(arr)
        name = self._lookup(array_type)
        if name is None:
            if arr.workspace is None:
                return arr
            return arr.detach()
        return arr.leverage_to(self._open_workspace(array_type, name, "leverage to"))

    def validate_array_location(self, array_type: ArrayType, arr: WsArray) -> None:
        """Check that `arr` lives where `array_type`'s arrays belong.

        That is this thread's workspace of the type (in its current cycle),
        or the heap for a scoped-out type.

        Raises
        ------
        WorkspaceError
            `arr` is elsewhere; the message names the array type, the
            expected place and the actual one.
        WorkspaceLeakError
            `arr` is in the right workspace but from an earlier cycle.
        """
        _check_array(arr)
        name = self._lookup(array_type)
        actual = arr.workspace
        if name is None:
            if actual is None:
                return
            raise WorkspaceError(
                f"{array_type} array is in {_where(actual)}, but {array_type} is scoped out: "
                f"expected the heap (no workspace). Use mgr.leverage_to({array_type}, arr) "
                "(or arr.detach()) to copy it out")
        expected = _registry().get(name)
        if actual is not None and actual is expected and not expected.is_destroyed:
            if not arr.is_valid:
                raise WorkspaceLeakError(
                    f"{array_type} array is in its workspace {name!r} but from an earlier "
                    f"cycle (generation {arr.generation}, workspace now at "
                    f"{expected.stats().generation}); keep it with leverage_to or detach "
                    "before its cycle ends")
            return
        if actual is not None and actual.name == name:
            found = (f"another workspace also named {name!r} (another thread's, or a "
                     "destroyed one)")
        else:
            found = _where(actual)
        raise WorkspaceError(
            f"{array_type} array is in the wrong place: expected workspace {name!r}, found "
            f"it in {found}. Use mgr.leverage_to({array_type}, arr) to copy it there, or "
            f"allocate it with mgr.create({array_type}, ...)")

    def __repr__(self) -> str:
        mapped = ", ".join(f"{t.name}: {n!r}" for t, n in self._names.items())
        out = ", ".join(sorted(t.name for t in self._scoped_out))
        return f"WorkspaceMgr({{{mapped}}}, scoped_out={{{out}}})"
