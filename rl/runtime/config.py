"""Typed dataclass configs, their command line, and config files.

A program's configuration is a ``@dataclass`` whose fields have working
defaults; field ``metadata={"help": ...}`` becomes the ``--help`` text. The
command line is generated from it:

* ``snake_case`` field -> ``--kebab-case`` option;
* ``bool`` -> ``--flag`` / ``--no-flag``;
* ``tuple[X, ...]`` / ``list[X]`` -> one or more values (``--hidden 64 64``);
  ``tuple[X, Y]`` -> exactly two values; a union such as
  ``float | tuple[float, ...]`` takes one value (a scalar) or several;
* ``X | None`` -> ``none`` on the command line means ``None``;
* ``Literal["a", "b"]`` -> ``choices``;
* ``pathlib.Path``, ``dict`` and nested dataclasses (the last two as JSON on
  the command line) are accepted too.

``--config FILE`` (YAML or JSON) is read first, then the options actually given
on the command line override it. Unknown keys are errors listing the valid
ones; values of the wrong type are errors naming the key and the expected type.
If the dataclass defines ``validate(self)``, it runs after construction (its
``ValueError``\\ s reach the caller).

>>> from dataclasses import dataclass, field
>>> @dataclass
... class Demo:
...     lr: float = field(default=3e-4, metadata={"help": "step size"})
...     hidden: tuple[int, ...] = (64, 64)
...     render: bool = False
>>> parse_config(Demo, ["--hidden", "32", "16", "--render"])
Demo(lr=0.0003, hidden=(32, 16), render=True)
>>> config_to_dict(load_config(Demo, {"lr": 0.01}))
{'lr': 0.01, 'hidden': [64, 64], 'render': False}

Numbers are read leniently where it is unambiguous: an ``int`` field takes
``4.0`` (JSON writes ``1e6`` as a float), a ``float`` field takes the string
``"3e-4"`` (YAML 1.1, as read by PyYAML, loads ``3e-4`` as a string), and a
``tuple[X, ...]`` field takes a single scalar as a 1-tuple.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "build_parser",
    "config_to_dict",
    "load_config",
    "parse_config",
    "parse_config_or_resume",
    "read_config_file",
    "resume_config",
    "run_settings",
    "usage_error",
]

T = TypeVar("T")

_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")
_CONFIG_DEST = "_config_file"


class ConfigError(ValueError):
    """A config problem: unknown or missing key, unreadable file, bad value."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value has the wrong type (also a ``TypeError``)."""


# --------------------------------------------------------------------------- types


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _is_seq(tp: Any) -> bool:
    return typing.get_origin(tp) in (tuple, list) or tp in (tuple, list)


