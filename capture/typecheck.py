"""Call-time checks for the event dataclasses, so a bad argument fails where it is passed.

Each dataclass checks only its own fields when it is built; nested objects were checked when
they were built, so a check is a handful of ``isinstance`` calls and stays cheap.
"""

from __future__ import annotations

import enum
import math
import re
import types
import typing
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any

Check = Callable[[Any, str], Any]

_INT64 = 2**63


class EventValueError(ValueError):
    """An argument does not fit the event contract; the message names the field."""


def _fail(path: str, expected: str, value: Any) -> EventValueError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return EventValueError(f"{path}: expected {expected}, got {type(value).__name__} {shown}")


def _check_str(value: Any, path: str) -> Any:
    if not isinstance(value, str):
        raise _fail(path, "a string", value)
    return value


def _check_int(value: Any, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, "an integer", value)
    if not -_INT64 <= value < _INT64:
        raise _fail(path, "an integer within 64 bits", value)
    return value


def _check_float(value: Any, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, "a number", value)
    if not math.isfinite(value):
        raise _fail(path, "a finite number", value)
    return float(value)


def _check_bool(value: Any, path: str) -> Any:
    if not isinstance(value, bool):
        raise _fail(path, "true or false", value)
    return value


def _check_datetime(value: Any, path: str) -> Any:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise _fail(path, "a timezone-aware datetime", value)
    return value


def _enum_check(cls: type[enum.Enum]) -> Check:
    def check(value: Any, path: str) -> Any:
        try:
            return cls(value)
        except ValueError:
            raise _fail(path, f"one of {[m.value for m in cls]}", value) from None

    return check


def _instance_check(cls: type) -> Check:
    def check(value: Any, path: str) -> Any:
        if not isinstance(value, cls):
            raise _fail(path, cls.__name__, value)
        return value

    return check


def _optional_check(inner: Check) -> Check:
    def check(value: Any, path: str) -> Any:
        return None if value is None else inner(value, path)

    return check


def _list_check(inner: Check) -> Check:
    def check(value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple):
            raise _fail(path, "a list", value)
        return [inner(item, f"{path}[{i}]") for i, item in enumerate(value)]

    return check


def _map_check(inner: Check) -> Check:
    def check(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _fail(path, "a dict", value)
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(f"{path} key", "a string", key)
            out[key] = inner(item, f"{path}[{key!r}]")
        return out

    return check


_SCALARS: dict[Any, Check] = {
    str: _check_str,
    int: _check_int,
    float: _check_float,
    bool: _check_bool,
    datetime: _check_datetime,
}


def _checker(hint: Any) -> Check:
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _optional_check(_checker(rest[0]))
    if origin is list:
        return _list_check(_checker(args[0]))
    if origin is dict:
        return _map_check(_checker(args[1]))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_check(hint)
    if isinstance(hint, type):
        return _instance_check(hint)
    if origin in (types.UnionType, typing.Union):
        return _instance_check(tuple(args))  # type: ignore[arg-type]
    raise TypeError(f"no call-time check for annotation {hint!r}")


_FIELD_CHECKS: dict[type, tuple[tuple[str, Check], ...]] = {}


def _field_checks(cls: type) -> tuple[tuple[str, Check], ...]:
    checks = _FIELD_CHECKS.get(cls)
    if checks is None:
        hints = typing.get_type_hints(cls)
        checks = _FIELD_CHECKS[cls] = tuple(
            (name, _checker(hint))
            for name, hint in hints.items()
            if typing.get_origin(hint) is not typing.ClassVar
        )
    return checks


# Set while a decoder that has already checked every type (pydantic over Avro-decoded data)
# builds events, so the same checks are not run twice on the sink's hot path.
_types_already_checked: ContextVar[bool] = ContextVar("types_already_checked", default=False)


types_were_checked = _types_already_checked.get


class types_already_checked:
    """Context in which the dataclasses skip their type checks (a class, not a generator
    context manager: this is entered once per event on the sink's hot path)."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _types_already_checked.set(True)

    def __exit__(self, *exc: object) -> None:
        _types_already_checked.reset(self._token)


def check_fields(obj: Any) -> None:
    """Check and normalise (ints to floats, strings to enums, tuples to lists) in place."""
    if types_were_checked():
        return
    cls = type(obj)
    for name, check in _field_checks(cls):
        value = getattr(obj, name)
        normalised = check(value, f"{cls.__name__}.{name}")
        if normalised is not value:
            object.__setattr__(obj, name, normalised)


MAX_NAME_LENGTH = 256
# C0, DEL and C1 (U+0080..U+009F, among them NEL, a line break to many readers), and the
# bidirectional formatting characters (the marks U+200E/U+200F/U+061C, the embeddings and
# overrides U+202A..U+202E, the isolates U+2066..U+2069): printed raw, an override makes
# "wine\u202etxt.exe" read as another name in a terminal or a report (the "Trojan Source"
# trick), so names holding one are refused like control characters, everywhere a name is
# checked (emitter, sink) rather than escaped on some outputs and not others.
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def has_control_characters(text: str) -> bool:
    return _CONTROL_CHARACTER.search(text) is not None


def check_names(obj: Any, *names: str) -> None:
    """Identity strings become qualified names in the catalog: non-empty, bounded, printable."""
    cls = type(obj).__name__
    for name in names:
        value: str = getattr(obj, name)
        if not value.strip():
            raise EventValueError(f"{cls}.{name}: expected a non-empty name, got {value!r}")
        if len(value) > MAX_NAME_LENGTH:
            raise EventValueError(
                f"{cls}.{name}: expected at most {MAX_NAME_LENGTH} characters, got {len(value)}"
            )
        if _CONTROL_CHARACTER.search(value):
            raise EventValueError(
                f"{cls}.{name}: control characters are not allowed (nor bidirectional "
                f"formatting ones such as U+202E): {value!r}"
            )
