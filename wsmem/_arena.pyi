"""Type stubs for wsmem._arena (compiled): the C-level state behind Workspace."""

class Arena:
    @property
    def name(self) -> str: ...
