"""`diffpress` command line: argparse over diffpress.api. Errors print one line and exit 2."""
from __future__ import annotations

import argparse
import os
import sys
from textwrap import dedent

from .. import __version__
from ..recipe import PRESETS

EXIT_USAGE_OR_INPUT = 2


def _format_bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1000
    return str(count)


def _compress_parser(subparsers) -> None:
    presets = "\n".join(f"  {name:<12} {text}" for name, (_, text) in PRESETS.items())
    parser = subparsers.add_parser(
        "compress", help="quantize a diffusers model or pipeline and save it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Quantize the denoiser (UNet or transformer) of MODEL and save a diffusers-format "
                    "directory that diffpress.load() reads back.",
        epilog=dedent("""\
            presets:
            {presets}

            examples:
              diffpress compress ./my-sd15-pipeline --preset w8a16-int8 --out ./sd15-int8
              diffpress compress ./transformer --preset w4a16-int4 --out ./transformer-int4 --overwrite
            """).format(presets=presets))
    parser.add_argument("model", metavar="MODEL", help="local diffusers model or pipeline directory")
    parser.add_argument("--preset", required=True, choices=list(PRESETS), metavar="NAME",
                        help="quantization preset (see below)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, summary only")
    parser.set_defaults(handler=_run_compress)


def _run_compress(args) -> int:
    from ..api import compress

    result = compress(args.model, args.preset, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print(f"{result.model_class}: preset {result.preset}: quantized {len(result.report.quantized)} layers, "
          f"skipped {len(result.report.skipped)}")
    for fqn, reason in result.report.skipped.items():
        print(f"  kept in high precision: {fqn:<50} ({reason})")
    ratio = result.bytes_before / max(result.bytes_after, 1)
    print(f"weights: {_format_bytes(result.bytes_before)} -> {_format_bytes(result.bytes_after)} "
          f"({ratio:.2f}x smaller)")
    print(f"saved {result.out} in {result.seconds:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffpress", description="Post-training compression for diffusion models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run 'diffpress COMMAND --help' for a command's options and examples")
    parser.add_argument("--version", action="version", version=f"diffpress {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _compress_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
    args = build_parser().parse_args(argv)
    from ..errors import DiffpressError

    try:
        return args.handler(args)
    except DiffpressError as error:
        print(f"diffpress: error: {error}", file=sys.stderr)
        return EXIT_USAGE_OR_INPUT
    except KeyboardInterrupt:
        print("diffpress: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
