"""The checks of values a user gives, one set for the whole project. A `Rule` is a test and the
words for what it wants; `Rule.check(key, value)` raises the one message every check gives:
`KEY must be WHAT, got VALUE`. Each rule is written once and used wherever its key is read (the
trainer's schema, the groups' checks, the classes the groups build).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from experiments.errors import ConfigError

INF = float("inf")


def is_int(value) -> bool:
    """An int, and not a bool (True is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def shown(value):
    """How a value reads in a message (a ListConfig or tuple as a list)."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


@dataclass(frozen=True)
class Rule:
    test: Callable[[Any], bool]
    expected: str  # what the value must be, e.g. "a positive integer"

    def check(self, key: str, value) -> None:
        if not self.test(value):
            raise ConfigError(f"{key} must be {self.expected}, got {shown(value)!r}")

    def or_null(self, expected: str | None = None) -> Rule:
        """The same rule, with null allowed too."""
        return Rule(lambda v: v is None or self.test(v), expected or f"{self.expected} or null")


def integer(low: int = 1, what: str = "a positive integer") -> Rule:
    return Rule(lambda v: is_int(v) and v >= low, what)


def number(low: float = -INF, high: float = INF, what: str = "", *, open_low: bool = False,
           open_high: bool = False) -> Rule:
    """A number in [low, high]; an open end excludes its bound."""
    def test(v) -> bool:
        return is_number(v) and (low < v if open_low else low <= v) and (
            v < high if open_high else v <= high)
    return Rule(test, what)


def pair(element: Rule, what: str, ordered: bool = True) -> Rule:
    """Two values that each pass `element` (and, `ordered`, a first no larger than the second)."""
    def test(v) -> bool:
        return (isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2
                and all(element.test(x) for x in v) and (not ordered or v[0] <= v[1]))
    return Rule(test, what)


def one_of(*allowed) -> Rule:
    return Rule(lambda v: v in allowed, f"one of {list(allowed)}")


# rules several keys share
POSITIVE_INT = integer()
PROBABILITY = number(0, 1, "a probability in [0, 1]")
POSITIVE = number(0, INF, "a number > 0", open_low=True)
NON_NEGATIVE = number(0, INF, "a number >= 0")
MOMENTUM = number(0, 1, "a number in [0, 1)", open_high=True)
