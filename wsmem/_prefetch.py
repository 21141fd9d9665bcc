"""Background prefetching into a circular workspace (DL4J's AsyncDataSetIterator).

:func:`prefetch` runs a data loader in a background thread and copies every
array of every item into a circular workspace (a *ring*,
``reset="endofbuffer_reached"``) while the training loop works on earlier
items.  :func:`shield` marks a loader that must not be prefetched or copied
(DL4J's AsyncShieldDataSetIterator).

Who owns what
-------------
- The **producer thread** owns the ring: it creates it, allocates in it and
  destroys it (a workspace belongs to the thread that created it).  It also
  owns the *pins*: one ``np.asarray`` export per copied array, held from the
  copy until the item leaves its validity window, so that the ring goes
  around a batch the consumer may still use and never writes over it.
- The **consumer** (whoever calls ``__next__``) owns the validity window: when
  it takes an item it makes the item ``buffer`` places back stale with
  ``ring._expire_before`` and publishes how many items it has taken; the
  producer releases the pins of stale items before its next copy.
- The thread holds only the loader's iterator and a :class:`_Channel`, never
  the :class:`PrefetchIterator`, so abandoning the iterator lets the garbage
  collector run its finalizer, which stops the thread.  The same finalizer
  runs at interpreter exit.

Ring size
---------
At the moment the producer copies item ``m`` it may still hold pins on
``buffer`` items the consumer took (the window), ``buffer`` items waiting in
the queue, and item ``m`` itself: ``2 * buffer + 1`` items.  The ring is
sized from the first item to ``(2 * buffer + 2)`` of them (each array rounded
out to whole pin lines) so that, with equal items, it never has to grow;
later, larger items make the workspace map a bigger ring (the old one stays
valid until its arrays expire).
"""
from __future__ import annotations

import collections
import itertools
import numbers
import os
import queue
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from wsmem._arena import PIN_LINE
from wsmem._array import WsArray
from wsmem._errors import WorkspaceError
from wsmem._workspace import Workspace

__all__ = ["prefetch", "shield", "PrefetchIterator", "ShieldedIterator", "Shielded"]

# Smallest ring mapped (bytes); items without arrays still need a marker.
_MIN_RING = 64 * 1024
# How often (seconds) blocked producer/consumer calls look at the stop flag
# and at the other side's liveness.
_POLL_S = 0.05
# How long close() (and the finalizer) waits for the thread to finish.
_JOIN_S = 10.0

# Messages on the queue: (kind, payload).
_ITEM = 0       # payload: (index, batch, first) -- first: the item's first ring array
_END = 1        # payload: None -- the loader is exhausted
_ERROR = 2      # payload: the exception the loader (or the copy) raised

_serial = itertools.count(1)


class _Channel:
    """What the consumer and the producer thread share (nothing else is shared).

    ``queue`` carries messages producer -> consumer (at most ``buffer`` items).
    ``stop`` is set once, by close() or the finalizer: the producer then
    releases its pins, destroys the ring and ends.  ``taken`` is written by
    the consumer only (number of items it has taken); the producer reads it
    to know which pins it may release (an int store is atomic under the GIL).
    ``pid`` is the process the thread runs in: a fork() child has no producer
    thread, and the queue's and the event's locks may have been held by it at
    the fork, so a child never touches them (:meth:`forked`).
    """

    __slots__ = ("queue", "stop", "taken", "pid", "consumer_event")

    def __init__(self, buffer: int) -> None:
        # prefetch(device=N): an event recorded on the consumer's stream each
        # time it takes an item; device-ring bytes are rewritten only after it.
        self.consumer_event: Any = None
        self.queue: queue.Queue = queue.Queue(maxsize=buffer)
        self.stop = threading.Event()
        self.taken = 0
        self.pid = os.getpid()

    def forked(self) -> bool:
        """True in a fork() child of the process that started the producer."""
        return self.pid != os.getpid()

    def put(self, msg: tuple) -> bool:
        """Put `msg`, waiting for room; False when stopped first."""
        while not self.stop.is_set():
            try:
                self.queue.put(msg, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def drain(self) -> None:
        """Drop every message still queued (their batches go with them)."""
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return


# ----------------------------------------------------------------- structure

def _is_leaf_array(x: Any) -> bool:
    """True for what prefetch copies: ndarrays and array-likes, not scalars or text."""
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, (np.generic, str, bytes, bytearray, memoryview, numbers.Number)):
        return False
    if isinstance(x, (tuple, list, dict)) or x is None:
        return False
    t = type(x)
    return hasattr(t, "__array_interface__") or hasattr(t, "__array__")


