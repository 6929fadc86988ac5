"""`diffpress` command line: argparse over diffpress.api. Errors print one line and exit 2."""
from __future__ import annotations

import argparse
import os
import sys
from textwrap import dedent

from .. import __version__
from ..recipe import PRESETS

MIXED_CANDIDATES = ("w4a8-int", "w8a8-int8-learned")  # api.MIXED_CANDIDATES (the CLI imports nothing heavy)

EXIT_USAGE_OR_INPUT = 2


def _format_bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1000
    return str(count)


def _preset_lines() -> str:
    return "\n".join(f"  {name:<16} {text}" for name, (_, text) in PRESETS.items() if not name.endswith("-rtn")) + \
        "\n  NAME-rtn         round-to-nearest baseline of each preset (absmax scales, no method)"


def _add_plan_arguments(parser, mixed: bool = False) -> None:
    plan = parser.add_mutually_exclusive_group(required=True)
    choices = list(PRESETS) + (["mixed"] if mixed else [])
    plan.add_argument("--preset", choices=choices, metavar="NAME", help="quantization preset (see below)")
    plan.add_argument("--recipe", metavar="FILE", help="recipe YAML: default plan + rules (see README)")


def _compress_parser(subparsers) -> None:
    presets = _preset_lines()
    parser = subparsers.add_parser(
        "compress", help="quantize a diffusers model or pipeline and save it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Quantize the denoiser (UNet or transformer) of MODEL and save a diffusers-format "
                    "directory that diffpress.load() reads back.",
        epilog=dedent("""\
            presets:
            {presets}

            examples:
              diffpress compress builtin:digits --preset w4a16-int4 --out out/digits-int4 --eval
              diffpress compress ./my-sd15-pipeline --preset w8a16-int8 --out ./sd15-int8
              diffpress compress ./transformer --preset w4a16-int4 --out ./transformer-int4 --overwrite
              diffpress compress builtin:digits --preset mixed --avg-bits 5 --out out/digits-mixed5
              diffpress compress builtin:digits --preset mixed --max-bytes 400000 --methods rtn --out out/digits-400k
            """).format(presets=presets + "\n  mixed            per-layer formats chosen by integer program from "
                                          "measured sensitivity\n                   (needs --avg-bits or --max-bytes)"))
    parser.add_argument("model", metavar="MODEL", help="local diffusers model or pipeline directory, or builtin:NAME")
    _add_plan_arguments(parser, mixed=True)
    _add_mixed_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, summary only")
    _add_calibration_arguments(parser, "calibration (used only when the recipe's methods need data)", buckets=False)
    parser.add_argument("--eval", action="store_true",
                        help="after saving, run 'diffpress eval' on the result with default settings "
                             "(models that ship an evaluation classifier, such as builtin:digits)")
    parser.set_defaults(handler=_run_compress)


def _add_mixed_arguments(parser) -> None:
    mixed = parser.add_argument_group("mixed precision (--preset mixed: sensitivity, then a 0/1 integer program)")
    budget = mixed.add_mutually_exclusive_group()
    budget.add_argument("--avg-bits", type=float, metavar="B",
                        help="budget: parameter-weighted average weight bits of the allocated layers (e.g. 5)")
    budget.add_argument("--max-bytes", type=int, metavar="N",
                        help="budget: stored bytes (codes + scales) of the allocated layers")
    mixed.add_argument("--max-latency", type=float, metavar="T",
                       help="optional latency budget in the cost table's units (default table: stored bytes)")
    mixed.add_argument("--latency-table", metavar="JSON",
                       help="per-format cost per weight element ({\"w4a8-int\": 0.6, ...}), or a kernel benchmark "
                            "result (bench/results/kernels-<gpu>.json: ms per weight element over its shapes)")
    mixed.add_argument("--candidates", nargs="+", default=list(MIXED_CANDIDATES), metavar="FMT",
                       help=f"formats to choose from (default: {' '.join(MIXED_CANDIDATES)}); bf16 keeps a layer "
                            "unquantized")
    mixed.add_argument("--methods", choices=["full", "rtn"], default="full",
                       help="full (default): measure and quantize with each candidate's full methods (learned "
                            "rounding etc.); rtn: round-to-nearest, faster and worse")
    mixed.add_argument("--sensitivity-calls", type=int, default=2, metavar="C",
                       help="reservoir calls replayed per timestep bucket to measure sensitivity (default 2)")
    _add_image_metric_arguments(mixed)


