"""Frozen dataclass configs: defaults -> YAML file -> command-line overrides.

Every stage keeps one frozen dataclass (``TrainConfig``, ``ExportConfig``,
``DetectConfig``); this module resolves it and writes the resolved copy next
to a run or artifact. Unknown keys and ill-typed values raise, naming the key;
nothing a user typed is rewritten silently.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from patchdet.runtime.atomic import atomic_write_text

C = TypeVar("C")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert YAML/CLI values to the field's declared type (tuples from lists, etc.)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        if annotation is type(None) or (args and type(None) in args) or annotation is Any:
            return None
        raise ValueError(f"config key {name!r} must not be empty")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"config key {name!r}: bad value {value!r}")
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config key {name!r} expects a mapping, got {value!r}")
        _check_keys(value, f"config key {name!r}")
        try:
            return build_config(annotation, **value)
        except ValueError as exc:
            raise ValueError(f"config key {name!r}: {exc}") from None
    if origin is tuple:
        if isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, list | tuple):
            items = list(value)
        elif len(args) == 2 and args[1] is Ellipsis and not isinstance(value, dict):
            items = [value]  # a lone scalar is a one-item list
        else:
            raise ValueError(f"config key {name!r} expects a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(name, v, args[0]) for v in items)
        if len(items) != len(args):
            raise ValueError(f"config key {name!r} expects {len(args)} values, got {value!r}")
        return tuple(_coerce(name, v, a) for v, a in zip(items, args, strict=True))
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {name!r} expects a mapping, got {value!r}")
        _check_keys(value, f"config key {name!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(f"config key {name!r} expects true/false, got {value!r}")
    if annotation in (int, float):
        return _coerce_number(name, value, annotation)
    if annotation is str:
        # Numbers are fine as names (a class called 7); lists and mappings are not.
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"config key {name!r} expects a string, got {value!r}")
        return str(value)
    return value


def _coerce_number(name: str, value: Any, annotation: type) -> int | float:
    """A finite int/float from a number or numeric string; bools, lists, NaN and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"config key {name!r} expects a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"config key {name!r} expects a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"config key {name!r} expects a finite number, got {value!r}")
    if annotation is float:
        return number
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    if not number.is_integer():
        raise ValueError(f"config key {name!r} expects an integer, got {value!r}")
    return int(value) if isinstance(value, int) else int(number)


def _check_keys(mapping: dict, where: str) -> None:
    bad = [key for key in mapping if not isinstance(key, str)]
    if bad:
        raise ValueError(f"{where} has key {bad[0]!r}: expected setting names (strings)")


def load_yaml_mapping(yaml_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping of settings in a YAML file (empty file: ``{}``); one-line errors naming the file."""
    path = Path(yaml_path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"config file {path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not UTF-8 text") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    _check_keys(loaded, f"config file {path}")
    return loaded


def build_config(cls: type[C], yaml_path: str | os.PathLike[str] | None = None, **overrides: Any) -> C:
    """Defaults of ``cls`` <- YAML mapping at ``yaml_path`` <- ``overrides`` (``None`` = not given).

    Overrides of a nested settings block (a dict for a dataclass field) are merged key by key into the
    file's block, so a flag changes one knob without dropping the file's others.
    """
    values: dict[str, Any] = load_yaml_mapping(yaml_path) if yaml_path is not None else {}
    from_file = set(values)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            value = {**values[key], **value}
        values[key] = value
        from_file.discard(key)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        where = f" in {yaml_path}" if yaml_path is not None else ""
        shown = [k if k.isprintable() and k and k.strip() == k else repr(k) for k in unknown]  # one line, visible
        raise ValueError(f"unknown config key(s) {', '.join(shown)}{where} for {cls.__name__}: "
                         f"expected some of {', '.join(sorted(fields))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        where = f" in {yaml_path}" if yaml_path is not None else ""
        raise ValueError(f"missing required key(s) {', '.join(map(repr, missing))}{where} for {cls.__name__}")
    kwargs = {}
    for name, value in values.items():
        try:
            kwargs[name] = _coerce(name, value, hints[name])
        except ValueError as exc:
            raise ValueError(f"config file {yaml_path}: {exc}" if name in from_file else str(exc)) from None
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a check meeting a type it did not expect: still the user's settings
        raise ValueError(f"invalid {cls.__name__} settings: {exc}") from None
    except ValueError as exc:  # a check across settings: say where they were read from
        if yaml_path is None or from_file.isdisjoint(kwargs) or str(yaml_path) in str(exc):
            raise
        raise ValueError(f"{exc} (settings read from config file {yaml_path})") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def write_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML, atomically."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def parse_key_values(items: list[str] | None) -> dict[str, Any]:
    """``["scale=2", "mode=x"]`` -> ``{"scale": 2, "mode": "x"}`` (values parsed as YAML scalars)."""
    result: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"option {item!r} is invalid: expected key=value")
        key, raw = item.split("=", 1)
        result[key.strip()] = yaml.safe_load(raw)
    return result


def field_defaults(cls: type) -> dict[str, Any]:
    """Each field's default value (factories called), e.g. for the ``(default: ...)`` of ``--help``."""
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults
