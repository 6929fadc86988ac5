"""Mixed-precision allocation as a 0/1 integer program (HAWQ-V3 / MixDQ style), solved by CBC via PuLP.

Variables x[l, f] in {0, 1}: layer l uses candidate format f. Constraints: exactly one format per
layer; a size budget, either the parameter-weighted average of weight bits
(sum bits_f * params_l * x / sum params_l <= avg_bits) or total stored bytes (codes + scales in the
kernel layout, `Candidate.packed_bytes`); optionally a latency budget from a per-format cost table and
an activation budget (parameter-weighted average activation bits, 16 for weight-only and high precision).
Objective: minimize sum weight_l * cost[l, f] * x, where cost is relative noise power
(10^(-SQNR/10)), which adds up roughly across layers when errors are independent.

Deterministic: layers and formats in a fixed order, a tie-break term (1e-9 of the cost range)
preferring fewer bits and then the earlier candidate, single-threaded CBC.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import DiffpressError, InputError
from ..plan import MIXED, Budget
from ..presets import PRESETS, Candidate, SensitivityMethods, candidate
from ..recipe import Recipe, Rule
from .sensitivity.report import SensitivityReport, db


@dataclass(frozen=True)
class LayerOption:
    """One (layer, format) pair the program can choose: its cost and what it spends."""

    candidate: str
    cost: float
    bits: float
    nbytes: int
    latency: float
    act_bits: float = 16.0


@dataclass(frozen=True)
class LayerChoices:
    fqn: str
    params: int
    options: tuple[LayerOption, ...]
    weight: float = 1.0


@dataclass
class Allocation:
    """The chosen candidate per layer, what it spends and what it costs."""

    choice: dict[str, str]  # fqn -> candidate name, in layer order
    avg_bits: float
    total_bytes: int
    latency: float
    objective: float  # summed (weighted) cost of the choice
    budget: Budget
    solve_seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    proven: bool = True  # False: CBC hit its time limit; the choice is the best found, not proven within `gap`
    selection: dict | None = None  # when chosen among contenders by measurement (compression.selection)
    avg_act_bits: float = 16.0  # parameter-weighted average activation bits (16: weight-only / high precision)

    def to_recipe(self, methods: SensitivityMethods = SensitivityMethods.FULL) -> Recipe:
        """A recipe with one exact-name rule per layer (bf16: `skip`); other layers stay high precision.

        methods: which plan of each candidate the rule gets (full: the preset's methods; rtn: its
        round-to-nearest baseline); the one sensitivity measured, so the saved model is what was measured.
        """
        rules = tuple(Rule(fqn, candidate(name).spec_for(methods)) for fqn, name in self.choice.items())
        return Recipe(default=None, rules=rules, keep_default_skips=True)

    def curve_point(self, kind: str) -> dict:
        """One point of a quality-vs-size curve: what it spends and its predicted SNR."""
        predicted = db(self.objective) if self.objective > 0 else 200.0
        return {"kind": kind, "avg_bits": round(self.avg_bits, 4), "bytes": self.total_bytes,
                "predicted_sqnr_db": round(predicted, 3)}

    def to_dict(self) -> dict:
        return {"choice": self.choice, "avg_bits": self.avg_bits, "avg_act_bits": self.avg_act_bits,
                "total_bytes": self.total_bytes,
                "latency": self.latency, "objective": self.objective, "counts": self.counts, "proven": self.proven,
                "budget": {k: v for k, v in vars(self.budget).items() if v is not None},
                "solve_seconds": round(self.solve_seconds, 3),
                **({"selection": self.selection} if self.selection is not None else {})}


# ------------------------------------------------------------------------------------ cost table


def size_proxy_latency(option_candidate: Candidate, shape: tuple[int, int]) -> float:
    """Latency proxy when no kernel benchmark is given: stored bytes (memory-bound decode)."""
    return float(option_candidate.packed_bytes(shape))


def load_latency_table(path: str | Path, candidates: Sequence[str] | None = None) -> dict[str, float]:
    """Cost per weight element per candidate, from either a JSON object {"w4a8-int": 0.6, ...} or a kernel
    benchmark result (bench/kernels.py: {"rows": [{"format", "shape", "ms", "baseline", "baseline_ms"}]},
    turned into a table by `latency_table_from_kernel_rows` for `candidates`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such latency table", "latency_table")
    try:
        table = json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: not a readable JSON latency table ({error})", "latency_table") from None
    if isinstance(table, dict) and isinstance(table.get("rows"), list):
        return latency_table_from_kernel_rows(table["rows"], candidates or (), source=str(path))
    if not isinstance(table, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in table.values()):
        raise InputError(f"{path}: expected a JSON object candidate -> non-negative cost per weight element, "
                         "or a kernel benchmark result with 'rows'", "latency_table")
    return {str(k): float(v) for k, v in table.items()}


def latency_table_from_kernel_rows(rows: Sequence[Mapping], candidates: Sequence[str],
                                   source: str = "kernel benchmark") -> dict[str, float]:
    """Milliseconds per weight element per candidate, over the benchmark's shapes.

    For each kernel format: the sum over its shapes of the fastest time (separate or fused activation
    quantization) divided by the sum of N*K, so large layers weigh in as they do in a model. A
    candidate takes the kernel format with the same weight format, granularity and activation format
    (so w8a8-int8-learned runs as w8a8-int8); bf16 takes the cuBLAS bf16 baseline timed beside them.
    """
    fastest: dict[str, dict[tuple, float]] = {}
    bf16: dict[tuple, float] = {}
    for row in rows:
        try:
            shape, fmt, ms = tuple(int(v) for v in row["shape"]), str(row["format"]), float(row["ms"])
            if len(shape) != 3:
                raise ValueError("shape is not (M, N, K)")
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{source}: a row lacks shape/format/ms: {row!r}", "latency_table") from None
        per_format = fastest.setdefault(fmt, {})
        per_format[shape] = min(ms, per_format.get(shape, math.inf))
        if row.get("baseline") == "bf16" and row.get("baseline_ms") is not None:
            bf16[shape] = float(row["baseline_ms"])
    per_element = lambda timings: sum(timings.values()) / sum(n * k for _, n, k in timings)
    table = {}
    for name in candidates:
        if name == "bf16":
            if bf16:
                table[name] = per_element(bf16)
            continue
        match = [fmt for fmt in fastest if _same_kernel(fmt, name)]
        if match:
            table[name] = per_element(fastest[match[0]])
    missing = [name for name in candidates if name not in table]
    if missing:
        raise InputError(f"{source}: no kernel timings for candidate {missing[0]!r}; it has: {', '.join(fastest)}",
                         "latency_table")
    return table


def _same_kernel(kernel_format: str, name: str) -> bool:
    if kernel_format == name:
        return True
    if kernel_format not in PRESETS or candidate(name).high_precision:
        return False
    a, b = PRESETS[kernel_format].spec, candidate(name).full
    return (a.weight_format, a.granularity, a.group_size, a.act_format) == \
        (b.weight_format, b.granularity, b.group_size, b.act_format)


def choices_from_report(report: SensitivityReport, candidates: Sequence[str] | None = None,
                        latency_table: Mapping[str, float] | None = None,
                        weights: Mapping[str, float] | None = None) -> list[LayerChoices]:
    """The program's input from a sensitivity report; formats that broke a layer (inf cost) are left out."""
    names = list(candidates or report.candidates)
    missing = [n for n in names if n not in report.candidates]
    if missing:
        raise InputError(f"candidate {missing[0]!r} was not measured; measured: {', '.join(report.candidates)}")
    if latency_table is not None:
        absent = [n for n in names if n not in latency_table]
        if absent:
            raise InputError(f"latency table has no entry for {absent[0]!r}; it has: {', '.join(latency_table)}",
                             "latency_table")
    result = []
    for layer in report.layers:
        options = tuple(_option(report, layer, name, latency_table) for name in names)
        usable = tuple(o for o in options if math.isfinite(o.cost))
        if not usable:
            raise DiffpressError(f"layer {layer.fqn}: every candidate gives non-finite outputs")
        result.append(LayerChoices(layer.fqn, layer.params, usable, (weights or {}).get(layer.fqn, 1.0)))
    return result


def _option(report, layer, name: str, latency_table) -> LayerOption:
    chosen = candidate(name)
    latency = (latency_table[name] * layer.params if latency_table is not None
               else size_proxy_latency(chosen, layer.shape))
    return LayerOption(name, report.cost(layer.fqn, name), float(chosen.weight_bits), chosen.packed_bytes(layer.shape),
                       latency, float(chosen.act_bits))


# ---------------------------------------------------------------------------------------- solve


def minimum_budget(layers: Sequence[LayerChoices]) -> tuple[float, int, float]:
    """(average bits, bytes, latency) with every layer at its cheapest option: the smallest feasible budgets."""
    bits = _weighted(layers, lambda layer: min(o.bits for o in layer.options))
    nbytes = sum(min(o.nbytes for o in layer.options) for layer in layers)
    latency = sum(min(o.latency for o in layer.options) for layer in layers)
    return bits, nbytes, latency


def check_feasible(layers: Sequence[LayerChoices], budget: Budget) -> None:
    """Raise DiffpressError naming the smallest feasible budget when one alone cannot be met.

    Size and latency are each checked against their own minimum; a pair that is feasible alone but
    not together is reported by the solver's status.
    """
    bits, nbytes, latency = minimum_budget(layers)
    if budget.avg_bits is not None and budget.avg_bits < bits - 1e-9:
        raise DiffpressError(f"avg_bits {budget.avg_bits:g} is infeasible: the smallest feasible average is "
                             f"{bits:.4g} bits (every layer at its cheapest candidate)")
    if budget.max_bytes is not None and budget.max_bytes < nbytes:
        raise DiffpressError(f"max_bytes {budget.max_bytes} is infeasible: the smallest feasible size is "
                             f"{nbytes} bytes (every layer at its cheapest candidate)")
    if budget.max_latency is not None and budget.max_latency < latency - 1e-9 * max(latency, 1):
        raise DiffpressError(f"max_latency {budget.max_latency:g} is infeasible: the smallest feasible latency "
                             f"is {latency:.6g} (every layer at its fastest candidate)")
    act_bits = _weighted(layers, lambda layer: min(o.act_bits for o in layer.options))
    if budget.avg_act_bits is not None and budget.avg_act_bits < act_bits - 1e-9:
        raise DiffpressError(f"avg_act_bits {budget.avg_act_bits:g} is infeasible: the smallest feasible average is "
                             f"{act_bits:.4g} activation bits (every layer at its lowest-activation-bit candidate)")


def _weighted(layers: Sequence[LayerChoices], value) -> float:
    """The parameter-weighted average of value(layer) over `layers`."""
    return sum(value(layer) * layer.params for layer in layers) / sum(layer.params for layer in layers)


def allocate(layers: Sequence[LayerChoices], budget: Budget, time_limit: float = 60.0, threads: int = 1,
             gap: float = 1e-3) -> Allocation:
    """Solve the 0/1 program; DiffpressError if the budget is infeasible or CBC finds no solution.

    `gap`: relative optimality gap CBC may stop at. Closing it fully is slow when many alternatives
    nearly tie: on 1,000 layers x 6 formats one budget took 42 s at 1e-4, while at 1e-3 every budget
    solves in at most 2.8 s on 2 shared cores, objectives 2e-5 apart (bench/allocate_speed.py).
    Options dominated by another option of the same layer (no better in cost, bits, bytes or
    latency) are dropped first; that never changes the optimum. `time_limit` seconds: past it, the best solution found
    is returned with `proven=False`.
    """
    import pulp

    if not layers:
        raise InputError("nothing to allocate: no layers")
    check_feasible(layers, budget)
    layers = [without_dominated(layer) for layer in layers]
    started = time.perf_counter()
    problem, variables = _build_problem(layers, budget)
    status = problem.solve(pulp.PULP_CBC_CMD(msg=False, threads=threads, timeLimit=time_limit, gapRel=gap))
    seconds = time.perf_counter() - started
    if pulp.LpStatus[status] != "Optimal" or problem.sol_status not in (pulp.LpSolutionOptimal,
                                                                        pulp.LpSolutionIntegerFeasible):
        raise DiffpressError(f"the allocation program has no solution ({pulp.LpStatus[status].lower()}) for "
                             f"{budget}; loosen the latency budget or the size budget")
    picked = {layer.fqn: _picked(layer, variables[index]) for index, layer in enumerate(layers)}
    allocation = _allocation(layers, picked, budget, seconds)
    allocation.proven = problem.sol_status == pulp.LpSolutionOptimal
    return allocation


def allocate_report(report: SensitivityReport, budget: Budget, candidates: Sequence[str] | None = None,
                    latency_table: str | Path | Mapping[str, float] | None = None,
                    weights: Mapping[str, float] | None = None) -> Allocation:
    """One candidate per layer of `report` under `budget`; latency_table: a file (see `load_latency_table`)
    or a mapping candidate -> cost per weight element."""
    names = candidates or report.candidates
    table = load_latency_table(latency_table, names) if isinstance(latency_table, (str, Path)) else latency_table
    return allocate(choices_from_report(report, candidates, table, weights), budget)


def without_dominated(layer: LayerChoices) -> LayerChoices:
    """The layer's options minus those another option beats or ties on cost, bits, bytes, latency and activation bits
    (of exact duplicates, the first is kept)."""
    key = lambda o: (o.cost, o.bits, o.nbytes, o.latency, o.act_bits)
    kept = []
    for index, option in enumerate(layer.options):
        beaten = any(all(a <= b for a, b in zip(key(other), key(option))) and (key(other) != key(option) or j < index)
                     for j, other in enumerate(layer.options) if j != index)
        if not beaten:
            kept.append(option)
    return LayerChoices(layer.fqn, layer.params, tuple(kept), layer.weight)


def _build_problem(layers: Sequence[LayerChoices], budget: Budget):
    import pulp

    problem = pulp.LpProblem("mixed_precision", pulp.LpMinimize)
    variables = [[pulp.LpVariable(f"x_{i}_{j}", cat=pulp.LpBinary) for j in range(len(layer.options))]
                 for i, layer in enumerate(layers)]
    problem += pulp.lpSum(_objective_terms(layers, variables))
    for i, layer in enumerate(layers):
        problem += pulp.lpSum(variables[i]) == 1, f"one_format_{i}"
    _add_budget(problem, layers, variables, budget)
    return problem, variables


def _objective_terms(layers, variables):
    costs = [layer.weight * o.cost for layer in layers for o in layer.options]
    scale = max(costs) or 1.0  # costs normalized to [0, 1]: CBC's tolerances are absolute
    max_bits = max(o.bits for layer in layers for o in layer.options)
    for i, layer in enumerate(layers):
        for j, option in enumerate(layer.options):
            tie_break = 1e-9 * (option.bits / max_bits + 1e-3 * j)  # fewer bits, then the earlier candidate
            yield (layer.weight * option.cost / scale + tie_break) * variables[i][j]


def _add_budget(problem, layers, variables, budget: Budget) -> None:
    import pulp

    pairs = [(layer, option, variables[i][j]) for i, layer in enumerate(layers)
             for j, option in enumerate(layer.options)]
    total = sum(layer.params for layer in layers)
    if budget.avg_bits is not None:
        problem += pulp.lpSum(o.bits * l.params / total * x for l, o, x in pairs) <= budget.avg_bits + 1e-9, "avg_bits"
    else:
        problem += pulp.lpSum(o.nbytes * x for _, o, x in pairs) <= budget.max_bytes, "max_bytes"
    if budget.max_latency is not None:
        problem += pulp.lpSum(o.latency * x for _, o, x in pairs) <= budget.max_latency, "max_latency"
    if budget.avg_act_bits is not None:
        problem += (pulp.lpSum(o.act_bits * l.params / total * x for l, o, x in pairs)
                    <= budget.avg_act_bits + 1e-9), "avg_act_bits"


def _picked(layer: LayerChoices, row) -> LayerOption:
    values = [x.value() or 0.0 for x in row]
    return layer.options[max(range(len(values)), key=lambda j: (values[j], -j))]


def _allocation(layers, picked: dict[str, LayerOption], budget: Budget, seconds: float) -> Allocation:
    counts: dict[str, int] = {}
    for option in picked.values():
        counts[option.candidate] = counts.get(option.candidate, 0) + 1
    return Allocation(
        choice={fqn: option.candidate for fqn, option in picked.items()},
        avg_bits=_weighted(layers, lambda l: picked[l.fqn].bits),
        total_bytes=sum(o.nbytes for o in picked.values()), latency=sum(o.latency for o in picked.values()),
        objective=sum(l.weight * picked[l.fqn].cost for l in layers), budget=budget, solve_seconds=seconds,
        counts=counts, avg_act_bits=_weighted(layers, lambda l: picked[l.fqn].act_bits))


def uniform_allocation(layers: Sequence[LayerChoices], name: str) -> Allocation:
    """Every layer at candidate `name` (for comparisons): what a uniform preset spends and costs."""
    picked = {}
    for layer in layers:
        match = [o for o in layer.options if o.candidate == name]
        if not match:
            raise InputError(f"layer {layer.fqn} has no usable option {name!r}")
        picked[layer.fqn] = match[0]
    return _allocation(layers, picked, Budget(avg_bits=_weighted(layers, lambda l: picked[l.fqn].bits)), 0.0)


CURVE_BITS = (4.0, 4.5, 5.0, 6.0, 8.0)


def curve_allocations(layers: Sequence[LayerChoices], candidates: Sequence[str],
                      bits: Sequence[float] = CURVE_BITS) -> list[tuple[str, Allocation]]:
    """The quality-vs-size curve's points: each candidate uniformly, then the program at each average
    bit budget (infeasible budgets and candidates some layer cannot use are left out)."""
    points = []
    for name in candidates:
        try:
            points.append((name, uniform_allocation(layers, name)))
        except DiffpressError:
            continue
    for budget in bits:
        try:
            points.append((MIXED, allocate(layers, Budget(avg_bits=budget))))
        except DiffpressError:
            continue
    return points
