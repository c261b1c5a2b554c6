"""Frozen, slotted dataclasses that work on Python 3.9 as well as later versions."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, TypeVar

T = TypeVar("T")


def _value(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen dataclass with ``__slots__``, comparing by value.

    ``dataclass(slots=True)`` only exists from Python 3.10; this rebuilds the class with slots
    the same way, so that PyPy 3.9 gets the same objects.
    """
    frozen = dataclasses.dataclass(frozen=True)(cls)
    names = tuple(f.name for f in dataclasses.fields(frozen))  # type: ignore[arg-type]
    namespace = dict(frozen.__dict__)
    for name in names:
        namespace.pop(name, None)
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    namespace["__slots__"] = names
    slotted: type[T] = type(frozen.__name__, frozen.__bases__, namespace)
    slotted.__qualname__ = frozen.__qualname__
    return slotted


if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def value(cls: type[T]) -> type[T]:
        """Type checkers see a frozen dataclass."""
        return cls

else:
    value = _value
