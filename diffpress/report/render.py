"""The sensitivity report: report.json, a self-contained report.html (inline CSS, JS and PNGs; no
network) and report.md (PNG files beside it), from a SensitivityReport plus an allocation."""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .. import distributed
from ..compression.allocate import Allocation, allocate, choices_from_report, curve_allocations
from ..compression.sensitivity.report import SensitivityReport
from ..plan import Budget, Plan
from ..presets import candidate
from ..recipe import Recipe, Rule
from . import plots

MAX_PLOTTED_LAYERS = 40


@dataclass
class ReportData:
    """Everything the three renderings show, computed once."""

    report: SensitivityReport
    focus: str  # the candidate rankings and the heatmap use: the cheapest one measured
    ranking: list[str]
    allocation: Allocation | None
    allocation_note: str
    curve: list[dict]
    top_k_recipe: str
    allocation_recipe: str | None
    images: dict[str, bytes]


def write_report(report: SensitivityReport, out: str | Path, avg_bits: float = 5.0, top_k: int = 5,
                 overwrite: bool = True) -> Path:
    """Write DIR/report.json, report.html, report.md, recipe.yaml (the allocation) and the PNGs, atomically
    (into a hidden sibling directory renamed into place; an existing DIR is replaced only with overwrite)."""
    if not distributed.is_main():  # several processes: rank 0 writes
        return Path(out)
    from ..outputs import atomic_directory

    data = build(report, avg_bits, top_k)
    out = Path(out)
    with atomic_directory(out, overwrite or (out.is_dir() and not any(out.iterdir()))) as staging:
        for name, png in data.images.items():
            (staging / f"{name}.png").write_bytes(png)
        (staging / "report.json").write_text(json.dumps(to_json(data), indent=1) + "\n")
        (staging / "report.html").write_text(to_html(data))
        (staging / "report.md").write_text(to_markdown(data))
        if data.allocation_recipe:
            (staging / "recipe.yaml").write_text(data.allocation_recipe)
    return out


def build(report: SensitivityReport, avg_bits: float, top_k: int) -> ReportData:
    focus = min(report.candidates, key=lambda n: (candidate(n).weight_bits, report.candidates.index(n)))
    ranking = report.ranking(focus)
    allocation, note = _allocation(report, avg_bits)
    shown = ranking[:MAX_PLOTTED_LAYERS]
    curve = report.info.get("measured_curve") or predicted_curve(report)
    images = {"sensitivity_bars": plots.sensitivity_bars(report, shown),
              "bucket_heatmap": plots.bucket_heatmap(report, shown, focus),
              "activation_ranges": plots.activation_ranges(report, ranking[:top_k])}
    if curve:
        images["size_curve"] = plots.size_curve(curve)
    return ReportData(report, focus, ranking, allocation, note, curve, top_k_recipe(report, ranking, focus, top_k),
                      Plan(allocation.to_recipe()).to_yaml() if allocation else None, images)


def _allocation(report: SensitivityReport, avg_bits: float) -> tuple[Allocation | None, str]:
    from ..errors import DiffpressError

    try:
        return allocate(choices_from_report(report), Budget(avg_bits=avg_bits)), ""
    except DiffpressError as error:
        return None, str(error)


def predicted_curve(report: SensitivityReport) -> list[dict]:
    """Mixed allocations at CURVE_BITS and each uniform candidate: average bits vs predicted SNR (the
    summed relative error of the chosen formats, in dB)."""
    return [allocation.curve_point(kind) for kind, allocation in
            curve_allocations(choices_from_report(report), report.candidates)]


def top_k_recipe(report: SensitivityReport, ranking: list[str], focus: str, top_k: int) -> str:
    """YAML: the focus candidate everywhere, the top-k most sensitive layers kept in high precision."""
    rules = tuple(Rule(fqn, None) for fqn in ranking[:top_k])
    return Plan(Recipe(candidate(focus).full, rules)).to_yaml()


# ------------------------------------------------------------------------------------------- JSON


def to_json(data: ReportData) -> dict:
    return {"sensitivity": data.report.to_dict(), "focus_candidate": data.focus, "ranking": data.ranking,
            "allocation": data.allocation.to_dict() if data.allocation else {"error": data.allocation_note},
            "size": _size_summary(data), "curve": data.curve, "top_k_recipe": data.top_k_recipe,
            "allocation_recipe": data.allocation_recipe}


def _size_summary(data: ReportData) -> dict:
    params = sum(layer.params for layer in data.report.layers)
    summary = {"layers": len(data.report.layers), "params": params, "bf16_bytes": 2 * params, "fp32_bytes": 4 * params}
    if data.allocation:
        summary["allocated_bytes"] = data.allocation.total_bytes
        summary["allocated_avg_bits"] = round(data.allocation.avg_bits, 4)
    return summary


