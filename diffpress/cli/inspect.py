"""`diffpress inspect`: which layers each recipe rule hits, or the prunable units, from the config alone."""
from __future__ import annotations

from ..api import inspect, prunable_units, removable_blocks
from ..errors import InputError
from . import options


def register(subparsers) -> None:
    parser = options.add_command(
        subparsers, "inspect", "show which layers each recipe rule hits (no weights read, no calibration)",
        "Build MODEL's denoiser from its config alone and list, for every Linear/Conv2d, the rule that decides "
        "it and its plan; layers kept in high precision are counted last. With --prunable, list the units "
        "'diffpress prune' can remove (attention heads, feed-forward neurons, ResNet channel groups). With "
        "--blocks, list the whole blocks depth pruning can remove (this loads the weights and runs one call); "
        "with --losses, also each block's single-removal loss on replayed calibration calls.",
        ("diffpress inspect builtin:digits --recipe my-recipe.yaml",
         "diffpress inspect ./flux-dev/transformer --preset w4a8-int",
         "diffpress inspect builtin:digits-flux --prunable",
         "diffpress inspect builtin:digits-flux --blocks --losses"))
    options.add_model(parser)
    options.add_plan(parser, mixed=False, required=False)
    parser.add_argument("--prunable", action="store_true",
                        help="list the prunable units and their parameters instead of a plan's layers")
    parser.add_argument("--blocks", action="store_true",
                        help="list the removable blocks (reads the weights and runs one denoiser call)")
    parser.add_argument("--losses", action="store_true",
                        help="with --blocks: also each block's single-removal loss (calibrates with the options "
                             "below, or reads --calibration FILE)")
    options.add_quiet(parser)
    options.add_calibration(parser, "calibration for --losses")
    parser.set_defaults(handler=run)


def run(args) -> int:
    if args.blocks:
        return run_blocks(args)
    if args.prunable:
        return run_prunable(args)
    if args.preset is None and args.recipe is None:
        raise InputError("give --preset NAME or --recipe FILE (the plan to inspect), or --prunable", "preset")
    rows = inspect(args.model, args.preset or args.recipe)
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


def run_prunable(args) -> int:
    groups = prunable_units(args.model)
    for group in groups:
        print(f"{group.name:<50} {group.count:>5} {group.kind.value}s of {group.width:<4} "
              f"{group.params_per_unit:>9,} params each")
    prunable = sum(g.params for g in groups)
    print(f"{len(groups)} prunable groups, {prunable:,} parameters in prunable units")
    return 0


def run_blocks(args) -> int:
    source = options.calibration_source(args) if args.losses else None
    blocks, losses = removable_blocks(args.model, source, progress=not args.quiet)
    for index, block in enumerate(blocks):
        loss = "" if losses is None else f"  single-removal loss {losses[index]:.4g}"
        passes = ", ".join(name or "None" for name in block.returns)
        print(f"{block.name:<40} {block.kind:<28} {block.params:>11,} params  passes {passes}{loss}")
    print(f"{len(blocks)} removable blocks, {sum(b.params for b in blocks):,} parameters")
    return 0
