"""Running a piece of a test in another thread (shared by the thread tests)."""
import threading

import wsmem


def thread_outcome(fn, *, destroy_registry=False):
    """Run fn() in a new thread; return {"result": ...} or {"error": exc}.

    With `destroy_registry`, the thread destroys its registered workspaces
    before it ends (as a worker thread should).
    """
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:   # noqa: BLE001 - reported to the caller
            box["error"] = exc
        finally:
            if destroy_registry:
                wsmem.destroy_thread_workspaces()

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive()
    return box


def run_in_thread(fn, *, destroy_registry=False):
    """Run fn() in a new thread; return its result or re-raise its exception."""
    box = thread_outcome(fn, destroy_registry=destroy_registry)
    if "error" in box:
        raise box["error"]
    return box.get("result")