def _image_layers(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a layer count or 'all', got {text!r}")
    return int(text)


def _add_image_metric_arguments(group) -> None:
    group.add_argument("--image-layers", type=_image_layers, default=None, metavar="K|all",
                       help="layers costed by the final-image metric (default all; 0: output SQNR only, "
                            "for large models where sampling per layer is too slow)")
    group.add_argument("--image-samples", type=int, default=16, metavar="N", help="image-metric samples (default 16)")
    group.add_argument("--image-steps", type=int, default=None, metavar="S",
                       help="image-metric sampler steps (default: the calibration's --calib-steps)")


def _mixed_options(args):
    from ..api import MixedOptions
    from ..errors import InputError

    budget_given = args.avg_bits is not None or args.max_bytes is not None
    if args.preset != "mixed":
        if budget_given:
            raise InputError("--avg-bits / --max-bytes choose a budget for --preset mixed; add --preset mixed")
        return None
    if not budget_given:
        raise InputError("--preset mixed needs a budget: --avg-bits B or --max-bytes N")
    return MixedOptions(args.avg_bits, args.max_bytes, args.max_latency, tuple(args.candidates),
                        args.sensitivity_calls, args.methods, args.latency_table, args.image_layers,
                        args.image_samples, args.image_steps)


def _calibration_options(args):
    from ..api import CalibrationOptions, read_prompts

    items = read_prompts(args.calib_prompts) if args.calib_prompts else args.calib_labels
    buckets = {"buckets": args.buckets} if hasattr(args, "buckets") else {}  # compress has no --buckets
    return CalibrationOptions(num_samples=args.calib_samples, steps=args.calib_steps,
                              labels_or_prompts=tuple(items) if items else None, calibration_file=args.calibration,
                              **buckets)


def _run_compress(args) -> int:
    from ..api import compress

    mixed = _mixed_options(args)
    result = compress(args.model, args.preset, args.out, overwrite=args.overwrite, progress=not args.quiet,
                      recipe=args.recipe, calibration=_calibration_options(args), mixed=mixed)
    if result.allocation is not None:
        a = result.allocation
        print(f"allocation: {a.avg_bits:.3f} average weight bits, {a.total_bytes} bytes of codes + scales; "
              + ", ".join(f"{name}: {count} layers" for name, count in sorted(a.counts.items())))
    print(f"{result.model_class}: {'preset ' + result.preset if args.preset else 'recipe ' + args.recipe}: quantized {len(result.report.quantized)} layers, "
          f"skipped {len(result.report.skipped)}")
    for fqn, reason in result.report.skipped.items():
        print(f"  kept in high precision: {fqn:<50} ({reason})")
    ratio = result.bytes_before / max(result.bytes_after, 1)
    print(f"weights: {_format_bytes(result.bytes_before)} -> {_format_bytes(result.bytes_after)} "
          f"({ratio:.2f}x smaller)")
    print(f"saved {result.out} in {result.seconds:.1f} s")
    if args.eval:
        from ..api import evaluate

        _print_eval(evaluate(args.model, result.out, progress=not args.quiet), _grid_arg(result.out, None))
    return 0


def _add_calibration_arguments(parser, title: str = "calibration", buckets: bool = True) -> None:
    calib = parser.add_argument_group(title)
    calib.add_argument("--calibration", metavar="FILE", help="a saved calibration set (diffpress calibrate)")
    calib.add_argument("--calib-samples", type=int, default=32, metavar="N", help="samples to generate (default 32)")
    calib.add_argument("--calib-steps", type=int, default=25, metavar="S", help="inference steps (default 25)")
    calib.add_argument("--calib-prompts", metavar="FILE", help="prompts file, one per line (text-to-image models)")
    calib.add_argument("--calib-labels", type=int, nargs="+", metavar="L", help="class labels (default 0..9 for built-ins)")
    if buckets:
        calib.add_argument("--buckets", type=int, default=8, metavar="B", help="timestep buckets (default 8)")


def _sensitivity_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sensitivity", help="per-layer, per-timestep quantization sensitivity report (HTML, markdown, JSON)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Calibrate MODEL, then quantize each layer alone with each candidate format and measure the "
                    "damage two ways (MixDQ): the denoiser-output SQNR per timestep bucket on replayed calibration "
                    "calls, and the PSNR/SSIM of final samples against the float model's (the metric the "
                    "allocation uses; every layer by default). Writes DIR/report.html (self-contained), "
                    "report.md, report.json, the PNG figures, and recipe.yaml: the integer program's allocation "
                    "at --avg-bits, usable with 'diffpress compress --recipe'.",
        epilog=dedent("""\
            cost: layers x candidates x buckets x --calls-per-bucket replayed denoiser calls, plus
            --image-layers x candidates sampler runs of --image-samples x --image-steps (builtin:digits
            with the defaults: 72 x 6 x 8 x 1 = 3,456 calls of batch 8, plus 72 x 6 = 432 runs of 16
            samples x 25 steps). For large models, bound the image metric with --image-layers K: it then
            goes to the K layers where the output metric is least trustworthy.

            examples:
              diffpress sensitivity builtin:digits --out report/digits
              diffpress sensitivity builtin:digits --out report/digits --candidates w4a8-int w8a8-int8 --avg-bits 5
              diffpress sensitivity ./sd15 --calib-prompts prompts.txt --calib-samples 8 --out report/sd15 --image-layers 32
            """))
    parser.add_argument("model", metavar="MODEL", help="pipeline directory or builtin:NAME")
    parser.add_argument("--out", required=True, metavar="DIR", help="report directory")
    parser.add_argument("--overwrite", action="store_true", help="write into DIR even if it is not empty")
    parser.add_argument("--candidates", nargs="+", metavar="FMT",
                        default=["bf16", "w8a8-int8", "w8a8-fp8", "w4a8-int", "w4a16-int4", "w4a8-fp4"],
                        help="formats to measure (default: bf16 w8a8-int8 w8a8-fp8 w4a8-int w4a16-int4 w4a8-fp4)")
    parser.add_argument("--calls-per-bucket", type=int, default=1, metavar="C",
                        help="reservoir calls replayed per timestep bucket (default 1)")
    parser.add_argument("--methods", choices=["rtn", "full"], default="rtn",
                        help="measure each candidate's round-to-nearest variant (rtn, default: fast, no "
                             "calibration-driven methods) or its full preset (full: what --preset mixed uses)")
    _add_image_metric_arguments(parser)
    parser.add_argument("--avg-bits", type=float, default=5.0, metavar="B",
                        help="budget of the allocation shown in the report (default 5)")
    parser.add_argument("--top-k", type=int, default=5, metavar="K",
                        help="layers kept in high precision in the recipe snippet (default 5)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_calibration_arguments(parser)
    parser.set_defaults(handler=_run_sensitivity)


def _run_sensitivity(args) -> int:
    from ..api import sensitivity_report
    from ..compress.sensitivity import SensitivityOptions

    calibration = _calibration_options(args)
    options = SensitivityOptions(tuple(args.candidates), args.calls_per_bucket, args.image_layers,
                                 progress=not args.quiet, methods=args.methods)
    out = sensitivity_report(args.model, args.out, options, calibration, args.avg_bits, args.top_k,
                             args.image_samples, args.image_steps, args.overwrite, progress=not args.quiet)
    print(f"wrote {out / 'report.html'}, report.md, report.json and recipe.yaml")
    return 0


def _eval_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="measure what compression costs in picture quality",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sample MODEL and (optionally) a compressed copy with identical labels, seeds and "
                    "noise; report PSNR/SSIM of compressed vs reference images, classifier accuracy and "
                    "Frechet distance in the classifier's feature space (vs held-out real data) for both, "
                    "weight bytes and seconds.",
        epilog=dedent("""\
            examples:
              diffpress eval builtin:digits
              diffpress eval builtin:digits --compressed out/digits-w4a16-int4 --num-samples 500 --json
            """))
    parser.add_argument("model", metavar="MODEL", help="reference model (e.g. builtin:digits)")
    parser.add_argument("--compressed", metavar="DIR", help="compressed pipeline directory to compare")
    parser.add_argument("--num-samples", type=int, default=100, metavar="N", help="samples per model (default 100)")
    parser.add_argument("--steps", type=int, default=25, metavar="S", help="DDIM steps (default 25)")
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="noise seed (default 0)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, metavar="G",
                        help="classifier-free guidance scale (default 1.0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--grid", metavar="PNG", help="side-by-side image grid path "
                                                      "(default: DIR-grid.png beside --compressed DIR)")
    parser.set_defaults(handler=_run_eval)


