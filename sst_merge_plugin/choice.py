"""``str`` Enums for parameters whose value is one of a fixed set (as mergekit's
``ConsensusMethod``), with one validating constructor that names the parameter and suggests the
closest value.

A member *is* its string (``Gate.PROJECT == "project"``), so members go into YAML, JSON and
content keys unchanged; ``str(member)`` is the plain value on every Python version.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from enum import Enum
from typing import Any, TypeVar

from sst_merge_plugin.core.errors import SSTError

C = TypeVar("C", bound="Choice")


def unknown_value(parameter: str, value: Any, allowed: Sequence[str]) -> SSTError:
    """The error for ``value`` not being one of ``allowed``, with the closest one suggested."""
    hint = difflib.get_close_matches(str(value), list(allowed), n=1)
    return SSTError(
        f"{parameter}: unknown value {value!r}; expected one of {', '.join(allowed)}"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
    )


class Choice(str, Enum):
    """Base of the plugin's fixed-choice parameters (see the module doc)."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every allowed value, in declaration order."""
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls: type[C], parameter: str, value: Any) -> C:
        """``value`` as a member; :class:`SSTError` naming ``parameter`` if it is none of them."""
        try:
            return cls(value)
        except ValueError:
            raise unknown_value(parameter, value, cls.values()) from None
