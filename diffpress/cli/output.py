"""How the commands print results: sizes, the compression summary, the eval table."""
from __future__ import annotations

import math


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1000
    return str(count)


def print_compression(result, plan_label: str) -> None:
    if result.allocation is not None:
        a = result.allocation
        act = f", {a.avg_act_bits:.3f} average activation bits" if a.budget.avg_act_bits is not None else ""
        print(f"allocation: {a.avg_bits:.3f} average weight bits{act}, {a.total_bytes} bytes of codes + scales; "
              + ", ".join(f"{name}: {count} layers" for name, count in sorted(a.counts.items())))
        if a.selection is not None:
            chosen = a.selection
            scores = ", ".join(_contender(name, psnr, chosen.get("typical_error", {}).get(name))
                               for name, psnr in chosen["psnr_db"].items())
            same = "".join(f"; {name} = {other}" for name, other in chosen["same_as"].items())
            print(f"allocation chosen by measurement on {chosen['held_out_samples']} held-out samples: "
                  f"{chosen['chosen']} ({scores}{same})")
    print(f"{result.model_class}: {plan_label}: quantized {len(result.report.quantized)} layers, "
          f"skipped {len(result.report.skipped)}")
    for fqn, reason in result.report.skipped.items():
        print(f"  kept in high precision: {fqn:<50} ({reason})")
    ratio = result.bytes_before / max(result.bytes_after, 1)
    print(f"weights: {format_bytes(result.bytes_before)} -> {format_bytes(result.bytes_after)} ({ratio:.2f}x smaller)")
    where = f" (computed on {result.placement.describe()})" if result.placement is not None else ""
    print(f"saved {result.out} in {result.seconds:.1f} s{where}")


def print_pruning(outcome) -> None:
    result = outcome.result
    stage = result.stage
    budget = (f"remove {stage.remove_blocks} blocks" if stage.remove_blocks is not None
              else f"keep {stage.target:g} of the {stage.cost.value}")
    print(f"pruned ({stage.unit.value}, {stage.method.value}, {budget}):")
    if result.blocks:
        losses = result.losses or [None] * len(result.blocks)
        removed = set(result.removed)
        for block, loss in zip(result.blocks, losses):
            status = "removed" if block.name in removed else "kept"
            score = "" if loss is None else f"  single-removal loss {loss:.4g}"
            print(f"  {block.name:<40} {block.kind:<28} {block.params:>11,} params  {status}{score}")
        if result.additivity is not None:
            print(f"additivity of single-removal losses over {len(result.additivity.sizes)} random sets: "
                  f"Pearson {result.additivity.pearson:.3f}, Spearman {result.additivity.spearman:.3f}")
    for name, kind, kept, count in result.rows() if not result.blocks else []:
        print(f"  {name:<50} {kept:>5} of {count:<5} {kind}s")
    untouched = len(result.groups) - len(result.rows())
    if untouched > 0:
        print(f"  ({untouched} prunable groups kept whole)")
    print(f"parameters: {result.params_before:,} -> {result.params_after:,} "
          f"({result.params_after / result.params_before:.3f}); MACs per call and sample: "
          f"{result.macs_before / 1e6:.1f} M -> {result.macs_after / 1e6:.1f} M "
          f"({result.macs_after / result.macs_before:.3f})")
    if result.learned is not None:
        learned = result.learned
        print(f"mask learned in {learned.seconds:.1f} s ({len(learned.losses)} iterations, "
              f"final loss {learned.losses[-1]:.4f})")
        if (best := learned.kept_check) is not None:
            ranking = best.get("ranking", "learned")
            which = f"the {ranking} ranking's cut" if ranking != "learned" else f"the cut of iteration {best['iteration']}"
            print(f"kept {which}: held-out error {best['loss']:.4g} (of {len(learned.checks)} cuts measured, "
                  f"{learned.checks[-1]['loss']:.4g} at the end)")
    if result.learned_depth is not None:
        depth = result.learned_depth
        print(f"depth mask learned in {depth.seconds:.1f} s ({len(depth.losses)} iterations, {depth.pattern} "
              f"pattern, {depth.objective} objective, final loss {depth.losses[-1]:.4f})")
        if depth.checks:
            best = min(depth.checks, key=lambda c: c["loss"])
            print(f"kept the set of iteration {best['iteration']}: held-out error {best['loss']:.4g} "
                  f"({len({tuple(c['removed']) for c in depth.checks})} distinct sets measured)")
    if result.recovery is not None:
        recovery, curve = result.recovery, result.recovery.losses
        outcome_text = "kept" if recovery.kept else "discarded: it raised the output error; the pruned weights stay"
        print(f"recovered in {recovery.seconds:.1f} s ({len(curve)} steps, distillation loss "
              f"{curve[0]:.4f} -> {curve[-1]:.4f}; output error on the {recovery.judged_on} "
              f"{recovery.output_loss_before:.4f} -> {recovery.output_loss_after:.4f}; {outcome_text})")
    where = f"saved {outcome.out}" if outcome.out else "not saved"
    print(f"{where} in {result.seconds:.1f} s")


def print_eval(result, grid) -> None:
    reference, compressed = result.reference, result.compressed
    cell = lambda side, key, fmt: "-" if side is None or getattr(side, key) is None else fmt(getattr(side, key))
    rows = [("PSNR vs reference", "psnr_db", lambda v: f"{v:.2f} dB"),
            ("typical sample PSNR", "psnr_typical_db", lambda v: f"{v:.2f} dB"),
            ("SSIM vs reference", "ssim", lambda v: f"{v:.4f}"),
            ("classifier accuracy", "classifier_accuracy", lambda v: f"{100 * v:.1f}%"),
            ("Frechet distance", "frechet_distance", lambda v: f"{v:.3f}"),
            ("weight bytes", "size_bytes", format_bytes), ("sampling seconds", "seconds", lambda v: f"{v:.1f}")]
    print(f"{'':<22}{'reference':>14}{'compressed':>14}")
    for label, key, fmt in rows:
        print(f"{label:<22}{cell(reference, key, fmt):>14}{cell(compressed, key, fmt):>14}")
    if compressed is not None and compressed.psnr_ci95_db is not None:
        low, high = compressed.psnr_ci95_db
        print(f"PSNR 95% interval over the {len(compressed.sample_mse)} samples (bootstrap): {low:.2f} - {high:.2f} dB")
    if grid is not None and compressed is not None:
        print(f"grid (top: reference, bottom: compressed): {result.save_grid(grid)}")


def grid_beside(compressed) -> "Path":
    """Where the side-by-side grid goes by default: beside the compressed directory, never inside it."""
    from pathlib import Path

    compressed = Path(compressed).expanduser().resolve()
    return compressed.parent / f"{compressed.name}-grid.png"


def _contender(name: str, psnr: float | None, typical: float | None) -> str:
    """One measured allocation: its PSNR, and the typical per-sample SNR it was chosen by."""
    if psnr is None:
        return f"{name} non-finite"
    if typical is None or not 0 < typical < math.inf:
        return f"{name} {psnr:.2f} dB"
    return f"{name} {psnr:.2f} dB, typical sample {-10 * math.log10(typical):.1f} dB"
