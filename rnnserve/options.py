"""Command-line flags built from a configuration dataclass: one place for a default, its reason and its choices.

A layered configuration (`rnnserve serve`'s) also reads each setting from an environment variable and from a TOML
file, with this precedence: command-line flag > `RNNSERVE_<SETTING>` environment variable > `--config` file >
default.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping

ENV_PREFIX = "RNNSERVE_"
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def option(default, help: str, choices: tuple | None = None):
    """A config field with its default, the one line that explains it (shown by --help) and, where it has
    them, the values it may take (listed by --help and checked by the parser)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def check_choices(config) -> None:
    """Raises ValueError for a field outside its choices: a config built in code is checked like a flag."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) is not None and getattr(config, f.name) not in choices:
            raise ValueError(f"{flag(f.name)} {getattr(config, f.name)!r}: expected one of {', '.join(map(str, choices))}")


def flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _base_type(annotation):
    """int | None → int; the type argparse should convert a flag's text to."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if isinstance(annotation, types.UnionType) and args else annotation


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_flags(parser: argparse.ArgumentParser, config_type: type, positional: tuple[str, ...] = (), layered: bool = False) -> None:
    """A flag per field. Layered: flags left out stay out of the namespace (so that `config_from` can tell them from
    defaults), each help names its environment variable, and `--config FILE` reads a TOML file."""
    hints = typing.get_type_hints(config_type)
    if layered:
        parser.add_argument(
            "--config", metavar="FILE", default=None,
            help=f"a TOML file of settings named as the flags (port = 8001, max-batch = 32); a flag overrides its "
            f"{ENV_PREFIX}* environment variable, which overrides the file",
        )
    for f in dataclasses.fields(config_type):
        kind = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        default = argparse.SUPPRESS if layered else f.default
        shown = [] if f.default is None else [f"default: {f.default}"]
        shown += [f"env {env_name(f.name)}"] if layered else []
        help_text += f" ({'; '.join(shown)})" if shown else ""
        if f.name in positional:
            parser.add_argument(f.name, type=kind, help=help_text)
        elif kind is bool:  # --x and --no-x
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(flag(f.name), type=kind, default=default, choices=choices, help=help_text)


def config_from(config_type: type, args: argparse.Namespace, environ: Mapping[str, str] | None = None):
    """The configuration from the command line; layered (with `environ`), over the environment, over the file."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_type) if hasattr(args, f.name)}
    if environ is None:
        return config_type(**given)
    settings = _from_file(config_type, args.config) if args.config else {}
    settings |= _from_environment(config_type, environ)
    return config_type(**(settings | given))


def _from_environment(config_type: type, environ: Mapping[str, str]) -> dict:
    hints = typing.get_type_hints(config_type)
    settings = {}
    for f in dataclasses.fields(config_type):
        text = environ.get(env_name(f.name))
        if text is not None:
            settings[f.name] = _parse(_base_type(hints[f.name]), text, env_name(f.name))
    return settings


def _from_file(config_type: type, path: str) -> dict:
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as err:
        raise ValueError(f"--config {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--config {path}: not TOML: {err}") from None
    hints = typing.get_type_hints(config_type)
    names = [f.name for f in dataclasses.fields(config_type)]
    settings = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ValueError(f"--config {path}: unknown setting {key!r}; the settings are: {', '.join(n.replace('_', '-') for n in names)}")
        kind = _base_type(hints[name])
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise ValueError(f"--config {path}: {key} = {value!r} is not {_kind_name(kind)}")
        settings[name] = value
    return settings


def _parse(kind: type, text: str, source: str):
    if kind is bool:
        if text.lower() not in TRUE + FALSE:
            raise ValueError(f"{source}={text!r}: expected one of {', '.join(TRUE + FALSE)}")
        return text.lower() in TRUE
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{source}={text!r} is not {_kind_name(kind)}") from None


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, kind.__name__)
