"""Option groups shared by the commands, their value checks, and what they build for the API.

An option has one name in every command that has it, its dest is the API parameter it feeds (so
an API error about `labels` is reported against --calib-labels), its default comes from the
library's dataclass, and its choices from the library's enums.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields
from pathlib import Path

from ..api import (MIXED, PRESETS, Budget, CalibrationOptions, MixedPrecision, SensitivityMethods,
                   SensitivityOptions, StrategyName)
from ..errors import InputError


def default_of(cls, name: str):
    """The default of dataclass field `name` (the CLI never repeats a library default)."""
    field = next(f for f in fields(cls) if f.name == name)
    return field.default_factory() if field.default is MISSING else field.default


def enum_values(enum_type) -> list[str]:
    return [member.value for member in enum_type]


# ------------------------------------------------------------------------------ value checks


def integer(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def number(minimum: float, inclusive: bool = False):
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value
    parse.__name__ = f"number {bound}"
    return parse


def layer_count(text: str) -> int | None:
    """--image-layers: a count >= 0 or 'all' (None)."""
    if text == "all":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a layer count >= 0 or 'all', got {text!r}")
    return int(text)


def existing_file(text: str) -> str:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}" if not path.exists() else f"not a file: {text!r}")
    return text


def png_path(text: str) -> str:
    """An image path to write: ends in .png and is not a directory."""
    if not text.lower().endswith(".png") or Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected a .png file path to write, got {text!r}")
    return text


def prompts_file(text: str) -> tuple[str, ...]:
    """A text file with one prompt per line (blank lines ignored)."""
    existing_file(text)
    try:
        prompts = tuple(line.strip() for line in Path(text).read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a readable text file ({error})") from None
    if not prompts:
        raise argparse.ArgumentTypeError(f"the prompts file {text!r} is empty (one prompt per line)")
    return prompts


def candidate_name(text: str) -> str:
    """A candidate format: validated by the library, reported as an argparse error."""
    from ..api import candidate

    try:
        candidate(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


# ------------------------------------------------------------------------------ groups


def add_command(subparsers, name: str, summary: str, description: str, examples: tuple[str, ...] = (),
                notes: str = "") -> argparse.ArgumentParser:
    """A command's parser: `summary` in the command list, `description` and `notes` and the examples
    under --help, laid out as written."""
    epilog = notes + ("\n\nexamples:\n" if notes else "examples:\n") + "\n".join(f"  {e}" for e in examples)
    return subparsers.add_parser(name, help=summary, description=description, epilog=epilog if examples else notes,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model(parser, help_text: str = "diffusers model or pipeline directory, or builtin:NAME") -> None:
    parser.add_argument("model", metavar="MODEL", help=help_text)


def add_output(parser, metavar: str, help_text: str, overwrite_help: str) -> None:
    parser.add_argument("--out", required=True, metavar=metavar, help=help_text)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)


def add_resume(parser) -> None:
    group = parser.add_argument_group("interrupted runs")
    group.add_argument("--resume", action="store_true",
                       help="continue a killed or interrupted run of the same command and arguments from its "
                            "checkpoints (kept in the hidden .DIR.diffpress-work beside --out); the result is "
                            "identical to an uninterrupted run")
    group.add_argument("--checkpoint-every", type=number(0, inclusive=True), default=60.0, metavar="S",
                       help="write the calibration / mask-learning state at most every S seconds, and never more "
                            "often than keeps checkpointing under 5%% of the time (default 60; 0: after every "
                            "step); finished layers are kept as they are done")


def add_device(parser, compute_dtype: bool = True) -> None:
    from ..api import COMPUTE_DTYPES

    group = parser.add_argument_group("where it computes")
    group.add_argument("--device", default=None, metavar="DEV",
                       help="cpu, cuda or cuda:N (default: the first CUDA device if there is one, else cpu); the "
                            "model stays in host memory and moves to the device one block at a time")
    if compute_dtype:
        group.add_argument("--compute-dtype", default=None, choices=["stored", *COMPUTE_DTYPES], metavar="DTYPE",
                           help="dtype of the denoiser's calls on the device: stored (default: the checkpoint's "
                                "own), " + ", ".join(COMPUTE_DTYPES) + "; the saved model keeps its stored dtype")


def add_quiet(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars, summary only")


def add_plan(parser, mixed: bool, required: bool = True) -> None:
    plan = parser.add_mutually_exclusive_group(required=required)
    choices = list(PRESETS) + ([MIXED] if mixed else [])
    plan.add_argument("--preset", choices=choices, metavar="NAME", help="a preset (see below)")
    plan.add_argument("--recipe", type=existing_file, metavar="FILE",
                      help="a recipe file (YAML): prune stages, then quantization rules or a mixed budget (README)")


def add_calibration(parser, title: str) -> None:
    group = parser.add_argument_group(title)
    defaults = lambda name: default_of(CalibrationOptions, name)
    group.add_argument("--calibration", type=existing_file, metavar="FILE",
                       help="a saved calibration set (diffpress calibrate) instead of calibrating now")
    items = group.add_mutually_exclusive_group()
    items.add_argument("--calib-prompts", dest="prompts", type=prompts_file, metavar="FILE",
                       help="prompts to calibrate on, one per line (text-to-image models)")
    items.add_argument("--calib-labels", dest="labels", type=integer(0), nargs="+", metavar="L",
                       help="class labels to calibrate on (class-conditional models; built-ins default to theirs)")
    group.add_argument("--calib-samples", dest="num_samples", type=integer(1), default=defaults("num_samples"),
                       metavar="N", help=f"samples to generate (default {defaults('num_samples')})")
    group.add_argument("--calib-steps", dest="steps", type=integer(1), default=defaults("steps"), metavar="S",
                       help=f"sampler steps (default {defaults('steps')})")
    group.add_argument("--calib-seed", dest="seed", type=integer(0), default=defaults("seed"), metavar="K",
                       help=f"batch j uses seed K + j (default {defaults('seed')})")
    group.add_argument("--calib-strategy", dest="strategy", choices=enum_values(StrategyName),
                       default=defaults("strategy").value,
                       help="which denoiser calls the reservoir keeps: uniform (Q-Diffusion), ndtc (PTQ4DM), eda "
                            f"(EDA-DM) (default {defaults('strategy').value})")
    group.add_argument("--buckets", type=integer(1), default=defaults("buckets"), metavar="B",
                       help=f"timestep buckets (default {defaults('buckets')})")
    group.add_argument("--reservoir-size", type=integer(0), default=defaults("reservoir_size"), metavar="R",
                       help=f"denoiser calls kept per bucket for replay (default {defaults('reservoir_size')})")


def calibration_options(args) -> CalibrationOptions:
    return CalibrationOptions(prompts=args.prompts, labels=tuple(args.labels) if args.labels else None,
                              num_samples=args.num_samples, steps=args.steps, buckets=args.buckets,
                              reservoir_size=args.reservoir_size, seed=args.seed, strategy=args.strategy)


def calibration_source(args):
    """What the API's `calibration` parameter gets: the saved file, or options to calibrate with now."""
    if args.calibration is None:
        return calibration_options(args)
    if args.prompts is not None or args.labels is not None:
        raise InputError("--calibration FILE already holds the calibration data; drop --calib-prompts / "
                         "--calib-labels", "calibration")
    return args.calibration


