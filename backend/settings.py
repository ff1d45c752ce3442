"""Declaring a setting once: `setting(...)` puts name, type, default, range and help text on a dataclass field.

`backend.config` declares every generation setting this way; validation (`validate_settings`), the HTTP
request schema (`backend.service.schemas`) and the CLI options (`backend.cli`) are all derived from those
fields, so a setting's range or help text lives in exactly one place (docs/design.md, "Settings").

A setting's kind comes from its type annotation: int, float, str, bool, `X | None` (None allowed), a tuple
of floats (a [min, max] pair or a fixed-length list), or a nested settings dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from backend.errors import InvalidConfig

SETTING = "dreamsmith.setting"


@dataclass(frozen=True)
class Spec:
    help: str
    lo: float | None = None  # inclusive bounds of numbers (each element of a tuple)
    hi: float | None = None
    # Allowed texts; a callable is asked when needed (the method list is read from the rule table).
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    min_chars: int = 0
    max_chars: int | None = None
    ordered: bool = False  # a [min, max] pair: min must not exceed max
    api: bool = False  # part of the HTTP request (POST /v1/jobs)
    cli: bool = False  # a `generate` option (every setting can also be given with --set KEY=VALUE)
    cli_help: str | None = None  # the option's help when it differs from `help`
    # None in a config means "the model's recommendation (its dreamsmith.json), else the engine's default".
    recommended: bool = False

    def allowed(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    min_chars: int = 0,
    max_chars: int | None = None,
    ordered: bool = False,
    api: bool = False,
    cli: bool = False,
    cli_help: str | None = None,
    recommended: bool = False,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field carrying its `Spec` (use as `steps: int = setting(250, "...", lo=1, hi=20000)`)."""
    spec = Spec(help, lo, hi, choices, min_chars, max_chars, ordered, api, cli, cli_help, recommended)
    metadata = {SETTING: spec}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """One declared setting, as the derived views (schema, CLI, validation) see it."""

    key: str  # dotted path: "steps", "export.smoothing"
    type: Any  # the resolved annotation
    default: Any
    spec: Spec

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    @property
    def flag(self) -> str:
        """The CLI option: "--mesh-resolution" for export.mesh_resolution."""
        return "--" + self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def optional(self) -> bool:
        return _is_optional(self.type)

    @property
    def base_type(self) -> Any:
        """The annotation without `| None`."""
        return _strip_none(self.type)


def _is_optional(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


def _strip_none(tp: Any) -> Any:
    if not _is_optional(tp):
        return tp
    (inner,) = (a for a in typing.get_args(tp) if a is not type(None))
    return inner


def is_settings_class(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def settings_of(cls: type, prefix: str = "") -> Iterator[Setting]:
    """Every setting of a settings dataclass, nested ones flattened to dotted keys, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        if is_settings_class(tp):
            yield from settings_of(tp, key + ".")
            continue
        spec = f.metadata.get(SETTING)
        if spec is None:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield Setting(key, tp, default, spec)


def nested_fields(cls: type) -> dict[str, type]:
    """Field name -> settings dataclass, for the nested groups of `cls` (camera, export)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if is_settings_class(hints[f.name])}


def get_value(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# ---- validation -------------------------------------------------------------------------------------------


def _number(key: str, value: Any, kind: type, spec: Spec) -> None:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidConfig(key, f"must be an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InvalidConfig(key, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidConfig(key, f"must be a finite number, got {value!r}")
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
        raise InvalidConfig(key, f"must be between {_fmt(spec.lo)} and {_fmt(spec.hi)}, got {value!r}")


def _fmt(bound: float | None) -> str:
    return "-inf" if bound is None else f"{bound:g}"


def check_value(s: Setting, value: Any) -> None:
    """Raise InvalidConfig naming `s.key` unless `value` fits the setting's type and range."""
    spec = s.spec
    if value is None:
        if s.optional:
            return
        raise InvalidConfig(s.key, "must be given")
    tp = s.base_type
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidConfig(s.key, f"must be true or false, got {value!r}")
    elif tp in (int, float):
        _number(s.key, value, tp, spec)
    elif tp is str:
        if not isinstance(value, str):
            raise InvalidConfig(s.key, f"must be a text, got {value!r}")
        allowed = spec.allowed()
        if allowed is not None and value not in allowed:
            raise InvalidConfig(s.key, f"unknown value {value!r}; choose one of {', '.join(allowed)}")
        if spec.min_chars and len(value.strip()) < spec.min_chars:
            raise InvalidConfig(s.key, "must not be empty")
        if spec.max_chars is not None and len(value) > spec.max_chars:
            raise InvalidConfig(s.key, f"must be at most {spec.max_chars} characters")
    elif typing.get_origin(tp) is tuple:
        n = len(typing.get_args(tp))
        what = "a [min, max] pair" if spec.ordered else f"a list of {n} numbers"
        if not isinstance(value, tuple | list) or len(value) != n:
            raise InvalidConfig(s.key, f"must be {what}, got {value!r}")
        for v in value:
            _number(s.key, v, float, spec)
        if spec.ordered and value[0] > value[1]:
            raise InvalidConfig(s.key, f"min must not exceed max, got {list(value)}")
    else:  # pragma: no cover - a declaration error, caught by the tests of the settings table
        raise TypeError(f"setting {s.key} has an unsupported type {tp!r}")


def validate_settings(obj: Any, prefix: str = "") -> None:
    """Check every declared setting of a settings dataclass instance (nested groups included); errors
    name the setting as `prefix` + its key."""
    for s in settings_of(type(obj)):
        check_value(dataclasses.replace(s, key=prefix + s.key), get_value(obj, s.key))