# ------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f0f0f0;cursor:pointer;user-select:none}td.name,th.name{text-align:left;font-family:monospace}
tr:nth-child(even){background:#fafafa}img{max-width:100%;border:1px solid #eee}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}.note{color:#555;font-size:13px}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var ascending = th.dataset.order !== 'asc'; th.dataset.order = ascending ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.value || a.cells[col].textContent, y = b.cells[col].dataset.value || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def measurement_note(report: SensitivityReport) -> str:
    """What was measured how, in one sentence (HTML and markdown)."""
    methods = ("each candidate's full preset" if report.info.get("methods") == "full"
               else "each candidate's round-to-nearest variant")
    if len(report.image) == len(report.layers):
        scope = "image metric for every layer (the allocation's cost)"
    elif report.image:
        scope = (f"image metric for {len(report.image)} layers (largest per-bucket SQNR spread and largest output "
                 "error), output metric scaled to image units for the rest")
    else:
        scope = "no image metric (the allocation uses the output metric)"
    return f"Measured with {methods}; output metric for every layer, {scope}."


def to_html(data: ReportData) -> str:
    report = data.report
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>diffpress sensitivity report</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Sensitivity report: {_e(report.info.get('model', 'denoiser'))}</h1>",
             f"<p class='note'>{len(report.layers)} layers x {len(report.candidates)} candidate formats, "
             f"{len(report.buckets)} timestep buckets, {report.info.get('calls_replayed', '?')} replayed denoiser calls. "
             f"{_e(measurement_note(report))}</p>",
             "<h2>Per-layer sensitivity</h2>",
             "<p class='note'>Denoiser output SQNR (dB) with only that layer quantized, averaged as noise power over "
             "buckets; click a header to sort. Image PSNR: final samples vs the float model's.</p>",
             _html_table(data), "<h2>Sensitivity per format (most sensitive first)</h2>", _img(data, "sensitivity_bars"),
             f"<h2>Layer x timestep bucket ({_e(data.focus)})</h2>", _img(data, "bucket_heatmap"),
             "<h2>Activation ranges of the most sensitive layers</h2>", _img(data, "activation_ranges"),
             _html_ranges(data), "<h2>Allocation</h2>", _html_allocation(data)]
    if "size_curve" in data.images:
        parts += [f"<h2>Quality vs size ({_curve_kind(data)})</h2>", f"<p class='note'>{_e(_curve_note(data))}</p>",
                  _img(data, "size_curve"), _html_curve_table(data)]
    parts += ["<h2>Recipe: top-k sensitive layers in high precision</h2>",
              f"<pre>{_e(data.top_k_recipe)}</pre>", f"<script>{_SORT_JS}</script></body></html>"]
    return "\n".join(parts)


def _curve_kind(data: ReportData) -> str:
    return "measured" if data.curve and "psnr_db" in data.curve[0] else "predicted"


def _curve_note(data: ReportData) -> str:
    if _curve_kind(data) == "measured":
        probe = data.report.info.get("image_probe", {})
        return (f"Each allocation quantized as a whole and sampled: PSNR of {probe.get('samples', '?')} samples x "
                f"{probe.get('steps', '?')} steps against the float model's (the image metric's samples). "
                "Predicted: the allocator's summed relative error, in dB.")
    return ("Predicted: the allocator's summed relative error of the chosen formats, in dB (no samples were "
            "drawn; the image metric needs a pipeline with labels or prompts).")


def _curve_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    measured = _curve_kind(data) == "measured"
    headers = ["kind", "avg bits", "bytes", "predicted dB"] + (["measured PSNR dB"] if measured else [])
    rows = [[str(p["kind"]), f"{p['avg_bits']:.3f}", str(p["bytes"]), _fmt(p["predicted_sqnr_db"])]
            + ([_fmt(p["psnr_db"])] if measured else []) for p in data.curve]
    return headers, rows


def _html_curve_table(data: ReportData) -> str:
    headers, rows = _curve_table(data)
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")


def _e(text) -> str:
    return html.escape(str(text))


def _img(data: ReportData, name: str) -> str:
    encoded = base64.b64encode(data.images[name]).decode()
    return f"<img alt='{name}' src='data:image/png;base64,{encoded}'>"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _table_rows(data: ReportData) -> list[list[tuple[str, str]]]:
    """(display, sort value) cells per layer, in ranking order."""
    report, rows = data.report, []
    for fqn in data.ranking:
        layer = report.layer(fqn)
        cells = [(fqn, fqn), (layer.kind, layer.kind), (str(layer.params), str(layer.params))]
        for name in report.candidates:
            value = report.output_sqnr_db(fqn, name)
            cells.append((_fmt(value), _fmt(value) if math.isfinite(value) else "-1e9"))
        spread = report.bucket_spread_db(fqn, data.focus)
        cells.append((_fmt(spread), _fmt(spread)))
        image = report.image.get(fqn, {}).get(data.focus)
        cells.append((_fmt(image.psnr_db) if image else "", _fmt(image.psnr_db) if image else "1e9"))
        chosen = data.allocation.choice.get(fqn, "") if data.allocation else ""
        cells.append((chosen, chosen))
        rows.append(cells)
    return rows


