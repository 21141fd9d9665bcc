from wsmem._arena cimport Arena

cdef class Workspace(Arena):
    cdef readonly object config     # the WorkspaceConfig it was made with
    cdef object __weakref__

    cdef int _require_open(self) except -1
