"""Type stubs for wsmem._arena (compiled): the C-level state behind Workspace."""

PIN_LINE: int
"""Pin granularity in bytes: an export keeps its bytes rounded out to these lines."""

class Arena:
    @property
    def name(self) -> str: ...
