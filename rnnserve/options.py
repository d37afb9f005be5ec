"""Command-line flags built from a configuration dataclass: one place for a default and its reason."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def option(default, help: str):
    """A config field with its default and the one line that explains it (shown by --help)."""
    return dataclasses.field(default=default, metadata={"help": help})


def _base_type(annotation):
    """int | None → int; the type argparse should convert a flag's text to."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if isinstance(annotation, types.UnionType) and args else annotation


def add_flags(parser: argparse.ArgumentParser, config_type: type, positional: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        kind = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if f.name in positional:
            parser.add_argument(f.name, type=kind, help=help_text)
        elif kind is bool:
            parser.add_argument(f"--{f.name.replace('_', '-')}", action="store_true", default=f.default, help=help_text)
        else:
            shown = "" if f.default is None else f" (default: {f.default})"
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=help_text + shown)


def config_from(config_type: type, args: argparse.Namespace):
    return config_type(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_type)})
