"""Two processes on the gloo backend (torchrun) give one process's calibration set, report and allocation."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffpress.calibration import CalibrationSet
from diffpress.calibration.reservoir import Reservoir
from diffpress.calibration.strategies import Strategy

WORKER = Path(__file__).parent / "distributed_worker.py"


def _run(out: Path, processes: int) -> None:
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    done = subprocess.run([*launcher, str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "world.json").read_text())["world_size"] == processes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    _run(root / "one", 1)
    _run(root / "two", 2)
    return root / "one", root / "two"


def test_two_processes_calibrate_like_one(runs):
    one, two = (CalibrationSet.load(run / "calibration.safetensors") for run in runs)
    assert one.timesteps == two.timesteps
    assert set(one.stats) == set(two.stats)
    for key, stats in one.stats.items():
        other = two.stats[key]
        assert torch.equal(stats.channel_absmax, other.channel_absmax) and torch.equal(stats.tokens, other.tokens)
        assert torch.equal(stats.abs_log2_hist, other.abs_log2_hist)
        torch.testing.assert_close(stats.channel_sumsq, other.channel_sumsq, rtol=1e-12, atol=0)  # summation order
    calls = lambda s: [(e.call_index, e.bucket) for e in s.entries()]
    assert calls(one) == calls(two) and len(calls(one)) > 0
    for a, b in zip(one.entries(), two.entries()):
        assert a.tensors.keys() == b.tensors.keys()
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_two_processes_measure_and_allocate_like_one(runs):
    one, two = runs
    assert json.loads((one / "report.json").read_text())["output_sqnr_db"] == \
        json.loads((two / "report.json").read_text())["output_sqnr_db"]
    assert (one / "allocation.json").read_text() == (two / "allocation.json").read_text()


def test_reservoir_pools_merge_to_the_single_run_pool():
    calls = [(index, 0.1 * (index % 10)) for index in range(200)]
    single = Reservoir(3, Strategy("uniform"), seed=5)
    halves = [Reservoir(3, Strategy("uniform"), seed=5) for _ in range(2)]
    for index, t in calls:
        single.offer(index, t, t, int(t * 4), {"x": torch.tensor([index])})
        halves[index % 2].offer(index, t, t, int(t * 4), {"x": torch.tensor([index])})
    halves[0].merge(halves[1].kept, halves[1].seen)
    picked = lambda r: {b: sorted(e.call_index for e in es) for b, es in r.finalize().items()}
    assert picked(single) == picked(halves[0])
    assert single.seen == halves[0].seen