def _calibrate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="record timestep-aware activation statistics of a pipeline's denoiser",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the pipeline on prompts or class labels with seeded generators; record each "
                    "Linear/Conv2d input's statistics per timestep bucket and a bounded reservoir of "
                    "denoiser inputs; save them as FILE (safetensors) plus reservoir shards beside it.",
        epilog=dedent("""\
            strategies (which denoiser calls the reservoir keeps):
              uniform  every step equally likely (Q-Diffusion)
              ndtc     timesteps drawn around a normal distribution (PTQ4DM)
              eda      density- and diversity-selected inputs in feature space (EDA-DM)

            examples:
              diffpress calibrate builtin:digits --out calib/digits.safetensors --num-samples 64
              diffpress calibrate ./sd15 --prompts prompts.txt --steps 20 --strategy ndtc --out calib/sd15.safetensors
            """))
    parser.add_argument("model", metavar="MODEL", help="pipeline directory or builtin:NAME")
    parser.add_argument("--out", required=True, metavar="FILE", help="calibration file to write (.safetensors)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompts", metavar="FILE", help="text file, one prompt per line")
    source.add_argument("--labels", type=int, nargs="+", metavar="L", help="class labels (class-conditional models)")
    parser.add_argument("--num-samples", type=int, metavar="N", help="samples to generate (default: one per prompt/label)")
    parser.add_argument("--steps", type=int, default=25, metavar="S", help="inference steps (default 25)")
    parser.add_argument("--buckets", type=int, default=8, metavar="B", help="timestep buckets (default 8)")
    parser.add_argument("--strategy", choices=["uniform", "ndtc", "eda"], default="uniform")
    parser.add_argument("--reservoir-size", type=int, default=8, metavar="R",
                        help="denoiser calls kept per bucket (default 8)")
    parser.add_argument("--seed", type=int, default=0, metavar="K")
    parser.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    parser.set_defaults(handler=_run_calibrate)


def _run_calibrate(args) -> int:
    from pathlib import Path

    from ..api import calibrate_to_file, read_prompts
    from ..errors import OutputExistsError

    if Path(args.out).exists() and not args.overwrite:
        raise OutputExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    prompts = read_prompts(args.prompts) if args.prompts else None
    calibration, path, seconds = calibrate_to_file(
        args.model, args.out, prompts, args.labels, args.num_samples, args.steps, args.buckets, args.strategy,
        args.seed, args.reservoir_size)
    kept = sum(len(entries) for entries in calibration.reservoir.values())
    print(f"calibrated {len(calibration.layers)} layers over {len(calibration.timesteps)} denoiser calls "
          f"in {len(calibration.reservoir) or calibration.buckets.num_buckets} timestep buckets; "
          f"reservoir keeps {kept} calls ({args.strategy})")
    print(f"saved {path} in {seconds:.1f} s")
    return 0


def _inspect_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="show which layers each recipe rule hits (no weights read, no calibration)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build MODEL's denoiser from its config alone and list, for every Linear/Conv2d, the "
                    "rule that decides it and its plan; layers kept in high precision are listed last.",
        epilog=dedent("""\
            examples:
              diffpress inspect builtin:digits --recipe my-recipe.yaml
              diffpress inspect ./flux-dev/transformer --preset w4a8-int
            """))
    parser.add_argument("model", metavar="MODEL", help="diffusers model or pipeline directory, or builtin:NAME")
    _add_plan_arguments(parser)
    parser.set_defaults(handler=_run_inspect)


def _run_inspect(args) -> int:
    from ..api import inspect_recipe, load_recipe

    rows = inspect_recipe(args.model, load_recipe(args.preset, args.recipe))
    by_rule: dict[str, list] = {}
    for row in rows:
        by_rule.setdefault(row.rule, []).append(row)
    for rule, members in by_rule.items():
        plans = sorted({row.plan for row in members})
        print(f"{rule}: {len(members)} layers -> {'; '.join(plans)}")
        for row in members:
            print(f"    {row.fqn} ({row.kind})")
    kept = [row for row in rows if row.plan == "high precision"]
    print(f"{len(rows) - len(kept)} of {len(rows)} layers quantized; {len(kept)} kept in high precision")
    return 0


def _grid_arg(compressed, grid):
    from ..api import grid_path_for

    if compressed is None:
        return None
    return grid or grid_path_for(compressed)


def _run_eval(args) -> int:
    from ..api import evaluate

    result = evaluate(args.model, args.compressed, num_samples=args.num_samples, steps=args.steps,
                      seed=args.seed, guidance_scale=args.guidance_scale, progress=False)
    grid = _grid_arg(args.compressed, args.grid)
    if args.json:
        import json

        if grid:
            _write_grid(result, grid)
        print(json.dumps(result.to_dict()))
    else:
        _print_eval(result, grid)
    return 0


def _write_grid(result, grid):
    from ..api import save_grid

    return save_grid(result, grid)


def _print_eval(result, grid) -> None:
    reference, compressed = result.reference, result.compressed
    cell = lambda side, key, fmt: "-" if side is None or getattr(side, key) is None else fmt(getattr(side, key))
    rows = [("PSNR vs reference", "psnr_db", lambda v: f"{v:.2f} dB"), ("SSIM vs reference", "ssim", lambda v: f"{v:.4f}"),
            ("classifier accuracy", "classifier_accuracy", lambda v: f"{100 * v:.1f}%"),
            ("Frechet distance", "frechet_distance", lambda v: f"{v:.3f}"),
            ("weight bytes", "size_bytes", _format_bytes), ("sampling seconds", "seconds", lambda v: f"{v:.1f}")]
    print(f"{'':<22}{'reference':>14}{'compressed':>14}")
    for label, key, fmt in rows:
        print(f"{label:<22}{cell(reference, key, fmt):>14}{cell(compressed, key, fmt):>14}")
    if grid and compressed is not None:
        print(f"grid (top: reference, bottom: compressed): {_write_grid(result, grid)}")


def _run_models(args) -> int:
    from ..api import list_builtins

    for name, summary in list_builtins():
        print(f"{name:<18} {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffpress", description="Post-training compression for diffusion models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run 'diffpress COMMAND --help' for a command's options and examples")
    parser.add_argument("--version", action="version", version=f"diffpress {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _compress_parser(subparsers)
    _eval_parser(subparsers)
    _calibrate_parser(subparsers)
    _inspect_parser(subparsers)
    _sensitivity_parser(subparsers)
    models = subparsers.add_parser("models", help="list the built-in models")
    models.set_defaults(handler=_run_models)
    return parser


def _quiet_libraries() -> None:
    """diffusers' info logs and component-loading bars are noise in this CLI's output."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
    args = build_parser().parse_args(argv)
    _quiet_libraries()
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