def add_measurement(group, defaults_from) -> None:
    """--candidates, --methods, --calls-per-bucket: what sensitivity measures (defaults of `defaults_from`)."""
    defaults = lambda name: default_of(defaults_from, name)
    group.add_argument("--candidates", nargs="+", type=candidate_name, default=list(defaults("candidates")),
                       metavar="FMT", help=f"formats to measure and choose from (default: {' '.join(defaults('candidates'))}); "
                                           "bf16 keeps a layer unquantized")
    group.add_argument("--methods", choices=enum_values(SensitivityMethods), default=defaults("methods").value,
                       help="full: each candidate's full preset (learned rounding etc.; the measured modules are the "
                            "ones saved); rtn: its round-to-nearest baseline, faster and worse "
                            f"(default {defaults('methods').value})")
    group.add_argument("--calls-per-bucket", type=integer(1), default=defaults("calls_per_bucket"), metavar="C",
                       help=f"calibration calls replayed per timestep bucket (default {defaults('calls_per_bucket')})")


def add_image_metric(group) -> None:
    group.add_argument("--image-layers", type=layer_count, default=default_of(MixedPrecision, "image_layers"),
                       metavar="K|all", help="layers costed by the final-image metric (default all; 0: output "
                                             "SQNR only, no sampler needed: bare denoisers, large models)")
    group.add_argument("--image-samples", type=integer(1), default=default_of(MixedPrecision, "image_samples"),
                       metavar="N", help=f"image-metric samples (default {default_of(MixedPrecision, 'image_samples')})")
    group.add_argument("--image-steps", type=integer(1), default=None, metavar="S",
                       help="image-metric sampler steps (default: --calib-steps)")


