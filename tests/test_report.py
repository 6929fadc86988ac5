"""Sensitivity report rendering (diffpress/report): files, structure, and a real headless-browser render."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from diffpress.compression.sensitivity.report import ImageScore, LayerInfo, SensitivityReport
from diffpress.plan import Plan
from diffpress.recipe import Recipe
from diffpress.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def synthetic_report() -> SensitivityReport:
    """12 layers, 3 candidates, 4 buckets; layer07 is the most sensitive to w4a8-int."""
    names = ["bf16", "w8a8-int8", "w4a8-int"]
    layers = [LayerInfo(f"blocks.{i}.layer{i:02d}", "Linear" if i % 2 else "Conv2d", (64, 64 * (1 + i % 3)))
              for i in range(12)]
    sqnr = {}
    for i, layer in enumerate(layers):
        base = 5.0 if i == 7 else 20.0 + i
        sqnr[layer.fqn] = {"bf16": [55.0] * 4, "w8a8-int8": [40.0 + i / 4] * 4,
                           "w4a8-int": [base + bucket for bucket in range(4)]}
    image = {"blocks.7.layer07": {n: ImageScore(p, 0.9, 10 ** (-p / 10)) for n, p in zip(names, (60.0, 40.0, 12.0))}}
    ranges = {layer.fqn: [1.0 + i + b / 2 for b in range(4)] for i, layer in enumerate(layers)}
    return SensitivityReport(layers, names, [0, 1, 2, 3], sqnr, image, ranges,
                             {"model": "synthetic", "calls_replayed": 4})


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    return write_report(synthetic_report(), tmp_path_factory.mktemp("report"), avg_bits=5.0, top_k=3)


def test_files_and_json_contents(report_dir):
    for name in ("report.json", "report.html", "report.md", "recipe.yaml", "sensitivity_bars.png",
                 "bucket_heatmap.png", "activation_ranges.png", "size_curve.png"):
        assert (report_dir / name).is_file(), name
    data = json.loads((report_dir / "report.json").read_text())
    assert data["ranking"][0] == "blocks.7.layer07" and data["focus_candidate"] == "w4a8-int"
    assert data["allocation"]["avg_bits"] <= 5.0 + 1e-9
    assert data["allocation"]["choice"]["blocks.7.layer07"] != "w4a8-int"
    assert data["size"]["allocated_bytes"] < data["size"]["bf16_bytes"]
    assert {p["avg_bits"] for p in data["curve"] if p["kind"] == "mixed"} == {4.0, 4.5, 5.0, 6.0, 8.0}


def test_recipes_are_usable(report_dir):
    top_k = Plan.from_yaml(json.loads((report_dir / "report.json").read_text())["top_k_recipe"]).recipe
    assert [rule.match for rule in top_k.rules] == ["blocks.7.layer07", "blocks.0.layer00", "blocks.1.layer01"]
    assert all(rule.plan is None for rule in top_k.rules)
    allocation = Plan.load(report_dir / "recipe.yaml").recipe
    assert len(allocation.rules) == 12


def test_html_is_self_contained_with_tables_images_and_sorting(report_dir):
    html = (report_dir / "report.html").read_text()
    assert html.count("<table") == 4 and "class='sortable'" in html
    assert "Quality vs size (predicted)" in html  # a report without samples says its curve is predicted
    assert html.count("src='data:image/png;base64,") == 4
    assert "addEventListener('click'" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from a network
    markdown = (report_dir / "report.md").read_text()
    assert "| layer | kind | params |" in markdown and "![quality vs size](size_curve.png)" in markdown


def _chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium; .ci/run does)")
def test_renders_in_headless_chromium(report_dir, tmp_path):
    from PIL import Image, ImageStat

    page = (report_dir / "report.html").resolve().as_uri()
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table") == 4 and dom.stdout.count("<img") == 4
    assert dom.stdout.count("<tr>") >= 12 + 5
    shot = tmp_path / "shot.png"
    result = _chromium(f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={shot}",
                       "--window-size=1280,2400", "--hide-scrollbars", page)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2400)
    assert ImageStat.Stat(image).stddev[0] > 10  # not a blank page: text, tables and figures drawn
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


@pytest.mark.slow
def test_cli_sensitivity_writes_the_report(tmp_path, capsys):
    import torch

    from diffpress.cli.main import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the digits UNet on shared cores: one thread beats two oversubscribed
    try:
        code = main(["sensitivity", "builtin:digits", "--out", str(tmp_path / "r"), "--candidates", "w4a8-int",
                     "w8a8-int8", "--calib-samples", "2", "--calib-steps", "1", "--image-layers", "1",
                     "--image-samples", "2", "--image-steps", "2", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(data["sensitivity"]["layers"]) == 72 and len(data["sensitivity"]["image"]) == 1
    measured = {(p["kind"], p["avg_bits"]): p["psnr_db"] for p in data["curve"]}
    assert {"w4a8-int", "w8a8-int8"} <= {kind for kind, _ in measured} and len(measured) == 7
    assert measured["w8a8-int8", 8.0] > measured["w4a8-int", 4.0]  # sampled, so 8 bits must beat 4
    assert "Quality vs size (measured)" in (tmp_path / "r" / "report.html").read_text()
    assert data["allocation"]["avg_bits"] <= 5 + 1e-9
    assert Plan.load(tmp_path / "r" / "recipe.yaml").recipe.rules
    assert main(["sensitivity", "builtin:digits", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
