"""`diffpress sensitivity`: the per-layer, per-timestep sensitivity report (HTML, markdown, JSON, recipe)."""
from __future__ import annotations

from ..api import SensitivityOptions, sensitivity
from . import options


def register(subparsers) -> None:
    parser = options.add_command(
        subparsers, "sensitivity", "per-layer, per-timestep quantization sensitivity report (HTML, markdown, JSON)",
        "Calibrate MODEL (or load --calibration), then quantize each layer alone with each candidate format and "
        "measure the damage two ways (MixDQ): the denoiser-output SQNR per timestep bucket on replayed calibration "
        "calls, and the PSNR/SSIM of final samples against the float model's (the metric the allocation uses; "
        "every layer by default). Writes DIR/report.html (self-contained), report.md, report.json, the PNG "
        "figures, and recipe.yaml: the integer program's allocation at --avg-bits, usable with 'diffpress "
        "compress --recipe'. A bare denoiser directory works with --calibration FILE and --image-layers 0 (output "
        "metric only).",
        ("diffpress sensitivity builtin:digits --out report/digits",
         "diffpress sensitivity builtin:digits --out report/digits --candidates w4a8-int w8a8-int8 --avg-bits 5",
         "diffpress sensitivity ./sd15 --calib-prompts prompts.txt --calib-samples 8 --out report/sd15 "
         "--image-layers 32",
         "diffpress sensitivity ./unet --calibration calib.safetensors --image-layers 0 --out report/unet"),
        "cost: layers x candidates x buckets x --calls-per-bucket replayed denoiser calls, plus\n"
        "--image-layers x candidates sampler runs of --image-samples x --image-steps (builtin:digits\n"
        "with the defaults: 72 x 6 x 8 x 1 = 3,456 calls of batch 8, plus 72 x 6 = 432 runs of 16\n"
        "samples x 25 steps). For large models, bound the image metric with --image-layers K: it then\n"
        "goes to the K layers where the output metric is least trustworthy.")
    options.add_model(parser)
    options.add_output(parser, "DIR", "report directory (written atomically)", "replace DIR if it is not empty")
    options.add_quiet(parser)
    options.add_device(parser)
    options.add_resume(parser)
    measurement = parser.add_argument_group("measurement")
    options.add_measurement(measurement, SensitivityOptions)
    options.add_image_metric(measurement)
    report = parser.add_argument_group("report")
    report.add_argument("--avg-bits", type=options.number(0), default=5.0, metavar="B",
                        help="budget of the allocation shown in the report and saved as recipe.yaml (default 5)")
    report.add_argument("--top-k", type=options.integer(0), default=5, metavar="K",
                        help="layers kept in high precision in the recipe snippet (default 5)")
    options.add_calibration(parser, "calibration")
    parser.set_defaults(handler=run)


def run(args) -> int:
    sensitivity(args.model, options.calibration_source(args), options.sensitivity_options(args, not args.quiet),
                image_samples=args.image_samples, image_steps=args.image_steps, out=args.out,
                overwrite=args.overwrite, avg_bits=args.avg_bits, top_k=args.top_k, progress=not args.quiet,
                resume=args.resume, checkpoint_every=args.checkpoint_every, device=args.device,
                compute_dtype=args.compute_dtype)
    print(f"wrote {args.out}/report.html, report.md, report.json and recipe.yaml")
    return 0
