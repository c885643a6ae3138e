"""Pickles that run code when loaded: what a crafted dataset or weights file would hold."""

from __future__ import annotations

from pathlib import Path


class RunsOnLoad:
    """Pickles as a call of `func(arg)`, made by whoever unpickles it."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def creates(marker: Path) -> RunsOnLoad:
    """Code that creates `marker` when unpickled (through builtins.exec)."""
    return RunsOnLoad(exec, f"open({str(marker)!r}, 'w').close()")
