"""Fields a server does not serve: accepted with their off value (clients and frameworks send defaults), a 400
naming them otherwise (`unsupported_parameter`), never silently dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic_core import PydanticCustomError

OffValues = dict[str, Callable[[Any], bool]]
UNSERVED = "not supported by this server yet"


def refuse_unless_off(off: OffValues, value: Any, name: str, why: str = UNSERVED) -> None:
    """For a `mode="before"` field validator: None (the off value, dropped) or the 400 naming `name`."""
    try:
        is_off = off[name](value)
    except (AttributeError, TypeError):  # a value of the wrong type is not off either
        is_off = False
    if not is_off:
        raise PydanticCustomError("unsupported_parameter", "{name} is " + why, {"name": name})
    return None
