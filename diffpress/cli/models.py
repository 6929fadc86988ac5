"""`diffpress models`: the built-in models."""
from __future__ import annotations

from ..api import models
from . import options


def register(subparsers) -> None:
    parser = options.add_command(subparsers, "models", "list the built-in models",
                                 "List the models shipped with diffpress (usable as builtin:NAME).",
                                 ("diffpress models",))
    parser.set_defaults(handler=run)


def run(args) -> int:
    for name, summary in models():
        print(f"{name:<18} {summary}")
    return 0
