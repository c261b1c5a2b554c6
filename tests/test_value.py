"""``@value`` classes: frozen, slotted dataclasses whose ``__init__`` stores through the slots."""

from __future__ import annotations

import dataclasses
from typing import List

import pytest

from twisted_mqtt._value import value


@value
class _Point:
    x: int
    y: int = 2
    tags: tuple = ()


@value
class _Checked:
    x: int

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("negative")


@value
class _Listed:
    items: List[int] = dataclasses.field(default_factory=list)


def test_init_as_the_dataclass_does() -> None:
    """Positional and keyword arguments and defaults, equality, hashing, ``replace`` and the
    frozen attributes behave as a frozen dataclass's; a missing or unknown argument is a
    ``TypeError``."""
    point = _Point(1)
    assert (point.x, point.y, point.tags) == (1, 2, ())
    assert _Point(1, y=3) == _Point(x=1, y=3, tags=()) != point
    assert hash(_Point(1)) == hash(point)
    assert dataclasses.replace(point, y=5) == _Point(1, 5)
    assert not hasattr(point, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        _Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Point(1, z=3)  # type: ignore[call-arg]
    assert _Point.__init__.__qualname__ == "_Point.__init__"


def test_post_init_and_default_factories_kept() -> None:
    """A class with ``__post_init__`` or a default factory keeps the dataclass's ``__init__``,
    which runs them."""
    with pytest.raises(ValueError):
        _Checked(-1)
    first, second = _Listed(), _Listed()
    assert first.items == [] and first.items is not second.items
