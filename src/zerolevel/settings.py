"""Method settings from text: `zerolevel fit --set KEY=VALUE` overrides of a method's config dataclass.

Values are parsed by the field's declared type: numbers, booleans (true/false/yes/no/1/0), strings,
tuples as comma-separated lists (`resolutions=16,32,64`) and `none` for optional fields. An unknown key
or an unparsable value is an `InputError` that lists what is accepted.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from .errors import InputError

Config = TypeVar("Config")
_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def parse_assignments(pairs: list[str] | None) -> dict[str, str]:
    """{"key": "value"} from ["key=value", ...]; later assignments of a key win."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(config: Config, overrides: dict[str, str] | None) -> Config:
    """A copy of the dataclass `config` with the fields named in `overrides` parsed from text."""
    if not overrides:
        return config
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for key, text in overrides.items():
        if key not in hints or key not in names:
            raise InputError(f"--set {key}: no such setting of {type(config).__name__}; "
                             f"known: {', '.join(names)}")
        try:
            changes[key] = _parse(text, hints[key])
        except ValueError as error:
            raise InputError(f"--set {key}={text}: {error}") from None
    return dataclasses.replace(config, **changes)


def run_settings(config_class: type[Config], saved: dict[str, Any] | None, given: dict[str, Any],
                 overrides: dict[str, str] | None, source: str | None = None) -> Config:
    """The settings of a run: a resumed run's own (`saved`, as its checkpoint stores them) or the
    defaults, then the options `given` (None values are not given), then the `--set` text overrides.

    Raises:
        InputError: the saved settings do not fit this version's dataclass (naming `source`), or the
            dataclass rejects the result (an unknown choice, a zero batch size).
    """
    try:
        base = config_class(**saved) if saved is not None else config_class()
    except (TypeError, ValueError) as error:  # written by another version
        raise InputError(f"cannot read the run's settings ({type(error).__name__}: {error})", source) from None
    try:
        config = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
        return apply_overrides(config, overrides)
    except ValueError as error:  # the dataclass's own checks
        raise InputError(f"bad settings: {error}") from None


def _parse(text: str, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(text, inner)
    if origin is tuple:
        item = args[0]
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if not parts:
            raise ValueError("expected a comma-separated list")
        return tuple(_parse(p, item) for p in parts)
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("expected true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if kind is str:
        return text
    raise ValueError(f"settings of type {kind} cannot be set from text")
