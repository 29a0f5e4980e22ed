"""Validating decoded JSON against the protocol's dataclasses (protocol/wire.py): one checker
per type hint, made once, that returns the value it checked (a dataclass built from a dict) or
raises Bad with where it went wrong. Generic over the types; the protocol registers a faster
checker for the one type a node sends thousands a second (LogEntry)."""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, Callable, Union

_fast: dict[type, Callable[[], Callable[[Any], Any]]] = {}


def register_fast(cls: type, make: Callable[[], Callable[[Any], Any]]) -> None:
    """Check `cls` with `make()`'s checker instead of the general one (which it may call)."""
    _fast[cls] = make
    checker.cache_clear()


class Bad(Exception):
    """A value that does not fit, on its way up to the frame: `path` grows as it unwinds
    (".lines", "[3]", ".seq"), `text` is what is wrong (" must be an integer")."""

    def __init__(self, path: str, text: str):
        self.path, self.text = path, text


@functools.cache
def checker(hint: Any) -> Callable[[Any], Any]:
    """A function that validates (and returns) a value of this type, made once per type: a log
    batch validates thousands of entries, and working out what a type hint means each time cost more
    than checking the value."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        nullable = type(None) in options
        inner = checker([o for o in options if o is not type(None)][0])

        def optional(value):
            if value is None:
                if nullable:
                    return None
                raise Bad("", " may not be null")
            return inner(value)

        return optional
    if origin is list:
        item = checker(typing.get_args(hint)[0])

        def a_list(value):
            if not isinstance(value, list):
                raise Bad("", " must be a list")
            out = []
            for i, v in enumerate(value):
                try:
                    out.append(item(v))
                except Bad as bad:
                    raise Bad(f"[{i}]{bad.path}", bad.text) from None
            return out

        return a_list
    if origin is dict:
        key_type, value_type = (checker(t) for t in typing.get_args(hint))

        def a_dict(value):
            if not isinstance(value, dict):
                raise Bad("", " must be an object")
            out = {}
            for k, v in value.items():
                try:
                    out[key_type(k)] = value_type(v)
                except Bad as bad:
                    raise Bad(f".{k}{bad.path}", bad.text) from None
            return out

        return a_dict
    if hint is dict:
        return simple(lambda v: isinstance(v, dict), " must be an object")
    if hint is bool:
        return simple(lambda v: v is True or v is False, " must be true or false")
    if hint is int:
        return simple(lambda v: type(v) is int or (isinstance(v, int) and not isinstance(v, bool)), " must be an integer")
    if hint is float:
        def a_number(value):
            if type(value) is float:
                return value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Bad("", " must be a number")
            return float(value)

        return a_number
    if hint is str:
        return simple(lambda v: type(v) is str or isinstance(v, str), " must be a string")
    if hint in _fast:
        return _fast[hint]()
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        return dataclass_checker(hint)
    raise TypeError(f"unsupported field type {hint!r}")  # pragma: no cover - a bug here, not on the wire


def simple(ok: Callable[[Any], bool], text: str) -> Callable[[Any], Any]:
    def check(value):
        if not ok(value):
            raise Bad("", text)
        return value

    return check


def dataclass_checker(cls: type) -> Callable[[Any], Any]:
    hints = typing.get_type_hints(cls)
    shape = [(f.name, checker(hints[f.name]), f.default is MISSING and f.default_factory is MISSING)
             for f in fields(cls)]

    def build_one(data):
        if not isinstance(data, dict):
            raise Bad("", " must be an object")
        kwargs = {}
        for name, check, required in shape:
            if name not in data:
                if required:
                    raise Bad(f".{name}", " is required")
                continue
            try:
                kwargs[name] = check(data[name])
            except Bad as bad:
                raise Bad(f".{name}{bad.path}", bad.text) from None
        # Fields this side does not know are ignored: a newer peer may add some within a version.
        obj = cls(**kwargs)
        if has_check:
            try:
                obj.check()
            except ValueError as exc:  # the protocol's ProtocolError
                raise Bad("", f": {exc}") from None
        return obj

    has_check = hasattr(cls, "check")
    return build_one
