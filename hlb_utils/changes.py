"""`FIELD=VALUE` texts (the command line's `--set`) read as TrainConfig changes, each by its field's type.

A value kept as text where the field wants a bool or a number would be wrong in a quiet way: "False" is
a true string, so `--set compile=False` would compile and the run record would say "False". Each value is
therefore read by the type its TrainConfig field declares (the dataclass's annotations, not a list kept
here), and a value that does not read names the field and the form it takes, in one line. The allowed
choices and ranges stay TrainConfig's own checks (config.py).
"""
from __future__ import annotations

import dataclasses
import typing

from .config import TrainConfig


def parse_changes(items: list[str]) -> dict:
    """`FIELD=VALUE` strings as config changes, each value read by its TrainConfig field's type: bool
    (true/false, True/False, 1/0), int, float, an optional int (none/null), a tuple (`8,16,16`,
    `[8,16,16]` or `(8,16,16)`), text (a choice, checked against config's allowed values by TrainConfig).
    ValueError in one line naming the field and the form it takes."""
    types = _field_types()
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        if key not in types:   # TrainConfig names the misspelt field and the nearest ones
            changes[key] = value
            continue
        try:
            changes[key] = _parse_value(value, types[key], _default(key))
        except ValueError:
            raise ValueError(f"--set {key}={value}: {key} takes {_form(key, types[key])}") from None
    return changes


def _field_types() -> dict:
    """Each TrainConfig field's type, from its annotation (text with postponed annotations: resolved)."""
    try:
        return typing.get_type_hints(TrainConfig)
    except TypeError:   # Python 3.9 cannot evaluate `int | None`
        names = {"int": int, "float": float, "bool": bool, "str": str, "tuple": tuple,
                 "int | None": typing.Optional[int]}
        return {f.name: names.get(f.type, str) for f in dataclasses.fields(TrainConfig)}


def _default(key: str):
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == key)


def _is_optional(kind) -> bool:
    return type(None) in typing.get_args(kind)


def _element_type(kind, default) -> type:
    """A tuple's element type: from its annotation (`tuple[int, ...]`), else from the default's elements."""
    args = [a for a in typing.get_args(kind) if a is not Ellipsis]
    if args:
        return args[0]
    return float if any(isinstance(v, float) for v in default) else int


def _parse_value(text: str, kind, default):
    """`text` as a value of type `kind`; ValueError when it is not one."""
    if _is_optional(kind):
        if text.lower() in ("none", "null"):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        words = {"true": True, "1": True, "false": False, "0": False}
        if text.lower() not in words:
            raise ValueError(text)
        return words[text.lower()]
    if kind is int:
        return int(text)   # "2.5" and "abc" raise
    if kind is float:
        return float(text)
    if kind is tuple or typing.get_origin(kind) is tuple:
        inner = text[1:-1] if text[:1] + text[-1:] in ("()", "[]") else text
        parts = [p.strip() for p in inner.split(",") if p.strip()]
        if not parts:
            raise ValueError(text)
        element = _element_type(kind, default)
        return tuple(_parse_value(p, element, None) for p in parts)
    return text


def _form(key: str, kind) -> str:
    """The form a field's value takes, for the one-line error."""
    none = " or none" if _is_optional(kind) else ""
    if _is_optional(kind):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        return "true or false (also True/False, 1/0)"
    if kind is int:
        return "a whole number" + none
    if kind is float:
        return "a number" + none
    if kind is tuple or typing.get_origin(kind) is tuple:
        default = _default(key)
        what = "whole numbers" if _element_type(kind, default) is int else "numbers"
        return f"{len(default)} {what} separated by commas, e.g. {key}={','.join(map(str, default))}"
    return "text"
