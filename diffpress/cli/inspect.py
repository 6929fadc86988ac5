"""`diffpress inspect`: which layers each recipe rule hits, from the config alone."""
from __future__ import annotations

from ..api import inspect
from . import options


def register(subparsers) -> None:
    parser = options.add_command(
        subparsers, "inspect", "show which layers each recipe rule hits (no weights read, no calibration)",
        "Build MODEL's denoiser from its config alone and list, for every Linear/Conv2d, the rule that decides "
        "it and its plan; layers kept in high precision are counted last.",
        ("diffpress inspect builtin:digits --recipe my-recipe.yaml",
         "diffpress inspect ./flux-dev/transformer --preset w4a8-int"))
    options.add_model(parser)
    options.add_plan(parser, mixed=False)
    parser.set_defaults(handler=run)


def run(args) -> int:
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