def _map_leaves(x: Any, leaf: Any) -> Any:
    """`x` with ``leaf(v)`` in place of every leaf: tuples (namedtuples too),
    lists and dicts, nested, are rebuilt with their own types."""
    if isinstance(x, tuple):
        items = [_map_leaves(v, leaf) for v in x]
        if hasattr(x, "_fields"):                       # namedtuple
            return type(x)(*items)
        return tuple(items) if type(x) is tuple else type(x)(items)
    if isinstance(x, list):
        items = [_map_leaves(v, leaf) for v in x]
        return items if type(x) is list else type(x)(items)
    if isinstance(x, dict):
        pairs = [(k, _map_leaves(v, leaf)) for k, v in x.items()]
        return dict(pairs) if type(x) is dict else type(x)(pairs)
    return leaf(x)


def _copy_into(ring: Workspace, x: Any, out: list, pins: list) -> Any:
    """`x` with every array leaf copied into the (open) ring; appends the copies
    to `out` and a pin (an ndarray export) of each to `pins`.

    Each copy is pinned as soon as it is made: the next array of the same item
    may make the ring wrap, and must go around this one (or grow the ring)
    rather than write over it.
    """
    def leaf(v: Any) -> Any:
        if not _is_leaf_array(v):
            return v
        a = v if isinstance(v, np.ndarray) else np.asarray(v)
        if a.dtype.hasobject:
            return v                   # Python objects: nothing to copy into raw memory
        w = ring.asarray(a)
        out.append(w)
        pins.append(np.asarray(w))
        return w
    return _map_leaves(x, leaf)


