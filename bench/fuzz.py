"""Fuzz every reader of user files (tests/fuzz_targets.py) with many seeded mutations each (CPU).

    python bench/fuzz.py [--cases 10000] [--targets recipe calibration compressed-model pruning-structure]

Per reader: cases run, cases that loaded, distinct one-line DiffpressError messages, crashes (any
other exception, or a multi-line message), hangs (no answer within 5x the 2 s limit), slow cases
(over 2 s), cases that wrote a file, and the slowest case. Writes bench/results/fuzz.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzz_targets  # noqa: E402


def fuzz(target, cases: int, root: Path) -> dict:
    counts = collections.Counter()
    messages: collections.Counter = collections.Counter()
    failures: dict[str, dict] = {}
    slowest = 0.0
    started = time.perf_counter()
    for seed in range(cases):
        directory = fuzz_targets.fresh_case_dir(root, 0)
        began = time.perf_counter()
        try:
            result = fuzz_targets.run_case(target, directory, fuzz_targets.seeded(seed))
            counts["loaded" if result == "ok" else "refused"] += 1
            if result != "ok":
                messages[_shape(result)] += 1
        except AssertionError as error:
            text = str(error)
            kind = "hangs" if "hang:" in text else "slow" if "took" in text else \
                "writes" if "wrote" in text else "crashes"
            counts[kind] += 1
            failure = failures.setdefault(text[:300], {"first_seed": seed, "count": 0})
            failure["count"] += 1
        slowest = max(slowest, time.perf_counter() - began)
        shutil.rmtree(directory, ignore_errors=True)
    return {"reader": target.name, "cases": cases, "loaded": counts["loaded"], "refused": counts["refused"],
            "distinct_messages": len(messages), "crashes": counts["crashes"], "hangs": counts["hangs"],
            "slow": counts["slow"], "writes": counts["writes"], "slowest_case_s": round(slowest, 3),
            "seconds": round(time.perf_counter() - started, 1), "failures": failures,
            "top_messages": [{"message": m, "count": c} for m, c in messages.most_common(12)]}


def _shape(message: str) -> str:
    """The message with its file paths and numbers blanked, so one kind of refusal counts once."""
    import re

    message = re.sub(r"(/[^\s:'\"]+)+", "PATH", message)
    return re.sub(r"\d+", "N", message)[:160]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--targets", nargs="+", default=None)
    parser.add_argument("--merge", action="store_true", help="keep the result file's rows of the other readers")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for target in fuzz_targets.targets(Path(scratch) / "seeds"):
            if args.targets and target.name not in args.targets:
                continue
            row = fuzz(target, args.cases, Path(scratch) / target.name)
            print(json.dumps({k: v for k, v in row.items() if k != "top_messages"}), flush=True)
            rows.append(row)
    import torch

    out = Path(__file__).parent / "results" / "fuzz.json"
    command = "python bench/fuzz.py " + " ".join(sys.argv[1:])
    for row in rows:
        row.update(commit=commit, command=command)
    if args.merge and out.exists():
        previous = json.loads(out.read_text())
        fresh = {row["reader"] for row in rows}
        rows = [{"commit": previous.get("commit"), "command": previous.get("command"), **row}
                for row in previous["rows"] if row["reader"] not in fresh] + rows
    out.write_text(json.dumps({"benchmark": "fuzz", "date": date.today().isoformat(), "commit": commit,
                               "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
                               "command": command, "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
