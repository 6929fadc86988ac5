"""`diffpress eval`: what compression costs in picture quality, at identical seeds and noise."""
from __future__ import annotations

import json

from ..api import evaluate
from . import options
from .output import grid_beside, print_eval


def register(subparsers) -> None:
    parser = options.add_command(
        subparsers, "eval", "measure what compression costs in picture quality",
        "Sample MODEL and (optionally) a compressed copy with identical labels, seeds and noise; report "
        "PSNR/SSIM of compressed vs reference images, classifier accuracy and Frechet distance in the "
        "classifier's feature space (vs held-out real data) for both, weight bytes and seconds.",
        ("diffpress eval builtin:digits",
         "diffpress eval builtin:digits --compressed out/digits-w4a16-int4 --num-samples 500 --json"))
    options.add_model(parser, "reference model (e.g. builtin:digits)")
    parser.add_argument("--compressed", metavar="DIR", help="compressed pipeline directory to compare")
    parser.add_argument("--num-samples", type=options.integer(1), default=100, metavar="N",
                        help="samples per model (default 100)")
    parser.add_argument("--steps", type=options.integer(1), default=None, metavar="S",
                        help="sampler steps (default: the model's own, e.g. 25 for builtin:digits)")
    parser.add_argument("--seed", type=options.integer(0), default=0, metavar="K", help="noise seed (default 0)")
    parser.add_argument("--guidance-scale", type=options.number(0, inclusive=True), default=None, metavar="G",
                        help="classifier-free guidance scale (default: the model's own; 1: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--grid", type=options.png_path, metavar="PNG", help="side-by-side image grid path "
                                                      "(default: DIR-grid.png beside --compressed DIR)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    result = evaluate(args.model, args.compressed, num_samples=args.num_samples, steps=args.steps, seed=args.seed,
                      guidance_scale=args.guidance_scale)
    grid = (args.grid or grid_beside(args.compressed)) if args.compressed else None
    if args.json:
        if grid is not None:
            result.save_grid(grid)
        print(json.dumps(result.to_dict()))
    else:
        print_eval(result, grid)
    return 0
