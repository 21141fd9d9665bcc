"""What a fork() child inherits from wsmem, made safe (``os.register_at_fork``).

A child starts with a copy of the parent's memory and only the thread that
called ``fork()``.  So, in the child:

- workspaces owned by other threads have no owner, and file-backed ones
  (``location="mmap"``) are ``MAP_SHARED`` mappings the parent still
  allocates in: both kinds are disowned (``Arena._after_fork_child``), so
  using them raises :class:`~wsmem.WorkspaceError` telling the user to create
  a new workspace in the child.  Host workspaces of the forking thread are
  private copies (copy-on-write) and stay usable.
- the GC-window lock (:mod:`wsmem._gc`) is held across the fork, so that its
  state is consistent, and replaced by a fresh lock in the child;
- prefetch threads do not exist; :mod:`wsmem._prefetch` notices the new pid
  and its iterators raise instead of waiting for them.
"""
from __future__ import annotations

import os
import threading

from wsmem import _gc
from wsmem._workspace import live_workspaces

__all__: list[str] = []


def _before_fork() -> None:
    _gc._lock.acquire()


def _after_fork_in_parent() -> None:
    _gc._lock.release()


def _after_fork_in_child() -> None:
    _gc._lock = threading.Lock()
    me = threading.get_ident()
    for ws in live_workspaces():
        ws._after_fork_child(me)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
