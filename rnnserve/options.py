"""Command-line flags built from a configuration dataclass: one place for a default, its reason and its choices."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


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


def add_flags(parser: argparse.ArgumentParser, config_type: type, positional: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        kind = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if f.name in positional:
            parser.add_argument(f.name, type=kind, help=help_text)
        elif kind is bool:
            parser.add_argument(flag(f.name), action="store_true", default=f.default, help=help_text)
        else:
            shown = "" if f.default is None else f" (default: {f.default})"
            parser.add_argument(flag(f.name), type=kind, default=f.default, choices=choices, help=help_text + shown)


def config_from(config_type: type, args: argparse.Namespace):
    return config_type(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_type)})
