"""Config dataclasses that validate themselves, and their loading from YAML / JSON / dicts.

Every error names the file and the dotted key, so a typo in a robot's YAML is found before any
tensor is built. Used by every config of the package (model, robot contract, dataset, training).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "SelfValidating", "from_dict", "load_json", "load_yaml", "read_yaml", "require_positive"]


class ConfigError(ValueError):
    """A config file or dict is invalid; the message names the source and the key."""


class SelfValidating:
    """Base of the config dataclasses: construction runs ``validate``.

    The YAML loaders are not the only way a config is made: direct construction and
    ``dataclasses.replace`` (command-line overrides, per-run seeds) must not skip the checks.
    ``validate(where)`` raises ConfigError messages that start with ``where``; built directly,
    ``where`` is the class name, built from a file, ``from_dict`` puts the file and dotted key there.
    """

    def __post_init__(self) -> None:
        self.validate(type(self).__name__)

    def validate(self, where: str) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError


def require_positive(obj: Any, where: str, *keys: str) -> None:
    for key in keys:
        if getattr(obj, key) <= 0:
            raise ConfigError(f"{where}.{key}: must be > 0, got {getattr(obj, key)}")


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The parsed YAML file; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc


def load_yaml(cls: type, path: str | Path, section: str | None = None) -> Any:
    """Load dataclass ``cls`` from a YAML file (optionally one top-level section of it)."""
    path = Path(path)
    data = read_yaml(path)
    if section is not None:
        if not isinstance(data, dict) or section not in data:
            raise ConfigError(f"{path}: missing top-level section '{section}'")
        data = data[section]
    return from_dict(cls, data if data is not None else {}, str(path))


def load_json(cls: type, path: str | Path) -> Any:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    return from_dict(cls, data, str(path))


def from_dict(cls: type, data: Any, source: str) -> Any:
    """Build and validate dataclass ``cls`` from plain data; errors read ``source: key: problem``."""
    obj = _build(cls, data, source, "")
    if hasattr(obj, "validate") and not isinstance(obj, SelfValidating):
        try:
            obj.validate("")
        except ConfigError as exc:
            raise ConfigError(f"{source}: {str(exc).lstrip('.')}") from None
    return obj


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known: {sorted(names)})")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, source, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a SelfValidating class said "ClassName.key: ...": name the file's key
        message, name = str(exc), cls.__name__
        if not message.startswith(name):
            raise ConfigError(f"{source}: {prefix}{message}") from None
        rest = message[len(name):]
        if rest.startswith("."):
            raise ConfigError(f"{source}: {prefix}{rest[1:]}") from None
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}{rest}") from None


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, source, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {type(value).__name__}")
        kt, vt = typing.get_args(hint)
        return {_coerce(kt, k, source, key): _coerce(vt, v, source, f"{key}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
        return value
    return value