def add_budget(parser) -> None:
    group = parser.add_argument_group("mixed precision (--preset mixed: sensitivity, then a 0/1 integer program)")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--avg-bits", type=number(0), metavar="B",
                        help="budget: parameter-weighted average weight bits of the allocated layers (e.g. 5)")
    budget.add_argument("--max-bytes", type=integer(1), metavar="N",
                        help="budget: stored bytes (codes + scales) of the allocated layers")
    group.add_argument("--max-latency", type=number(0), metavar="T",
                       help="optional latency budget in the cost table's units (default table: stored bytes)")
    group.add_argument("--avg-act-bits", type=number(0), metavar="A",
                       help="optional activation budget: parameter-weighted average activation bits of the allocated "
                            "layers (weight-only and bf16 count 16); lets 4-bit-activation candidates such as "
                            "w4a4-int be chosen (e.g. --candidates w4a4-int w4a8-int w8a8-int8-learned --avg-act-bits 6)")
    group.add_argument("--latency-table", type=existing_file, metavar="JSON",
                       help="per-format cost per weight element ({\"w4a8-int\": 0.6, ...}), or a kernel benchmark "
                            "result (bench/results/kernels-<gpu>.json: ms per weight element over its shapes)")
    add_measurement(group, MixedPrecision)
    add_image_metric(group)
    group.add_argument("--validation-samples", type=integer(0), default=default_of(MixedPrecision, "validation_samples"),
                       metavar="N", help="held-out samples (other seeds) on which the allocations of the image metric, "
                                         "the output metric and their geometric mean are measured whole, the best "
                                         f"kept (default {default_of(MixedPrecision, 'validation_samples')}; 0: take "
                                         "the image-metric allocation unmeasured)")


def plan_of(args):
    """The plan the API's `compress` gets: a preset name, a recipe file, or a MixedPrecision."""
    budget_given = args.avg_bits is not None or args.max_bytes is not None
    if args.preset != MIXED:
        if budget_given or args.avg_act_bits is not None:
            raise InputError("--avg-bits / --max-bytes / --avg-act-bits choose a budget for --preset mixed; add "
                             "--preset mixed", "avg_bits")
        return args.preset or args.recipe
    if not budget_given:
        raise InputError("--preset mixed needs a budget: --avg-bits B or --max-bytes N", "avg_bits")
    return MixedPrecision(Budget(args.avg_bits, args.max_bytes, args.max_latency, args.avg_act_bits),
                          tuple(args.candidates),
                          SensitivityMethods(args.methods), args.calls_per_bucket, args.image_layers,
                          args.image_samples, args.image_steps, args.latency_table, args.validation_samples)


def sensitivity_options(args, progress: bool) -> SensitivityOptions:
    return SensitivityOptions(tuple(args.candidates), args.calls_per_bucket, args.image_layers, progress=progress,
                              methods=SensitivityMethods(args.methods))