def _headers(data: ReportData) -> list[str]:
    return (["layer", "kind", "params"] + [f"SQNR dB {n}" for n in data.report.candidates]
            + [f"bucket spread dB ({data.focus})", f"image PSNR dB ({data.focus})", "allocated"])


def _html_table(data: ReportData) -> str:
    head = "".join(f"<th class='{'name' if i == 0 else ''}'>{_e(h)}</th>" for i, h in enumerate(_headers(data)))
    body = "".join("<tr>" + "".join(
        f"<td class='{'name' if i == 0 else ''}' data-value='{_e(v)}'>{_e(d)}</td>" for i, (d, v) in enumerate(row))
        + "</tr>" for row in _table_rows(data))
    return f"<table class='sortable' id='sensitivity'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _range_rows(data: ReportData) -> list[list[str]]:
    top = data.ranking[:5]
    return [[fqn] + [_fmt(v, 3) if v is not None else "-" for v in data.report.activation_absmax.get(fqn, [])]
            for fqn in top]


def _html_ranges(data: ReportData) -> str:
    rows = _range_rows(data)
    width = max((len(r) for r in rows), default=1) - 1
    head = "<th class='name'>layer</th>" + "".join(f"<th>bucket {b}</th>" for b in range(width))
    body = "".join("<tr><td class='name'>" + _e(r[0]) + "</td>" + "".join(f"<td>{c}</td>" for c in r[1:]) + "</tr>"
                   for r in rows)
    return f"<table id='ranges'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _allocation_lines(data: ReportData) -> list[tuple[str, str]]:
    size = _size_summary(data)
    if not data.allocation:
        return [("allocation", data.allocation_note)]
    a = data.allocation
    return [("budget", ", ".join(f"{k}={v}" for k, v in a.to_dict()["budget"].items())),
            ("average weight bits", f"{a.avg_bits:.3f}"),
            ("weights before (bf16 / fp32)", f"{size['bf16_bytes']} / {size['fp32_bytes']} bytes"),
            ("weights after (codes + scales)", f"{a.total_bytes} bytes"),
            ("layers per format", ", ".join(f"{k}: {v}" for k, v in sorted(a.counts.items()))),
            ("solver", f"CBC, {a.solve_seconds:.2f} s{'' if a.proven else ' (time limit: best found)'}")]


def _html_allocation(data: ReportData) -> str:
    rows = "".join(f"<tr><td class='name'>{_e(k)}</td><td class='name'>{_e(v)}</td></tr>"
                   for k, v in _allocation_lines(data))
    recipe = f"<p class='note'>Written as recipe.yaml beside this report (use with --recipe).</p>" \
        if data.allocation else ""
    return f"<table id='allocation'><tbody>{rows}</tbody></table>{recipe}"


# --------------------------------------------------------------------------------------- markdown


def to_markdown(data: ReportData) -> str:
    report = data.report
    lines = [f"# Sensitivity report: {report.info.get('model', 'denoiser')}", "",
             f"{len(report.layers)} layers x {len(report.candidates)} candidates, {len(report.buckets)} timestep buckets. "
             f"{measurement_note(report)} Output SQNR (dB) of the denoiser with only that layer quantized; most "
             "sensitive first.", ""]
    lines += _md_table(_headers(data), [[d for d, _ in row] for row in _table_rows(data)])
    lines += ["", "![sensitivity per format](sensitivity_bars.png)", "",
              f"![layer x bucket heatmap, {data.focus}](bucket_heatmap.png)", "",
              "## Activation ranges (input absmax per bucket) of the most sensitive layers", "",
              "![activation ranges](activation_ranges.png)", ""]
    lines += [f"- `{r[0]}`: " + " ".join(r[1:]) for r in _range_rows(data)]
    lines += ["", "## Allocation", ""] + [f"- {k}: {v}" for k, v in _allocation_lines(data)]
    if data.curve:
        lines += ["", f"## Quality vs size ({_curve_kind(data)})", "", _curve_note(data), "",
                  "![quality vs size](size_curve.png)", ""] + _md_table(*_curve_table(data))
    lines += ["", "## Recipe: top-k sensitive layers in high precision", "", "```yaml", data.top_k_recipe.rstrip(),
              "```", ""]
    return "\n".join(lines)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in rows]
