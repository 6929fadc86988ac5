"""Drive calibration: `collect` for custom loops, `calibrate` to run a pipeline or a forward loop."""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .buckets import TimestepBuckets
from .calibration_set import CalibrationSet
from .collector import CalibrationError, Collector, default_timestep_range, find_denoiser
from .strategies import Strategy


def _buckets(buckets: int | TimestepBuckets, denoiser, pipe) -> TimestepBuckets:
    if isinstance(buckets, TimestepBuckets):
        return buckets
    return TimestepBuckets(int(buckets), default_timestep_range(denoiser, pipe))


def _strategy(strategy: str | Strategy) -> Strategy:
    return strategy if isinstance(strategy, Strategy) else Strategy(strategy)


@contextlib.contextmanager
def collect(pipe_or_denoiser, buckets: int | TimestepBuckets = 8, strategy: str | Strategy = "uniform",
            reservoir_size: int = 8, seed: int = 0, spill_dir: str | Path | None = None) -> Iterator[Collector]:
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


def calibrate(pipe_or_denoiser, prompts_or_labels: Sequence | None = None, num_inference_steps: int = 25,
              num_samples: int | None = None, seed: int = 0, buckets: int | TimestepBuckets = 8,
              strategy: str | Strategy = "uniform", reservoir_size: int = 8, batch_size: int = 8,
              forward_loop: Callable | None = None, progress: bool = True, **pipe_kwargs) -> CalibrationSet:
    """Run the pipeline on prompts or class labels with seeded generators and collect statistics.

    Sample i uses prompts_or_labels[i % len]; batch j is generated with torch.Generator seeded
    `seed + j`, so the same arguments give an identical CalibrationSet. For a model that does not
    come in a pipeline, pass `forward_loop(denoiser)`, which makes the denoiser calls itself.
    """
    with collect(pipe_or_denoiser, buckets, strategy, reservoir_size, seed) as calib:
        if forward_loop is not None:
            forward_loop(find_denoiser(pipe_or_denoiser))
        else:
            _run_pipeline(pipe_or_denoiser, prompts_or_labels, num_inference_steps, num_samples, seed,
                          batch_size, progress, pipe_kwargs)
    return calib.result


def _run_pipeline(pipe, items, steps, num_samples, seed, batch_size, progress, pipe_kwargs) -> None:
    if isinstance(pipe, torch.nn.Module):
        raise CalibrationError("a bare denoiser needs forward_loop=...: there is no pipeline to drive")
    if items is None or len(items) == 0:
        raise CalibrationError("prompts_or_labels is empty: calibration needs at least one prompt or label")
    total = num_samples or len(items)
    batches = [list(range(start, min(start + batch_size, total))) for start in range(0, total, batch_size)]
    with tqdm(total=total, desc="calibrate", unit="sample", disable=not progress) as bar:
        for index, batch in enumerate(batches):
            chunk = [items[i % len(items)] for i in batch]
            _call(pipe, chunk, steps, torch.Generator().manual_seed(seed + index), pipe_kwargs)
            bar.update(len(batch))


def _call(pipe, chunk, steps, generator, pipe_kwargs) -> None:
    parameters = inspect.signature(pipe.__call__).parameters
    if "class_labels" in parameters:
        pipe(class_labels=chunk, num_inference_steps=steps, generator=generator, **pipe_kwargs)
        return
    if "output_type" in parameters:
        pipe_kwargs = {"output_type": "latent", **pipe_kwargs}
    pipe(prompt=list(chunk), num_inference_steps=steps, generator=generator, **pipe_kwargs)
