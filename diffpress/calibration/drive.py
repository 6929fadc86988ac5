"""Drive calibration: `collect` for custom loops, `calibrate` to run a pipeline or a forward loop."""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .. import distributed, resume
from ..errors import DiffpressError, InputError
from .buckets import TimestepBuckets
from .calibration_set import CalibrationSet
from .collector import CalibrationError, Collector, default_timestep_range, find_denoiser
from .options import CalibrationOptions
from .strategies import Strategy


def _buckets(buckets: int | TimestepBuckets, denoiser, pipe) -> TimestepBuckets:
    if isinstance(buckets, TimestepBuckets):
        return buckets
    return TimestepBuckets(buckets, default_timestep_range(denoiser, pipe))


def _strategy(strategy: str | Strategy) -> Strategy:
    return strategy if isinstance(strategy, Strategy) else Strategy(strategy)


@contextlib.contextmanager
def collect(pipe_or_denoiser, buckets: int | TimestepBuckets = 8, strategy: str | Strategy = "uniform",
            reservoir_size: int = 4, seed: int = 0, spill_dir: str | Path | None = None) -> Iterator[Collector]:
    """Record calibration statistics for every denoiser call made inside the block.

        with diffpress.calibration.collect(pipe, buckets=8, strategy="uniform") as calib:
            pipe(...)
        calibration_set = calib.result

    `buckets`: a count (equal-width over the timestep range the denoiser sees) or TimestepBuckets.
    `reservoir_size`: denoiser calls kept per bucket for replay. Hooks are removed on exit, also
    when the block raises.
    """
    denoiser = find_denoiser(pipe_or_denoiser)
    pipe = None if pipe_or_denoiser is denoiser else pipe_or_denoiser
    collector = Collector(denoiser, _buckets(buckets, denoiser, pipe), _strategy(strategy), reservoir_size, seed,
                          Path(spill_dir) if spill_dir else None)
    with collector:
        yield collector


def calibrate(pipe_or_denoiser, prompts_or_labels: Sequence | None = None, *,
              options: CalibrationOptions | None = None, forward_loop: Callable | None = None, progress: bool = True,
              pipe_kwargs: dict | None = None, **settings) -> CalibrationSet:
    """Run the pipeline on prompts or class labels with seeded generators and collect statistics.

    `options` (default CalibrationOptions()) says how much to run and keep; `settings` override its
    fields by name (num_samples=, steps=, buckets=, reservoir_size=, seed=, strategy=, batch_size=),
    and `prompts_or_labels` its items. Sample i uses item i % len; batch j is generated with
    torch.Generator seeded `seed + j`, so the same arguments give an identical CalibrationSet. For a
    model that does not come in a pipeline, pass `forward_loop(denoiser)`, which makes the denoiser
    calls itself. `pipe_kwargs` go to every pipeline call.
    """
    options = _with_settings(options or CalibrationOptions(), prompts_or_labels, settings)
    with collect(pipe_or_denoiser, options.buckets, options.strategy, options.reservoir_size, options.seed) as calib:
        if forward_loop is not None:
            forward_loop(find_denoiser(pipe_or_denoiser))
        else:
            _run_pipeline(pipe_or_denoiser, options, progress, pipe_kwargs or {}, calib)
    return calib.result


def _with_settings(options: CalibrationOptions, items: Sequence | None, settings: dict) -> CalibrationOptions:
    known = {f.name for f in fields(CalibrationOptions)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"calibrate() got an unexpected keyword argument {unknown[0]!r}; settings are "
                        f"CalibrationOptions fields: {', '.join(sorted(known))}")
    if items is not None:
        if len(items) == 0:
            raise CalibrationError("prompts_or_labels is empty: give at least one prompt or class label", "prompts")
        is_labels = all(isinstance(v, int) and not isinstance(v, bool) for v in items)
        settings = {**settings, "labels" if is_labels else "prompts": tuple(items),
                    "prompts" if is_labels else "labels": None}
    return replace(options, **settings) if settings else options


def _run_pipeline(pipe, options: CalibrationOptions, progress: bool, pipe_kwargs: dict, collector: Collector) -> None:
    """Batch j of the samples with a generator seeded `seed + j`. Inside a diffpress.resume work directory the
    collector's state is checkpointed between batches, and a resumed run starts after the last checkpoint."""
    if isinstance(pipe, torch.nn.Module):
        raise CalibrationError("a bare denoiser needs forward_loop=...: there is no pipeline to drive")
    items = options.items
    if not items:
        raise CalibrationError("no prompts or labels to calibrate on: give at least one", "prompts")
    total = options.num_samples or len(items)
    size = options.batch_size
    batches = [list(range(start, min(start + size, total))) for start in range(0, total, size)]
    # delay: no bar for a run that fails (or finishes) within a second, so an early error stays one line
    # several processes: no snapshots (one rank's state is not the run's); resume is for single-process runs
    checkpoints = resume.stage("calibration") if not distributed.active() else resume.StageCheckpoints(None)
    start = _restore(collector, checkpoints, options)
    mine = [index for index in range(len(batches)) if distributed.mine(index)]  # all of them in one process
    with tqdm(total=sum(len(batches[i]) for i in mine), desc="calibrate", unit="sample", disable=not progress,
              delay=1.0, initial=sum(len(batches[i]) for i in mine if i < start)) as bar:
        for index, batch in enumerate(batches):
            if index < start or index not in mine:
                continue
            collector.begin_batch(index)
            chunk = [items[i % len(items)] for i in batch]
            generator = torch.Generator().manual_seed(options.seed + index)
            if index == 0:
                _first_call(pipe, chunk, options, generator, pipe_kwargs)
            else:
                _call(pipe, chunk, options.steps, generator, pipe_kwargs)
            bar.update(len(batch))
            if index == mine[-1] or checkpoints.snapshot_due():
                tensors, meta = collector.state()
                checkpoints.write_snapshot(tensors, {**meta, "next_batch": index + 1, "options": repr(options)})


def _restore(collector: Collector, checkpoints, options: CalibrationOptions) -> int:
    """The batch to start from: 0, or the one after the last checkpoint (whose state the collector takes)."""
    snapshot = checkpoints.latest_snapshot()
    if snapshot is None:
        return 0
    tensors, meta = snapshot
    if meta.get("options") != repr(options):
        raise InputError(f"{checkpoints.directory}: the checkpointed calibration ran with other options; "
                         "rerun without --resume", "resume")
    collector.restore(tensors, meta)
    return int(meta["next_batch"])


def _first_call(pipe, chunk, options: CalibrationOptions, generator, pipe_kwargs) -> None:
    """The first pipeline call: a pipeline that rejects the items (a label out of range, a prompt it cannot
    take) says so as an InputError naming them, not as a traceback."""
    try:
        _call(pipe, chunk, options.steps, generator, pipe_kwargs)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        if isinstance(error, DiffpressError):
            raise
        option = "labels" if options.labels is not None else "prompts"
        raise InputError(f"the pipeline rejected the calibration {option} {list(chunk)[:4]}: "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", option) from error


def _call(pipe, chunk, steps, generator, pipe_kwargs) -> None:
    parameters = inspect.signature(pipe.__call__).parameters
    if "class_labels" in parameters:
        pipe(class_labels=chunk, num_inference_steps=steps, generator=generator, **pipe_kwargs)
        return
    if "output_type" in parameters:
        pipe_kwargs = {"output_type": "latent", **pipe_kwargs}
    pipe(prompt=list(chunk), num_inference_steps=steps, generator=generator, **pipe_kwargs)
