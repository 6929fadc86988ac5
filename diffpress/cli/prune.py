"""`diffpress prune`: remove attention heads, feed-forward neurons and ResNet channel groups, or whole blocks."""
from __future__ import annotations

from ..api import (BudgetControl, DepthInit, DepthPattern, LearnObjective, LearnOptions, Method, Scope, Unit, WarmStart,
                   evaluate, prune)
from . import options
from .output import grid_beside, print_eval, print_pruning


def register(subparsers) -> None:
    parser = options.add_command(
        subparsers, "prune", "remove heads, FFN neurons, ResNet channels or whole blocks; save a smaller model",
        "Structured pruning of MODEL's denoiser. Unit width (default): attention heads, feed-forward neurons and "
        "ResNet channel groups are scored (a gate mask learned on the float model's sampling trajectory, or a "
        "one-shot baseline), the best are kept under the budget, and the rest are removed physically. Unit "
        "blocks (--remove-blocks, --method oneshot): whole transformer blocks, ResNets and attention blocks are "
        "removed, chosen by their single-removal loss on replayed calibration calls (a 0/1 program), and "
        "become pass-throughs. The result is a diffusers-format directory that diffpress.load() and "
        "from_pretrained() read, and that 'diffpress compress' can quantize.",
        ("diffpress prune builtin:digits --target-params 0.8 --out out/digits-p80 --eval",
         "diffpress prune builtin:digits-flux --target-macs 0.7 --method taylor --out out/flux-m70",
         "diffpress prune builtin:digits-flux --remove-blocks 3 --out out/flux-r3",
         "diffpress prune ./my-pipeline --target-params 0.8 --calib-prompts prompts.txt --steps 20 --out ./p80"))
    options.add_model(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-params", dest="target_params", type=options.number(0), metavar="F",
                        help="fraction of the denoiser's parameters to keep, in (0, 1]")
    target.add_argument("--target-macs", dest="target_macs", type=options.number(0), metavar="F",
                        help="fraction of the denoiser's multiply-accumulates per call to keep, in (0, 1]")
    target.add_argument("--target-latency", dest="target_latency", type=options.number(0), metavar="F",
                        help="fraction of the denoiser's measured seconds per call to keep (blocks)")
    target.add_argument("--remove-blocks", dest="remove_blocks", type=options.integer(1), metavar="N",
                        help="remove N whole blocks (implies --unit blocks)")
    parser.add_argument("--unit", choices=options.enum_values(Unit), default=None,
                        help="width: heads, FFN neurons, ResNet channel groups; blocks: whole blocks (default "
                             "width, or blocks with --remove-blocks, --target-latency or --method oneshot)")
    parser.add_argument("--method", choices=options.enum_values(Method), default=None,
                        help="how units are ranked. width: learned (default; mask fitted end to end on the sampling "
                             "trajectory), taylor, activation (both need calibration data), magnitude, random. "
                             "blocks: oneshot (default; single-removal loss, needs calibration data), learned "
                             "(a removal set fitted end to end, with --remove-blocks), random")
    parser.add_argument("--scope", choices=options.enum_values(Scope), default=Scope.GLOBAL.value,
                        help="global: rank units model-wide; per_layer: the same fraction of every group "
                             "(default global)")
    options.add_output(parser, "DIR", "output directory (written atomically)", "replace DIR if it exists")
    options.add_quiet(parser)
    options.add_device(parser, compute_dtype=False)
    options.add_resume(parser)
    parser.add_argument("--eval", action="store_true", help="after saving, run 'diffpress eval' on the result")
    learn = parser.add_argument_group("mask learning (method learned)")
    defaults = lambda name: options.default_of(LearnOptions, name)
    learn.add_argument("--steps", dest="prune_steps", type=options.integer(1), metavar="S",
                       help="sampler steps of the trajectory the mask is fitted on (default: the model's own, "
                            "else --calib-steps)")
    learn.add_argument("--guidance-scale", dest="guidance_scale", type=options.number(0, inclusive=True),
                       metavar="G", help="guidance scale of that trajectory (default: the model's own)")
    learn.add_argument("--iterations", type=options.integer(1), default=defaults("iterations"), metavar="N",
                       help=f"optimizer steps (default {defaults('iterations')})")
    learn.add_argument("--learn-samples", dest="samples", type=options.integer(1), default=defaults("samples"),
                       metavar="N", help=f"distinct (prompt or label, seed) targets (default {defaults('samples')})")
    learn.add_argument("--batch-size", dest="batch_size", type=options.integer(1), default=defaults("batch_size"),
                       metavar="B", help=f"targets per optimizer step (default {defaults('batch_size')})")
    learn.add_argument("--learning-rate", dest="learning_rate", type=options.number(0),
                       default=defaults("learning_rate"), metavar="LR",
                       help=f"Adam learning rate of the gate logits (default {defaults('learning_rate')})")
    learn.add_argument("--objective", choices=options.enum_values(LearnObjective), default=None,
                       help="what the mask is fitted on: trajectory (final latent of whole sampling runs; the "
                            "default where the model has a pipeline) or replay (denoiser output on replayed "
                            "calibration calls; fast, no pipeline needed)")
    learn.add_argument("--step-loss", dest="step_loss", type=options.number(0, inclusive=True),
                       default=defaults("step_loss"), metavar="W",
                       help="weight of a per-step output loss on the float trajectory's calls, beside the final "
                            f"latent (trajectory objective; default {defaults('step_loss')})")
    learn.add_argument("--budget-control", dest="control", choices=options.enum_values(BudgetControl),
                       default=defaults("control").value,
                       help="penalty: a penalty above the target; projected: the expected kept fraction is held at "
                            "a budget falling from 1 to the target over --warmup; topk: every mask drawn hard at "
                            "that budget by the final cut's selection (--scope, each group's floor) "
                            f"(default {defaults('control').value})")
    learn.add_argument("--warmup", type=options.number(0, inclusive=True), default=None, metavar="F",
                       help="fraction of the iterations over which the budget comes in (default 0.1 penalty, "
                            "0.5 projected and topk)")
    learn.add_argument("--warm-start", dest="warm_start", choices=options.enum_values(WarmStart),
                       default=defaults("warm_start").value,
                       help="width: each unit's first-order (taylor) importance on the float trajectories' calls "
                            "spreads the starting logits and its cut is measured first (taylor); or learning starts "
                            "from equal logits and the cuts of the taylor, activation and magnitude rankings are "
                            f"the first measured on held-out data (candidate); none: neither (default "
                            f"{defaults('warm_start').value})")
    learn.add_argument("--mask-checks", dest="mask_checks", type=options.integer(0), default=defaults("mask_checks"),
                       metavar="N", help="binary cuts measured on held-out trajectories during learning, the best "
                                         f"kept (0: the last; default {defaults('mask_checks')})")
    learn.add_argument("--depth-pattern", dest="depth_pattern", choices=options.enum_values(DepthPattern),
                       default=defaults("depth_pattern").value,
                       help="blocks: free (any N blocks) or nm (TinyFusion's local N:M groups per block class) "
                            f"(default {defaults('depth_pattern').value})")
    learn.add_argument("--depth-init", dest="depth_init", choices=options.enum_values(DepthInit),
                       default=defaults("depth_init").value,
                       help="blocks, free pattern: start the logits from single-removal losses (oneshot) or equal "
                            f"(uniform) (default {defaults('depth_init').value})")
    learn.add_argument("--lora-rank", dest="lora_rank", type=options.integer(0), default=defaults("lora_rank"),
                       metavar="R", help="blocks: LoRA adapters of rank R co-trained with the depth mask, so the "
                                         "search favours blocks whose removal recovers well (default 0: none)")
    recover = parser.add_argument_group("recovery (distillation from the float model after pruning)")
    recover.add_argument("--recover-steps", dest="recover_steps", type=options.integer(0), default=0, metavar="K",
                         help="Adam steps on replayed calibration calls, output plus normalized block-feature loss "
                              "(default 0: none); the loss curve is saved as recovery.json")
    recover.add_argument("--recover-lr", dest="recover_learning_rate", type=options.number(0), default=1e-4,
                         metavar="LR", help="learning rate of the recovery (default 1e-4)")
    options.add_calibration(parser, "prompts or labels to prune on, and calibration for taylor/activation/oneshot "
                                    "and recovery")
    parser.set_defaults(handler=run)


def run(args) -> int:
    learn = LearnOptions(iterations=args.iterations, samples=args.samples, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, objective=args.objective, step_loss=args.step_loss,
                         control=args.control, warmup=args.warmup, depth_pattern=args.depth_pattern,
                         depth_init=args.depth_init, lora_rank=args.lora_rank, warm_start=args.warm_start,
                         mask_checks=args.mask_checks)
    outcome = prune(args.model, args.target_params, args.out, target_macs=args.target_macs,
                    target_latency=args.target_latency, remove_blocks=args.remove_blocks, unit=args.unit,
                    method=args.method, recover_steps=args.recover_steps,
                    recover_learning_rate=args.recover_learning_rate,
                    scope=args.scope, steps=args.prune_steps, guidance_scale=args.guidance_scale, learn=learn,
                    calibration=options.calibration_source(args), overwrite=args.overwrite, progress=not args.quiet,
                    resume=args.resume, checkpoint_every=args.checkpoint_every, device=args.device)
    print_pruning(outcome)
    if args.eval:
        print_eval(evaluate(args.model, outcome.out, progress=not args.quiet), grid_beside(outcome.out))
    return 0