def _members(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if _is_union(tp) else (tp,)


def _describe(tp: Any) -> str:
    """Human-readable name of a type annotation."""
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any value"
    if _is_union(tp):
        return " or ".join(_describe(m) for m in typing.get_args(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + repr(list(args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        if args:
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return "a list"
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    """Internal: a value does not fit a type (message says why)."""


def _coerce(value: Any, tp: Any, key: str, strict: bool = False) -> Any:
    """Check ``value`` against ``tp``, converting where unambiguous.

    ``strict`` (used when trying the members of a union) turns off the lenient
    conversions (numeric strings, integral floats, scalar -> 1-tuple).
    """
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if _is_union(tp):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        for strict_pass in (True, False):
            for m in members:
                if m is type(None):
                    continue
                try:
                    return _coerce(value, m, key, strict=strict_pass)
                except _Mismatch:
                    pass
        raise _Mismatch
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        if not strict and isinstance(value, str):
            for choice in args:
                if str(choice) == value:
                    return choice
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if not strict and isinstance(value, float) and value.is_integer():
            return int(value)
        if not strict and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    as_float = float(value)
                except ValueError:
                    raise _Mismatch from None
                if as_float.is_integer():
                    return int(as_float)
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int | float):
            return float(value)
        if not strict and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        if isinstance(value, str | os.PathLike):
            return Path(value)
        raise _Mismatch
    if _is_seq(tp):
        container = tuple if (origin or tp) is tuple else list
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
            if strict or isinstance(value, Mapping) or value is None:
                raise _Mismatch
            value = [value]  # a scalar where a list is expected: a 1-element list
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        elem = args[0] if args else Any
        return container(_coerce(v, elem, key) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        if len(args) == 2:
            return {_coerce(k, args[0], key): _coerce(v, args[1], key) for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _from_mapping(tp, value, prefix=f"{key}.")
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value  # an annotation we cannot check (e.g. a TypeVar): accept as is


def _fields(cls: type) -> tuple[list[dataclasses.Field], dict[str, Any]]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    return fields, hints


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _from_mapping(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    fields, hints = _fields(cls)
    names = [f.name for f in fields]
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        if not isinstance(raw_key, str):
            raise ConfigError(f"config key {prefix}{raw_key!r} is not a string")
        key = raw_key.replace("-", "_")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown config key {prefix}{raw_key!r} for {cls.__name__}{hint}; "
                f"valid keys: {', '.join(names)}"
            )
        if key in values:
            raise ConfigError(f"config key {prefix}{key!r} is given twice")
        tp = hints[key]
        try:
            values[key] = _coerce(value, tp, prefix + key)
        except _Mismatch:
            raise ConfigTypeError(
                f"config key {prefix}{key!r} expects {_describe(tp)}, got {value!r} ({type(value).__name__})"
            ) from None
    missing = [f.name for f in fields if f.name not in values and _default_of(f) is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required config keys for {cls.__name__}: {missing}")
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


# --------------------------------------------------------------------------- files


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) file into a dict.

    Raises:
        ConfigError: if the file is missing, has another suffix, does not parse,
            or does not hold a mapping at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file {path} has suffix {suffix!r}; expected .yaml, .yml or .json")
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot parse config file {path}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds a {type(data).__name__}; expected a mapping of keys")
    return data


def load_config(
    cls: type[T],
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build a config from a file or a dict, plus optional overrides.

    Args:
        cls: the config dataclass.
        source: path of a YAML/JSON file, a mapping of field values, or ``None``
            (all defaults). Keys may be written ``snake_case`` or ``kebab-case``.
        overrides: values applied on top of ``source`` (same rules).

    Returns:
        A validated instance of ``cls`` (its ``validate()`` hook, if any, ran).

    Raises:
        ConfigError: unknown key (the valid keys are listed), missing required
            key, unreadable file (a ``ValueError``).
        ConfigTypeError: a value of the wrong type (names the key and the
            expected type; both a ``ValueError`` and a ``TypeError``).
        ValueError: raised by the ``validate()`` hook.
    """
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        data = dict(source)
    elif isinstance(source, str | os.PathLike):
        data = read_config_file(source)
    else:
        raise TypeError(f"config source must be a path, a mapping or None, got {type(source).__name__}")
    if overrides:
        data = {k.replace("-", "_"): v for k, v in data.items()}
        data.update({k.replace("-", "_"): v for k, v in overrides.items()})
    return _from_mapping(cls, data)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a config (tuples -> lists, paths -> str).

    ``load_config(type(cfg), config_to_dict(cfg)) == cfg`` for supported types.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


# --------------------------------------------------------------------------- CLI


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_from_str(text: str, tp: Any) -> Any:
    """Parse one command-line word as the (non-sequence) type ``tp``."""
    if tp is Any or tp is str:
        return text
    if tp is type(None):
        if text.lower() in _NONE_WORDS:
            return None
        raise ValueError
    if tp is bool:
        low = text.lower()
        if low in _TRUE_WORDS:
            return True
        if low in _FALSE_WORDS:
            return False
        raise ValueError
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    origin = typing.get_origin(tp)
    if origin is Literal:
        for choice in typing.get_args(tp):
            if str(choice) == text:
                return choice
        raise ValueError
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return json.loads(text)
    if _is_union(tp):
        for m in typing.get_args(tp):
            try:
                return _scalar_from_str(text, m)
            except ValueError:
                pass
        raise ValueError
    if isinstance(tp, type):
        return tp(text)  # Path and other str-constructible types
    return text


def _value_from_cli(raw: str | list[str], tp: Any) -> Any:
    """Turn the string(s) argparse collected for a field into a python value."""
    words = raw if isinstance(raw, list) else [raw]
    members = _members(tp)
    if type(None) in members and len(words) == 1 and words[0].lower() in _NONE_WORDS:
        return None
    scalars = [m for m in members if not _is_seq(m) and m is not type(None)]
    seqs = [m for m in members if _is_seq(m)]
    if len(words) == 1:
        for m in scalars:
            try:
                return _scalar_from_str(words[0], m)
            except ValueError:
                pass
    for m in seqs:
        args = typing.get_args(m)
        if args and not (len(args) == 2 and args[1] is Ellipsis) and typing.get_origin(m) is tuple:
            elem_types: list[Any] = list(args)
            if len(elem_types) != len(words):
                continue
        else:
            elem_types = [args[0] if args else Any] * len(words)
        try:
            return [_scalar_from_str(w, e) for w, e in zip(words, elem_types, strict=True)]
        except ValueError:
            pass
    raise ValueError(f"expected {_describe(tp)}, got {' '.join(words)!r}")


def _nargs(tp: Any) -> int | str | None:
    members = [m for m in _members(tp) if m is not type(None)]
    seqs = [m for m in members if _is_seq(m)]
    if not seqs:
        return None
    if len(members) == 1 and type(None) not in _members(tp):
        args = typing.get_args(seqs[0])
        if typing.get_origin(seqs[0]) is tuple and args and args[-1] is not Ellipsis:
            return len(args)
    return "+"


def _metavar(tp: Any) -> str | None:
    members = [m for m in _members(tp) if m is not type(None)]
    elem = members[0]
    if _is_seq(elem):
        args = typing.get_args(elem)
        elem = args[0] if args else Any
    if typing.get_origin(elem) is Literal:
        return None  # argparse shows the choices
    if dataclasses.is_dataclass(elem) or elem is dict or typing.get_origin(elem) is dict:
        return "JSON"
    name = getattr(elem, "__name__", "VALUE")
    return "VALUE" if name == "Any" else name.upper()


def _choices(tp: Any) -> list[str] | None:
    members = [m for m in _members(tp) if m is not type(None)]
    if len(members) == 1:
        elem = members[0]
        if _is_seq(elem):
            args = typing.get_args(elem)
            elem = args[0] if args else Any
        if typing.get_origin(elem) is Literal:
            choices = [str(c) for c in typing.get_args(elem)]
            if type(None) in _members(tp):
                choices.append("none")
            return choices
    return None


def _default_text(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    plain = _plain(value)
    if isinstance(plain, list):
        return " ".join(str(v) for v in plain) if plain else "[]"
    if isinstance(plain, dict):
        return json.dumps(plain)
    return str(plain)


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """Generate an :class:`argparse.ArgumentParser` from a config dataclass.

    Every ``init`` field becomes ``--kebab-case`` (see the module docs for the
    type rules), with its ``metadata["help"]`` and default in ``--help``; plus
    ``--config FILE``. Options not given on the command line are absent from
    the parsed namespace (``argparse.SUPPRESS``), so :func:`parse_config` can
    tell them apart from defaults.

    Args:
        cls: the config dataclass.
        description: text shown at the top of ``--help`` (defaults to the
            dataclass docstring).

    Raises:
        TypeError: if ``cls`` is not a dataclass type.
        ValueError: if a field is named ``config`` (taken by ``--config``).
    """
    fields, hints = _fields(cls)
    if description is None:
        doc = cls.__doc__ or ""
        description = None if doc.startswith(cls.__name__ + "(") else doc.strip() or None
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # "python -m pkg.mod"
    parser = argparse.ArgumentParser(
        prog=f"python -m {main_spec.name}" if main_spec is not None and main_spec.name else None,
        description=description,
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        dest=_CONFIG_DEST,
        metavar="FILE",
        help="YAML or JSON file of options; options given on the command line override it",
    )
    for f in fields:
        if f.name == "config":
            raise ValueError(f"{cls.__name__} has a field named 'config', which --config uses")
        tp = hints[f.name]
        help_text = str(f.metadata.get("help", "")).strip()
        default = _default_of(f)
        shown = f"(default: {_default_text(default)})"
        help_text = f"{help_text} {shown}" if help_text else shown
        help_text = help_text.replace("%", "%%")
        if tp is bool:
            parser.add_argument(
                _flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, help=help_text
            )
            continue
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            nargs=_nargs(tp),
            metavar=_metavar(tp),
            choices=_choices(tp),
            help=help_text,
        )
    return parser


def usage_error(cls: type, message: str) -> typing.NoReturn:
    """Print ``message`` as a usage error of the command line of ``cls`` and exit with status 2.

    The argparse form: the usage line, then ``<prog>: error: <message>`` on stderr.
    """
    build_parser(cls).error(message)


def _requested_values(parser: argparse.ArgumentParser, cls: type, argv: Sequence[str]) -> dict[str, Any]:
    """The values asked for on a command line: ``--config FILE`` first, the options on top
    (``snake_case`` keys). Malformed options and unreadable files are usage errors."""
    ns = vars(parser.parse_args(list(argv)))
    config_file = ns.pop(_CONFIG_DEST, None)
    _, hints = _fields(cls)
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values = {
                k.replace("-", "_") if isinstance(k, str) else k: v
                for k, v in read_config_file(config_file).items()
            }
        except ConfigError as err:
            parser.error(str(err))
    for name, raw in ns.items():
        if isinstance(raw, bool):
            values[name] = raw
            continue
        try:
            values[name] = _value_from_cli(raw, hints[name])
        except ValueError as err:
            parser.error(f"argument {_flag(name)}: {err}")
    return values


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    exit_on_error: bool = False,
) -> T:
    """Parse a command line into a config: defaults < ``--config FILE`` < options.

    Args:
        cls: the config dataclass.
        argv: the arguments (default ``sys.argv[1:]``).
        description: ``--help`` header (default: the dataclass docstring).
        exit_on_error: if true, config errors (unknown keys in the file, type
            mismatches, ``validate()`` failures) print a usage message and exit
            with status 2 like argparse errors; if false they are raised.

    Returns:
        A validated instance of ``cls``.

    Raises:
        SystemExit: malformed command line or unreadable ``--config`` file
            (argparse's behaviour), or any config error when ``exit_on_error`` is true.
        ConfigError / ConfigTypeError / ValueError: see :func:`load_config`.
    """
    parser = build_parser(cls, description)
    values = _requested_values(parser, cls, sys.argv[1:] if argv is None else argv)
    try:
        return load_config(cls, values)
    except ValueError as err:
        if exit_on_error:
            parser.error(str(err))
        raise


# --------------------------------------------------------------------------- resuming a run


def resume_config(
    cls: type[T],
    run_dir: str | os.PathLike[str],
    changes: Mapping[str, Any],
    may_change: Sequence[str],
    program: str,
) -> T:
    """The config of the run in ``run_dir`` (its ``config.json``) with ``changes`` applied.

    Only the keys in ``may_change`` may take a value other than the run's; asking for a
    run's own value of any key is allowed (for example ``--config`` with the run's own file).

    Args:
        cls: the config dataclass of the program.
        run_dir: the run folder.
        changes: values asked for (``snake_case`` or ``kebab-case`` keys), for example the
            options of the command line and the keys of a ``--config`` file.
        may_change: the keys that may differ from the run's config.
        program: the program's name for messages (``rl.cpo``).

    Returns:
        The validated config the resumed run will use and record.

    Raises:
        ConfigError: no ``config.json`` in ``run_dir``, an unreadable or invalid one, or a
            key outside ``may_change`` asked to change (each is named with both values).
    """
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.json there; expected a run folder of {program}")
    try:
        recorded = load_config(cls, config_path)
    except ValueError as err:
        raise ConfigError(f"--resume {run_dir}: {config_path} is not a config of {program}: {err}") from err
    asked = {k.replace("-", "_"): v for k, v in changes.items()}
    resumed = load_config(cls, config_to_dict(recorded), overrides=asked)
    fields, _ = _fields(cls)
    refused = [
        f"{f.name} ({getattr(recorded, f.name)!r} in the run, {getattr(resumed, f.name)!r} asked)"
        for f in fields
        if f.name not in may_change and getattr(resumed, f.name) != getattr(recorded, f.name)
    ]
    if refused:
        raise ConfigError(
            f"--resume {run_dir}: {'; '.join(refused)} cannot change when resuming (the run's "
            f"config.json is used); the options that may change: {', '.join(may_change)}"
        )
    return resumed


def parse_config_or_resume(
    cls: type[T], argv: Sequence[str] | None, may_change: Sequence[str], program: str
) -> T:
    """The config of a program's command line; with ``--resume DIR``, the run's config plus the
    changes asked for on the command line and in ``--config FILE`` (:func:`resume_config`).

    ``cls`` must have a ``resume`` field. Every error is a usage error (exit status 2).
    """
    parser = build_parser(cls)
    values = _requested_values(parser, cls, sys.argv[1:] if argv is None else argv)
    try:
        if values.get("resume") is None:
            return load_config(cls, values)
        return resume_config(cls, values["resume"], values, may_change, program)
    except ValueError as err:
        parser.error(str(err))


def run_settings(cfg: Any, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The settings that define a run: ``cfg`` as :func:`config_to_dict` writes it after a round
    trip through :func:`load_config` (so ``5`` and ``5.0`` compare equal), less ``exclude``."""
    plain = config_to_dict(load_config(type(cfg), config_to_dict(cfg)))
    return {k: v for k, v in plain.items() if k not in exclude}
