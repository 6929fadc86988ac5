"""Kernel benchmark (BENCHMARKS.md section 2): fused low-bit linears against cuBLAS bf16 on one GPU.

    python bench/kernels.py --shapes all --formats all            # writes bench/results/kernels-<device>.json
    python bench/kernels.py --check                               # each kernel once vs the reference: max errors

Each row times the whole quantized linear (activation quantization included; W8A8 rows are given
for both the separate quantize kernel and the fused prologue) with `triton.testing.do_bench`
(median, after warm-up), rotating over enough input/weight copies that L2 cannot hold them.
Baselines in the same process: F.linear in bf16, and for W8A8 `torch._scaled_mm` (row-wise FP8)
and `torch._int_mm` + scaling (INT8). The first call of each kernel (compilation and tuning
included) is recorded separately as `cold_ms`. Needs a CUDA GPU; imports no diffusers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "flux": [(4096, 3072, 3072), (4096, 9216, 3072), (4096, 12288, 3072), (4096, 3072, 12288), (4608, 21504, 3072),
             (4608, 3072, 15360), (512, 12288, 3072), (512, 9216, 3072), (1, 18432, 3072), (1, 9216, 3072)],
    "sdxl": [(2048, 1280, 1280), (2048, 3840, 1280), (2048, 10240, 1280), (2048, 1280, 5120), (8192, 640, 640),
             (8192, 1920, 640), (8192, 5120, 640), (8192, 640, 2560), (154, 1280, 2048), (154, 640, 2048)],
    "pixart": [(8192, 1152, 1152), (8192, 3456, 1152), (8192, 4608, 1152), (8192, 1152, 4608)],
}
# preset name -> (weight format, granularity, group size, activation format)
FORMATS = {
    "w8a8-int8": ("int8", "per_channel", None, "int8"),
    "w8a8-fp8": ("fp8_e4m3", "per_channel", None, "fp8_e4m3"),
    "w4a8-int": ("int4", "per_group", 128, "int8"),
    "w4a8-fp4": ("fp4_e2m1", "per_group", 16, "fp8_e4m3"),
    "w4a16-int4": ("int4", "per_group", 128, None),
    "w4a16-fp4": ("fp4_e2m1", "per_group", 16, None),
    "w8a16-int8": ("int8", "per_channel", None, None),
}
ROTATE_BYTES = 256 * 2**20  # total operand bytes per rotation: well above the 50 MB L2 of an H100


def packed_weights(fmt: str, n: int, k: int, copies: int):
    from diffpress.compression.quantize import quantize_weight
    from diffpress.formats import Granularity, QuantFormat

    weight_format, granularity, group, _ = FORMATS[fmt]
    base = quantize_weight(torch.randn(n, k, device="cuda") * 0.05, QuantFormat(weight_format),
                           Granularity(granularity), group)
    return [base] + [type(base)(base.qdata.clone(), base.scales.clone(), base.format, base.granularity,
                                base.group_size, base.shape) for _ in range(copies - 1)]


def copies_for(m: int, n: int, k: int) -> int:
    return max(1, min(16, ROTATE_BYTES // max(2 * (m * k + n * k), 1)))


def bench_rotating(fns) -> float:
    import triton

    state = {"i": 0}

    def step():
        fns[state["i"] % len(fns)]()
        state["i"] += 1
    return triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")


def kernel_calls(fmt: str, xs, weights, bias, act_quant: str):
    from diffpress.formats import QuantFormat
    from diffpress.kernels.ops_triton import linear_2d
    from diffpress.kernels.w8a8 import w8a8_linear

    act = FORMATS[fmt][3]
    act_format = QuantFormat(act) if act else None
    if act_quant == "prologue":
        return [lambda x=x, w=w: w8a8_linear(x, w.qdata, w.scales, bias, act_format, act_quant="prologue")
                for x, w in zip(xs, weights)]
    return [lambda x=x, w=w: linear_2d(x, w, bias, act_format, None, torch.bfloat16) for x, w in zip(xs, weights)]


def baselines(fmt: str, xs, m: int, n: int, k: int) -> dict[str, float]:
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.05 for _ in xs]
    out = {"bf16": bench_rotating([lambda x=x, w=w: F.linear(x, w) for x, w in zip(xs, ws)])}
    if fmt == "w8a8-fp8":
        w8 = [w.to(torch.float8_e4m3fn) for w in ws]
        ones_n = torch.ones(1, n, device="cuda")

        def scaled(x, w):
            scale = x.abs().amax(dim=1, keepdim=True).float() / 448.0
            return torch._scaled_mm((x / scale).to(torch.float8_e4m3fn), w.T, scale_a=scale, scale_b=ones_n,
                                    out_dtype=torch.bfloat16)
        out["scaled_mm_rowwise_fp8"] = bench_rotating([lambda x=x, w=w: scaled(x, w) for x, w in zip(xs, w8)])
    if fmt == "w8a8-int8" and m > 16:
        w8 = [torch.randint(-127, 128, (k, n), device="cuda", dtype=torch.int8) for _ in xs]
        w_scale = torch.rand(n, device="cuda")

        def int_mm(x, w):
            scale = x.abs().amax(dim=1, keepdim=True).float() / 127.0
            acc = torch._int_mm(torch.round(x / scale).clamp(-127, 127).to(torch.int8), w)
            return (acc * scale * w_scale).to(torch.bfloat16)
        out["int_mm_scaled"] = bench_rotating([lambda x=x, w=w: int_mm(x, w) for x, w in zip(xs, w8)])
    return out


def rows_for(fmt: str, m: int, n: int, k: int) -> list[dict]:
    copies = copies_for(m, n, k)
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    weights = packed_weights(fmt, n, k, copies)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    modes = ["separate", "prologue"] if fmt.startswith("w8a8") else ["separate"]
    base = baselines(fmt, xs, m, n, k)
    rows = []
    for mode in modes:
        calls = kernel_calls(fmt, xs, weights, bias, mode)
        torch.cuda.synchronize()
        start = time.perf_counter()
        calls[0]()
        torch.cuda.synchronize()
        cold_ms = (time.perf_counter() - start) * 1e3
        ms = bench_rotating(calls)
        for name, baseline_ms in base.items():
            rows.append({"shape": [m, n, k], "format": fmt, "act_quant": mode, "ms": ms, "baseline": name,
                         "baseline_ms": baseline_ms, "ratio": baseline_ms / ms,
                         "tflops": 2 * m * n * k / ms / 1e9, "cold_ms": cold_ms})
    return rows


def check(formats: list[str]) -> list[dict]:
    """Each kernel once on a GPU against the reference: max abs error relative to max |reference|."""
    from diffpress.formats import QuantFormat
    from diffpress.kernels import reference
    from diffpress.kernels.ops_triton import linear_2d

    results = []
    for fmt in formats:
        act = FORMATS[fmt][3]
        for m, n, k in [(1, 4096, 4096), (16, 3072, 3072), (154, 1280, 2048), (4096, 3072, 3072), (33, 17, 130)]:
            w = packed_weights(fmt, n, k, 1)[0]
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            act_format = QuantFormat(act) if act else None
            got = linear_2d(x, w, None, act_format, None, torch.float32)
            want = reference.quantized_linear(x.float(), w, None, act_format)
            error = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
            results.append({"format": fmt, "shape": [m, n, k], "max_rel_error": error})
            print(f"{fmt:12s} {str((m, n, k)):22s} max |err| / max |ref| = {error:.2e}")
    return results


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="all", choices=[*SHAPES, "all"])
    parser.add_argument("--formats", default="all", help=f"comma-separated of {', '.join(FORMATS)}, or all")
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/kernels-<device>.json)")
    parser.add_argument("--check", action="store_true", help="run each kernel once against the reference")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run",
              file=sys.stderr)
        return 2
    formats = list(FORMATS) if args.formats == "all" else args.formats.split(",")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"unknown format {unknown[0]!r}; allowed: {', '.join(FORMATS)}")
    if args.check:
        return 0 if all(r["max_rel_error"] < 2e-2 for r in check(formats)) else 1
    import triton
    from diffpress.kernels.kernel_configs import device_slug

    device = torch.cuda.get_device_name()
    shapes = [s for group in (SHAPES if args.shapes == "all" else {args.shapes: SHAPES[args.shapes]}).values()
              for s in group]
    rows = []
    for fmt in formats:
        for m, n, k in shapes:
            rows += rows_for(fmt, m, n, k)
            print(json.dumps(rows[-1]))
    result = {"device": device, "torch": torch.__version__, "triton": triton.__version__,
              "date": datetime.date.today().isoformat(), "commit": commit(),
              "command": "python " + " ".join(sys.argv), "rows": rows}
    out = args.out or ROOT / "bench" / "results" / f"kernels-{device_slug(device)}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