def _item_bytes(x: Any) -> int:
    """Ring bytes one item takes: each array rounded out to whole pin lines, plus one."""
    if isinstance(x, (tuple, list)):
        return sum(_item_bytes(v) for v in x)
    if isinstance(x, dict):
        return sum(_item_bytes(v) for v in x.values())
    if _is_leaf_array(x):
        a = x if isinstance(x, np.ndarray) else np.asarray(x)
        if a.dtype.hasobject:
            return 0
        # an export pins its bytes rounded out to the arena's lines (PIN_LINE)
        return -(-a.nbytes // PIN_LINE) * PIN_LINE + PIN_LINE
    return 0


def _ring_size(buffer: int, item_bytes: int) -> int:
    """Ring bytes for items of `item_bytes`: ``2 * buffer + 2`` of them (module docstring)."""
    return max((2 * buffer + 2) * item_bytes, _MIN_RING)


# ------------------------------------------------------------------ producer

def _pull(it: Iterator) -> tuple:
    """Next message from the loader: (_ITEM, item), (_END, None) or (_ERROR, exc).

    The exception's traceback starts at the loader, not here, so that it
    holds no frame of the producer (whose locals hold the pins).
    """
    try:
        return _ITEM, next(it)
    except StopIteration:
        return _END, None
    except BaseException as exc:            # noqa: BLE001 - delivered to the consumer
        tb = exc.__traceback__
        return _ERROR, exc.with_traceback(tb.tb_next if tb is not None else None)


def _copy_item(ring: Workspace, item: Any) -> tuple:
    """(batch, pins, first): `item` copied into `ring`, each copy pinned.

    `first` is the item's first ring array with bytes (a one-byte marker when
    the item has none): ``ring._expire_before(first)`` ends the items before.
    """
    arrays: list = []
    pins: list = []
    with ring:
        batch = _copy_into(ring, item, arrays, pins)
        first = next((w for w in arrays if w.nbytes), None)
        if first is None:
            first = ring.empty(1, dtype=np.uint8)
            pins.append(np.asarray(first))
    return batch, pins, first


class _DeviceStage:
    """Producer-side GPU staging for ``prefetch(device=N)``.

    Items are copied into a *pinned* ring (page-locked, so the copies to the
    GPU run at full speed and asynchronously), then copied with
    ``cudaMemcpyAsync`` on a side stream into a *device* ring; the consumer's
    stream waits on an event recorded after the item's copies.  Batches hold
    ``cupy.ndarray`` views of the device ring: each pins its bytes for as long
    as it lives, so the device ring goes around (or grows past) batches the
    consumer keeps.  At most `buffer` items' copies are in flight: before
    staging another, the producer waits for the oldest, so a pinned slot is
    never written while the GPU still reads it (the pinned ring holds
    ``2 * buffer + 2`` items).  The device ring is protected the same way
    as the pinned one: the producer keeps each item's device views with its
    pins until the consumer has taken `buffer` more items, and its side
    stream waits on an event the consumer records on its own stream at each
    ``__next__``, so no copy overwrites bytes that kernels the consumer
    queued earlier may still read.
    """

    def __init__(self, device: int, name: str, ring_bytes: int, buffer: int) -> None:
        import cupy
        self.cp = cupy
        self.device = device
        self.buffer = buffer
        self.dev = cupy.cuda.Device(device)
        self.dev.use()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.pinned = Workspace(f"{name}-pinned", reset="endofbuffer_reached",
                                learning="none", initial_size=ring_bytes,
                                allocation="strict", capture=False,
                                location="pinned", device=device)
        self.ring = Workspace(f"{name}-device", reset="endofbuffer_reached",
                              learning="none", initial_size=ring_bytes,
                              allocation="strict", capture=False,
                              location="device", device=device)
        self.inflight: collections.deque = collections.deque()

    def wait_slot(self) -> None:
        while len(self.inflight) >= self.buffer:
            self.inflight.popleft().synchronize()

    def to_device(self, x: Any, pins: list) -> Any:
        """Leaf `x` of a batch: a WsArray of the pinned ring becomes a cupy
        array in the device ring (copy queued on the side stream), kept in
        `pins` too so that it is released with the item's pins."""
        if not (isinstance(x, WsArray) and x.workspace is self.pinned):
            return x
        flags = x.flags
        order = "F" if flags.f_contiguous and not flags.c_contiguous else "C"
        with self.ring:
            d = self.ring.empty(x.shape, dtype=x.dtype, order=order)
            view = d.cupy()                          # pins d's bytes while the batch lives
        if x.nbytes:
            rt = self.cp.cuda.runtime
            rt.memcpyAsync(d.ptr, x.ptr, x.nbytes, rt.memcpyHostToDevice, self.stream.ptr)
        pins.append(view)
        return view

    def stage(self, batch: Any, pins: list, chan: _Channel) -> tuple:
        consumed = chan.consumer_event
        if consumed is not None:
            self.stream.wait_event(consumed)
        out = _map_leaves(batch, lambda v: self.to_device(v, pins))
        ev = self.cp.cuda.Event(disable_timing=True)
        ev.record(self.stream)
        self.inflight.append(ev)
        return out, ev

    def close(self) -> None:
        try:
            self.stream.synchronize()
        finally:
            self.inflight.clear()
            self.ring.destroy()
            self.pinned.destroy()


def _produce(it: Iterator, chan: _Channel, buffer: int, name: str,
             device: int | None = None) -> None:
    """Body of the producer thread (see the module docstring for ownership).

    `window` holds ``(index, pins)`` for every copied item whose pins are still
    held: item ``k`` is released once ``chan.taken >= k + buffer + 1`` (the
    consumer has taken ``buffer`` items after it and expired it).
    """
    ring = None
    stage = None
    window: collections.deque = collections.deque()
    index = 0
    try:
        while not chan.stop.is_set():
            kind, payload = _pull(it)
            if chan.stop.is_set():
                break
            if kind != _ITEM:
                chan.put((kind, payload))
                break
            taken = chan.taken
            while window and window[0][0] < taken - buffer:
                window.popleft()                       # drop item k's pins
            try:
                if ring is None and device is None:
                    ring = Workspace(name, reset="endofbuffer_reached", learning="none",
                                     initial_size=_ring_size(buffer, _item_bytes(payload)),
                                     allocation="strict", capture=False)
                elif ring is None:
                    stage = _DeviceStage(device, name,
                                         _ring_size(buffer, _item_bytes(payload)), buffer)
                    ring = stage.pinned
                if stage is not None:
                    stage.wait_slot()
                batch, pins, first = _copy_item(ring, payload)
                if stage is not None:
                    # cupy arrays out; `first` becomes (first, event): the
                    # consumer's stream waits on the event.
                    batch, event = stage.stage(batch, pins, chan)
                    first = (first, event)
            except BaseException as exc:            # noqa: BLE001 - delivered to the consumer
                tb = exc.__traceback__
                chan.put((_ERROR, exc.with_traceback(tb.tb_next if tb is not None else None)))
                break
            del payload
            window.append((index, pins))
            del pins
            if not chan.put((_ITEM, (index, batch, first))):
                break
            del batch, first
            index += 1
        # Exhausted or failed: the consumer may still use the last batches,
        # so the ring lives until close() (or the finalizer) says stop.
        chan.stop.wait()
    finally:
        window.clear()                                  # release every pin
        chan.drain()
        if stage is not None:
            stage.close()
        elif ring is not None:
            ring.destroy()


def _shutdown(chan: _Channel, thread: threading.Thread, timeout: float) -> None:
    """Stop the producer and wait (up to `timeout` s) for it to destroy its ring.

    Runs from close(), from the garbage collector and at interpreter exit;
    never raises.  Never joins from the producer thread itself.  In a fork()
    child it does nothing: the thread and its ring belong to the parent.
    """
    if chan.forked():
        return
    chan.stop.set()
    if thread is not threading.current_thread() and thread.ident is not None:
        thread.join(timeout)
    if not thread.is_alive():
        chan.drain()


# ------------------------------------------------------------------ iterators

def _check_buffer(buffer: Any) -> int:
    if isinstance(buffer, bool) or not isinstance(buffer, numbers.Integral):
        raise TypeError(f"buffer must be an int >= 1 (items prefetched ahead), "
                        f"got {type(buffer).__name__} {buffer!r}")
    if buffer < 1:
        raise ValueError(f"buffer must be >= 1 (items prefetched ahead), got {buffer}; "
                         "use wsmem.shield(loader) for no prefetching")
    return int(buffer)


def _check_device(device: Any) -> None:
    """device=None: host.  Anything else needs CuPy and that CUDA device."""
    if device is None:
        return
    if isinstance(device, bool) or not isinstance(device, numbers.Integral) or device < 0:
        raise TypeError(f"device must be None or a CUDA device id (int >= 0), got {device!r}")
    from wsmem import _gpu
    reason = _gpu.unavailable(f"prefetch(device={device})", device,
                              "use device=None (batches in host memory)")
    if reason is not None:
        raise WorkspaceError(reason)


class PrefetchIterator:
    """Iterator returned by :func:`prefetch` (see there).

    ``__next__`` takes the next batch; ``close()`` stops the thread and
    destroys the ring (idempotent).  It is its own context manager, and
    dropping it (``break`` out of a loop, garbage collection, interpreter
    exit) closes it as well.
    """

    def __init__(self, iterable: Iterable, buffer: int = 8,
                 device: int | None = None) -> None:
        self._buffer = _check_buffer(buffer)
        self._device = device
        it = iter(iterable)
        serial = next(_serial)
        # The channel is all the thread shares with this object.
        self._chan = _Channel(self._buffer)
        # First arrays of the last `buffer` items taken, oldest first (the
        # window); a new item pushes the oldest out and expires what precedes
        # the next one.  Holds WsArrays, not exports: no pins.
        self._firsts: collections.deque = collections.deque()
        self._done = False
        self._thread = threading.Thread(
            target=_produce,
            args=(it, self._chan, self._buffer, f"prefetch-{serial}", device),
            name=f"wsmem-prefetch-{serial}", daemon=True)
        del it
        self._thread.start()
        # Runs on close(), when this object is collected, and at interpreter exit.
        self._finalizer = weakref.finalize(self, _shutdown, self._chan, self._thread, _JOIN_S)

    @property
    def buffer(self) -> int:
        """Items prefetched ahead, and items a batch stays valid for."""
        return self._buffer

    def __iter__(self) -> PrefetchIterator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        chan = self._chan
        if chan.forked():
            self.close()
            raise WorkspaceError("this prefetch iterator was created before fork(); its "
                                 "thread does not exist in this process, and the iterator "
                                 "is closed. Create a new wsmem.prefetch(...) in the child.")
        while True:
            try:
                kind, payload = chan.queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and chan.queue.empty():
                    self.close()
                    raise WorkspaceError("the prefetch thread ended without delivering a "
                                         "result; the iterator is closed") from None
        if kind == _END:
            self.close()
            raise StopIteration
        if kind == _ERROR:
            self.close()
            try:
                raise payload
            finally:
                del payload
        index, batch, first = payload
        if self._device is not None:
            first, event = first
            import cupy
            with cupy.cuda.Device(self._device):
                stream = cupy.cuda.get_current_stream()
                stream.wait_event(event)
                mark = cupy.cuda.Event(disable_timing=True)
                mark.record(stream)             # everything queued on earlier batches
            chan.consumer_event = mark
        firsts = self._firsts
        firsts.append(first)
        if len(firsts) > self._buffer:
            firsts.popleft()                    # item index - buffer leaves the window
            oldest = firsts[0]
            oldest.workspace._expire_before(oldest)
        chan.taken = index + 1                  # after the expiry: the producer may reuse
        return batch

    def close(self, timeout: float = _JOIN_S) -> None:
        """Stop the thread, release the pins and destroy the ring.

        Every batch this iterator yielded becomes invalid (``detach()`` what
        must be kept).  Waits up to `timeout` seconds for the thread, which
        cannot be interrupted while it is inside the loader's ``__next__``.
        Idempotent.
        """
        self._done = True
        self._firsts.clear()
        if self._finalizer.alive:
            self._finalizer.detach()
            _shutdown(self._chan, self._thread, timeout)

    def __enter__(self) -> PrefetchIterator:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        state = "closed" if self._done else "running"
        return f"<wsmem.PrefetchIterator buffer={self._buffer} {state}>"


class Shielded:
    """A loader marked by :func:`shield`: prefetch() yields its items as they are."""

    __slots__ = ("iterable",)

    def __init__(self, iterable: Iterable) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def __len__(self) -> int:
        return len(self.iterable)   # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"wsmem.shield({self.iterable!r})"


class ShieldedIterator:
    """Iterator returned by ``prefetch(shield(loader))``: the loader's items, no thread, no copies."""

    def __init__(self, shielded: Shielded) -> None:
        self._it: Iterator | None = iter(shielded.iterable)

    def __iter__(self) -> ShieldedIterator:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            raise StopIteration
        try:
            return next(self._it)
        except StopIteration:
            self._it = None
            raise

    def close(self) -> None:
        """Stop yielding (the loader itself is left as it is).  Idempotent."""
        self._it = None

    def __enter__(self) -> ShieldedIterator:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False


# ------------------------------------------------------------------ public

def prefetch(iterable: Iterable, buffer: int = 8,
             device: int | None = None) -> PrefetchIterator | ShieldedIterator:
    """Iterate over `iterable` with a background thread copying items ahead.

    A daemon thread takes items from `iterable` while the caller works on
    earlier ones, and copies every array of every item into a circular
    workspace (``reset="endofbuffer_reached"``) sized from the first item;
    items up to `buffer` ahead wait in a queue.  Each batch has the item's
    structure (an array, or tuples, lists, dicts of them, nested) with
    :class:`~wsmem.WsArray` in place of arrays; other leaves (ints, strings,
    arrays of Python objects) are passed through as they are.  Later, larger
    items make the workspace grow (variable-length batches).

    A yielded batch is valid until `buffer` more items have been taken;
    used later it raises :class:`~wsmem.WorkspaceLeakError` (``detach()``
    what must be kept longer).  Its bytes are never written over while it is
    valid.  Closing the iterator (``close()``, the end of the loader, an
    exception, ``break`` and garbage collection, interpreter exit) stops the
    thread and destroys the workspace: every batch it yielded goes stale.

    An exception raised by the loader is raised by ``__next__`` at the item
    where it happened, after the items before it.

    Parameters
    ----------
    iterable : iterable
        The loader.  ``wsmem.shield(loader)`` turns prefetching off: the
        loader's own items are yielded, without a thread and without copies
        (DL4J's AsyncShieldDataSetIterator).
    buffer : int, default 8
        Items prefetched ahead, and how many further items a batch stays
        valid for (>= 1).
    device : int, optional
        CUDA device to deliver batches on (needs CuPy and that device).  The
        thread stages each item in page-locked (pinned) memory and copies it
        to the device asynchronously on a side stream; batches hold
        ``cupy.ndarray`` leaves, each keeping its device bytes for as long
        as it lives, and ``__next__`` makes the current stream wait for the
        item's copies.

    Returns
    -------
    PrefetchIterator or ShieldedIterator
        An iterator with ``close()``, usable as a context manager.

    Raises
    ------
    TypeError, ValueError
        `buffer` is not an int >= 1 (bool is refused), or `iterable` is not iterable.
    WorkspaceError
        `device` was given and CuPy or that CUDA device is missing.

    Examples
    --------
    >>> import numpy as np, wsmem
    >>> loader = ((np.full(4, i, dtype=np.float32), i) for i in range(3))
    >>> with wsmem.prefetch(loader, buffer=2) as batches:
    ...     for x, label in batches:
    ...         print(type(x).__name__, float(x.sum()), label)
    WsArray 0.0 0
    WsArray 4.0 1
    WsArray 8.0 2
    >>> items = [np.arange(3)]
    >>> [b is items[0] for b in wsmem.prefetch(wsmem.shield(items))]
    [True]
    """
    if isinstance(iterable, Shielded):
        _check_buffer(buffer)
        _check_device(device)
        return ShieldedIterator(iterable)
    buffer = _check_buffer(buffer)
    _check_device(device)
    return PrefetchIterator(iterable, buffer, device)


def shield(iterable: Iterable) -> Shielded:
    """Mark `iterable` so that :func:`prefetch` leaves it alone.

    ``prefetch(shield(loader))`` starts no thread and copies nothing: it
    yields the loader's items as they are (DL4J's AsyncShieldDataSetIterator,
    for loaders that manage their own memory or must run in the caller's
    thread).  Iterating ``shield(loader)`` directly iterates the loader.

    Parameters
    ----------
    iterable : iterable
        The loader.

    Returns
    -------
    Shielded
        A wrapper whose ``__iter__`` is the loader's.

    Examples
    --------
    >>> import numpy as np, wsmem
    >>> a = np.zeros(3)
    >>> it = wsmem.prefetch(wsmem.shield([a, a]))
    >>> all(b is a for b in it)
    True
    >>> list(wsmem.shield(range(3)))
    [0, 1, 2]
    """
    if isinstance(iterable, Shielded):
        return iterable
    return Shielded(iterable)
