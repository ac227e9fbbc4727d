"""Typed, frozen dataclass configs with YAML files and dotted `--set key=value` overrides.

Every config is a tree of frozen dataclasses. `load(cls, yaml_path, overrides)` starts from the
dataclass defaults, applies the YAML mapping, then the overrides; an unknown key is an error that
names it. Values given as strings (from `--set`) are parsed as YAML scalars and checked against the
field's type.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg, *rest) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(v, arg, key) for v in value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], mapping: Mapping[str, Any], prefix: str = "") -> T:
    """Builds `cls` from defaults updated by `mapping`; unknown keys raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    base = cls()
    kwargs = {}
    for name, value in mapping.items():
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            kwargs[name] = from_dict(type(current), {**to_dict(current), **value}, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hints[name], prefix + name)
    obj = dataclasses.replace(base, **kwargs)
    if hasattr(obj, "validate"):
        try:  # configs that can sit at several paths (LossConfig) take theirs, for the message
            if prefix and "prefix" in inspect.signature(obj.validate).parameters:
                obj.validate(prefix=prefix.rstrip("."))
            else:
                obj.validate()
        except ConfigError:
            raise
        except ValueError as e:  # model configs raise plain ValueError; surface them as config errors
            raise ConfigError(str(e)) from None
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists), ready for YAML/JSON."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = tree
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is not a section")
        node[leaf] = value
    return tree


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping, with its `base:` file (a path relative to it) merged underneath.

    A variant config then names only what it changes, e.g. `base: sasrec_ml1m.yaml` and a wider model.
    """
    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"{path}: base: files include each other: {cycle}")
    try:
        text = path.read_text()
    except OSError as e:
        where = f" (base: of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"cannot read config {path}{where}: {e.strerror}") from None
    try:
        mapping = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path}: top level must be a mapping")
    if "base" not in mapping:
        return dict(mapping)
    base = mapping.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: expected the path of another config file, got {base!r}")
    return merge(read_yaml(path.parent / base, (*_chain, path.resolve())), mapping)


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults <- YAML file at `path` (and its `base:` chain) <- dotted overrides."""
    mapping = read_yaml(path) if path is not None else {}
    mapping = merge(mapping, parse_overrides(overrides))
    return from_dict(cls, mapping)


def diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            keys += diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys
