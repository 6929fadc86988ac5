"""`diffpress compress`: compress a model's denoiser with a preset, a recipe or a mixed-precision budget."""
from __future__ import annotations

from ..api import PRESETS, compress, evaluate
from . import options
from .output import grid_beside, print_compression, print_eval


def preset_lines() -> str:
    named = "\n".join(f"  {name:<18} {p.description}" for name, p in PRESETS.items() if p.baseline_of is None)
    return (named + "\n  NAME-rtn           round-to-nearest baseline of each preset (absmax scales, no method)"
            "\n  mixed              per-layer formats chosen by integer program from measured sensitivity"
            "\n                     (needs --avg-bits or --max-bytes)")


def register(subparsers) -> None:
    parser = options.add_command(
        subparsers, "compress", "compress a diffusers model or pipeline and save it",
        "Quantize the denoiser (UNet or transformer) of MODEL with a preset, a recipe or a mixed-precision "
        "budget, and save a diffusers-format directory that diffpress.load() reads back. Calibrates first when "
        "the plan's methods need data.",
        ("diffpress compress builtin:digits --preset w4a16-int4 --out out/digits-int4 --eval",
         "diffpress compress ./my-sd15-pipeline --preset w8a16-int8 --out ./sd15-int8",
         "diffpress compress ./transformer --preset w4a16-int4 --out ./transformer-int4 --overwrite",
         "diffpress compress builtin:digits --preset w4a8-int --calib-labels 3 7 --calib-samples 16 --out out/w4a8",
         "diffpress compress builtin:digits --preset mixed --avg-bits 5 --out out/digits-mixed5",
         "diffpress compress ./unet --preset mixed --avg-bits 5 --calibration calib.safetensors --image-layers 0 "
         "--out out/m5",
         "diffpress compress ./flux-transformer --preset w8a16-int8 --stream --out ./flux-int8"),
        "presets:\n" + preset_lines())
    options.add_model(parser)
    options.add_plan(parser, mixed=True)
    options.add_output(parser, "DIR", "output directory (written atomically)", "replace DIR if it exists")
    options.add_quiet(parser)
    options.add_device(parser)
    options.add_resume(parser)
    parser.add_argument("--eval", action="store_true",
                        help="after saving, run 'diffpress eval' on the result with default settings "
                             "(models that ship an evaluation classifier, such as builtin:digits)")
    parser.add_argument("--stream", action="store_true",
                        help="calibration-free presets and recipes (weight-only, round-to-nearest W8A8): quantize "
                             "tensor by tensor from the checkpoint's files without loading the model; memory stays "
                             "at about one output shard, whatever the model's size")
    parser.add_argument("--shard-size", type=options.integer(1), default=None, metavar="MB",
                        help="with --stream: largest output shard in MiB (default 2048)")
    options.add_calibration(parser, "calibration (used only when the plan's methods need data)")
    add_rounding(parser)
    add_capture(parser)
    options.add_budget(parser)
    parser.set_defaults(handler=run)


def add_rounding(parser) -> None:
    from ..api import RoundingOptions

    default = RoundingOptions()
    group = parser.add_argument_group("learned rounding and block reconstruction (rounding: learned | block)")
    group.add_argument("--rounding-iterations", type=options.integer(1), default=default.iterations, metavar="N",
                       help=f"Adam steps per layer (per block for block reconstruction) (default {default.iterations})")
    group.add_argument("--rounding-rows", type=options.integer(1), default=default.rows, metavar="R",
                       help=f"captured calibration input rows per layer (default {default.rows}; also GPTQ's)")
    group.add_argument("--rounding-batch", type=options.integer(1), default=None, metavar="B",
                       help="rows per step (default: all of them)")
    group.add_argument("--early-stop", action="store_true",
                       help="stop a layer's fit once the hard-rounded loss, checked every N/20 steps, improves by "
                            f"less than {default.tolerance:g} relative {default.patience} checks in a row; keep the "
                            "best codes seen")


def add_capture(parser) -> None:
    from ..api import CaptureOptions

    default = CaptureOptions()
    group = parser.add_argument_group("layer inputs (smoothing search, learned rounding, GPTQ)")
    group.add_argument("--inputs-from", choices=["float", "quantized"], default=default.inputs_from.value,
                       help="capture each layer's calibration inputs from the float model (default) or from the "
                            "model with the earlier block groups already quantized (sequential)")
    group.add_argument("--capture-memory", type=options.integer(1), default=default.max_bytes >> 20, metavar="MB",
                       help="captured inputs held at once; blocks are captured in groups within it (default "
                            f"{default.max_bytes >> 20})")


def capture_of(args):
    from ..api import CaptureOptions

    return CaptureOptions(args.inputs_from, args.capture_memory << 20)


def rounding_of(args):
    from ..api import RoundingOptions

    return RoundingOptions(args.rounding_iterations, args.rounding_rows, args.rounding_batch, args.early_stop)


def run(args) -> int:
    result = compress(args.model, options.plan_of(args), args.out, calibration=options.calibration_source(args),
                      overwrite=args.overwrite, progress=not args.quiet, resume=args.resume,
                      checkpoint_every=args.checkpoint_every, stream=args.stream,
                      shard_bytes=args.shard_size << 20 if args.shard_size else None, rounding=rounding_of(args),
                      device=args.device, compute_dtype=args.compute_dtype, capture=capture_of(args))
    print_compression(result, f"preset {args.preset}" if args.preset else f"recipe {args.recipe}")
    if args.eval:
        print_eval(evaluate(args.model, result.out, progress=not args.quiet), grid_beside(result.out))
    return 0
