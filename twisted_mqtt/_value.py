"""Frozen, slotted dataclasses that work on Python 3.9 as well as later versions."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, TypeVar

T = TypeVar("T")


def _value(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen dataclass with ``__slots__``, comparing by value.

    ``dataclass(slots=True)`` only exists from Python 3.10; this rebuilds the class with slots
    the same way, so that PyPy 3.9 gets the same objects.
    """
    frozen = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(frozen)  # type: ignore[arg-type]
    names = tuple(f.name for f in fields)
    namespace = dict(frozen.__dict__)
    for name in names:
        namespace.pop(name, None)
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    namespace["__slots__"] = names
    slotted: type[T] = type(frozen.__name__, frozen.__bases__, namespace)
    slotted.__qualname__ = frozen.__qualname__
    init = _slot_init(slotted, fields)
    if init is not None:
        slotted.__init__ = init  # type: ignore[method-assign]
    return slotted


def _slot_init(cls: type, fields: Sequence[dataclasses.Field]) -> Optional[Callable[..., None]]:
    """The dataclass's ``__init__`` for ``cls``, storing each field through its slot's
    descriptor rather than through ``object.__setattr__`` (which looks the attribute up again
    for every field: a value object was made about twice as slowly).  None, to keep the
    dataclass's own, for a class with ``__post_init__`` or a field with a default factory, not
    set by ``__init__`` or keyword-only."""
    if hasattr(cls, "__post_init__") or any(
            not field.init or field.default_factory is not dataclasses.MISSING
            or getattr(field, "kw_only", False) for field in fields):
        return None
    scope: Dict[str, Any] = {}
    parameters: List[str] = ["self"]
    body: List[str] = []
    for field in fields:
        name = field.name
        scope[f"_set_{name}"] = getattr(cls, name).__set__
        if field.default is dataclasses.MISSING:
            parameters.append(name)
        else:
            scope[f"_default_{name}"] = field.default
            parameters.append(f"{name}=_default_{name}")
        body.append(f"    _set_{name}(self, {name})")
    source = f"def __init__({', '.join(parameters)}):\n" + ("\n".join(body) or "    pass")
    exec(source, scope)  # noqa: S102  (built from the class's own field names)
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def value(cls: type[T]) -> type[T]:
        """Type checkers see a frozen dataclass."""
        return cls

else:
    value = _value
