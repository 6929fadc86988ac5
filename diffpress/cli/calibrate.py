"""`diffpress calibrate`: record timestep-aware statistics and a reservoir of denoiser calls to a file."""
from __future__ import annotations

import time

from ..api import calibrate
from . import options


def register(subparsers) -> None:
    parser = options.add_command(
        subparsers, "calibrate", "record timestep-aware activation statistics of a pipeline's denoiser",
        "Run the pipeline on prompts or class labels with seeded generators; record each Linear/Conv2d input's "
        "statistics per timestep bucket and a bounded reservoir of denoiser inputs; save them as FILE "
        "(safetensors) plus reservoir shards beside it.",
        ("diffpress calibrate builtin:digits --out calib/digits.safetensors --calib-samples 64",
         "diffpress calibrate ./sd15 --calib-prompts prompts.txt --calib-steps 20 --calib-strategy ndtc "
         "--out calib/sd15.safetensors"),
        "strategies (which denoiser calls the reservoir keeps):\n"
        "  uniform  every step equally likely (Q-Diffusion)\n"
        "  ndtc     timesteps drawn around a normal distribution (PTQ4DM)\n"
        "  eda      density- and diversity-selected inputs in feature space (EDA-DM)")
    options.add_model(parser, "pipeline directory or builtin:NAME")
    options.add_output(parser, "FILE", "calibration file to write (.safetensors)", "replace FILE if it exists")
    options.add_quiet(parser)
    options.add_device(parser)
    options.add_calibration(parser, "calibration")
    parser.set_defaults(handler=run)


def run(args) -> int:
    if args.calibration is not None:
        from ..errors import InputError

        raise InputError(f"--calibration {args.calibration}: that option names a saved set to use, and calibrate "
                         "writes one: give --out only", "calibration")
    started = time.perf_counter()
    calibration = calibrate(args.model, options=options.calibration_options(args), out=args.out,
                            overwrite=args.overwrite, progress=not args.quiet, device=args.device,
                            compute_dtype=args.compute_dtype)
    kept = sum(len(entries) for entries in calibration.reservoir.values())
    print(f"calibrated {len(calibration.layers)} layers over {len(calibration.timesteps)} denoiser calls "
          f"in {len(calibration.reservoir) or calibration.buckets.num_buckets} timestep buckets; "
          f"reservoir keeps {kept} calls ({args.strategy})")
    print(f"saved {args.out} in {time.perf_counter() - started:.1f} s")
    return 0
