"""The additivity plot of depth pruning: predicted (sum of single-removal losses) against measured loss of
removing random sets of blocks, from a bench/layer_pruning.py result.

    python bench/plot_additivity.py [bench/results/layer-pruning-digits-flux.json]

Writes the PNG beside the JSON (layer-additivity-NAME.png).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" /
                  "layer-pruning-digits-flux.json")
    result = json.loads(source.read_text())
    check = next(row["additivity"] for row in result["rows"] if "additivity" in row)
    points = check["points"]
    predicted = [p["predicted"] for p in points]
    measured = [p["measured"] for p in points]
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    scatter = axes.scatter(predicted, measured, c=[p["blocks"] for p in points], cmap="viridis")
    top = max(predicted + measured) * 1.05
    axes.plot([0, top], [0, top], color="grey", linewidth=1, linestyle="--", label="measured = predicted")
    axes.set_xlabel("predicted: sum of single-removal losses")
    axes.set_ylabel("measured loss of removing the set")
    axes.set_title(f"{result['model']}: Pearson {check['pearson']:.3f}, Spearman {check['spearman']:.3f}",
                   fontsize=9)
    figure.colorbar(scatter, ax=axes, label="blocks removed")
    axes.legend(fontsize=8)
    figure.tight_layout()
    name = result["model"].split(":")[-1]
    out = source.with_name(f"layer-additivity-{name}.png")
    figure.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
