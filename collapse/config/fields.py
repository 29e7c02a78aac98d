"""The one helper every config dataclass uses: a field with its default and its ``help`` (``collapse keys``)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its default (a list or dict copied per instance) and its ``help`` line."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})
