"""Typed, validated loading of ``params.yaml`` sections.

Each library module declares the params section it reads as a dataclass whose fields carry the
default and a one-line comment (nanoGPT style). ``load_section`` merges the YAML over those
defaults, converts and checks every value against the field's type, and refuses unknown keys, so a
typo in ``params.yaml`` fails loudly with the exact key instead of being silently ignored.

Reads: ``params.yaml`` (or the path given). Writes: nothing.
Used by every stage: ``section = load_section(DataParams, "data")``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from cifar_dvc.errors import ParamsError

PARAMS_FILE = Path("params.yaml")

T = TypeVar("T")


def read_params(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """The whole params file as a dict; a missing or malformed file is a ParamsError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read params file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_section(cls: type[T], section: str, params: dict[str, Any] | None = None,
                 path: Path | str = PARAMS_FILE) -> T:
    """Build dataclass ``cls`` from ``params[section]`` (defaults for absent keys, errors for bad ones).

    ``section`` may be dotted (``variants.cnn``). A missing section means all defaults.
    """
    if params is None:
        params = read_params(path)
    node: Any = params
    for part in section.split("."):
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            break
    return from_dict(cls, node if node is not None else {}, where=section, file=str(path))


def from_dict(cls: type[T], data: Any, where: str, file: str = str(PARAMS_FILE)) -> T:
    """Convert a plain mapping into dataclass ``cls``, validating recursively."""
    if not isinstance(data, dict):
        raise ParamsError(f"{file}: {where}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(
            f"{file}: {where}: unknown key {_join(where, unknown[0])!r}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    values = {}
    for name in fields:
        if name in data:
            values[name] = _convert(hints[name], data[name], _join(where, name), file)
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as exc:
            raise ParamsError(f"{file}: {where}: {exc}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Inverse of ``from_dict``: a dataclass as plain YAML-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if value is not None else "null"


def _convert(tp: Any, value: Any, where: str, file: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where, file)
            except ParamsError as exc:
                errors.append(exc)
        names = " or ".join(_type_name(a) for a in args)
        raise ParamsError(f"{file}: {where}: expected {names}, got {_show(value)}")
    if origin is Literal:
        if value in args:
            return value
        choices = " | ".join(str(a) for a in args)
        raise ParamsError(f"{file}: {where}: expected one of {choices}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, file)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ParamsError(f"{file}: {where}: expected a list, got {_show(value)}")
        item = args[0] if args else Any
        return [_convert(item, v, f"{where}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{file}: {where}: expected a mapping, got {_show(value)}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(vt, v, _join(where, str(k)), file) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML's .nan passes every range check (nan <= 0 is false)
                raise ParamsError(f"{file}: {where}: expected a finite number, got {_show(value)}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ParamsError(f"{file}: {where}: expected {_type_name(tp)}, got {_show(value)}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))
