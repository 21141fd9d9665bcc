"""Per-thread registry of named workspaces (ND4J's workspace manager)."""
from __future__ import annotations

import threading

from wsmem._config import WorkspaceConfig
from wsmem._errors import WorkspaceError
from wsmem._workspace import Workspace

__all__ = ["get_workspace", "destroy_thread_workspaces", "thread_workspaces"]

_tls = threading.local()


def _registry() -> dict:
    try:
        return _tls.workspaces
    except AttributeError:
        _tls.workspaces = {}
        return _tls.workspaces


def get_workspace(name: str, config: WorkspaceConfig | None = None, **overrides) -> Workspace:
    """Get this thread's workspace called `name`, creating it on first use.

    Parameters
    ----------
    name : str
    config : WorkspaceConfig, optional
        Used when the workspace is created.  Passing a different config for an
        existing workspace raises ValueError (destroy it first).

    Examples
    --------
    >>> import wsmem
    >>> ws = wsmem.get_workspace("doc_loop")
    >>> ws is wsmem.get_workspace("doc_loop")
    True
    >>> wsmem.destroy_thread_workspaces()
    """
    reg = _registry()
    ws = reg.get(name)
    if ws is not None and not ws.is_destroyed:
        if config is not None or overrides:
            want = (config or WorkspaceConfig()).replace(**overrides) if overrides else config
            if want != ws.config:
                raise ValueError(
                    f"workspace {name!r} already exists in this thread with a different "
                    f"config; destroy it first (ws.destroy()) or use another name")
        return ws
    ws = Workspace(name, config, **overrides)
    reg[name] = ws
    return ws


def thread_workspaces() -> dict:
    """A copy of this thread's registry: name -> Workspace."""
    return dict(_registry())


def destroy_thread_workspaces() -> None:
    """Destroy every registered workspace of this thread.

    Raises WorkspaceError, destroying nothing, if any of them is open.
    """
    reg = _registry()
    open_ = [name for name, ws in reg.items() if ws.is_open]
    if open_:
        raise WorkspaceError(f"workspaces {open_} are open; leave their `with` blocks "
                             "before destroying them")
    for ws in list(reg.values()):
        ws.destroy()
    reg.clear()


def _forget(ws) -> None:
    reg = _registry()
    if reg.get(ws.name) is ws:
        del reg[ws.name]
