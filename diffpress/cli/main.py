"""`diffpress` command line: one module per command over diffpress.api. Every mistake ends in one line
on stderr naming the option, the value and what is allowed, exit status 2, and nothing written."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import __version__
from ..errors import DiffpressError
from . import calibrate, compress, evaluate, inspect, models, prune, sensitivity

EXIT_USAGE_OR_INPUT = 2
EXIT_INTERRUPTED = 130
COMMANDS = (compress, prune, calibrate, sensitivity, evaluate, inspect, models)


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors on one line: `diffpress compress: error: argument --buckets: ...`."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(EXIT_USAGE_OR_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="diffpress", description="Post-training compression for diffusion models.",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="run 'diffpress COMMAND --help' for a command's options and examples")
    parser.add_argument("--version", action="version", version=f"diffpress {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    for name, subparser in subparsers.choices.items():
        subparser.set_defaults(option_flags=option_flags(subparser))
    return parser


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the option's long name, to name the option an API error's `option` refers to."""
    return {action.dest: max(action.option_strings, key=len) for action in parser._actions if action.option_strings}


def error_line(error: DiffpressError, flags: dict[str, str]) -> str:
    message = str(error).replace("\n", " ")
    flag = flags.get(error.option or "")
    return f"{flag}: {message}" if flag and flag not in message else message


def _quiet_libraries() -> None:
    """diffusers' info logs and component-loading bars are noise in this CLI's output."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    _quiet_libraries()
    _quiet_other_ranks(args)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # cleaned up like Ctrl-C: nothing partial is left
    try:
        return args.handler(args)
    except DiffpressError as error:
        print(f"diffpress {args.command}: error: {error_line(error, args.option_flags)}", file=sys.stderr)
        return EXIT_USAGE_OR_INPUT
    except KeyboardInterrupt:
        hint = "; rerun with --resume to continue from its checkpoints" if _resumable(args) else ""
        print(f"diffpress {args.command}: interrupted; no output was written{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


def _quiet_other_ranks(args) -> None:
    """Under torchrun every rank runs the command; rank 0 prints and writes, the others work silently."""
    from ..api import other_rank

    if other_rank():
        args.quiet = True
        sys.stdout = open(os.devnull, "w")


def _resumable(args) -> bool:
    if getattr(args, "resume", None) is None or not getattr(args, "out", None):
        return False
    from ..api import resumable

    return resumable(args.out)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
