from wsmem._arena cimport Arena

cdef class Workspace(Arena):
    cdef readonly object config     # the WorkspaceConfig it was made with
    cdef object _handler            # NEP 49 capsule (capture=True), else None; arrays
                                    # allocated through it keep it alive after us
    cdef object __weakref__

    cdef int _require_open(self) except -1
    cdef object _borrowed(self, object fn, tuple args)
