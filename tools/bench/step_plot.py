"""Plots atom-bench-step's CSV next to its PyTorch peer's: per model one PNG, one panel per
context, the time of one layer of a decode step against the token count T for atom, each peer
and the byte floor (atom's bytes at the copy rate measured in atom's run), both axes logarithmic.

Usage: step_plot.py ATOM_CSV TORCH_CSV OUT_DIR
Writes OUT_DIR/step-<model>.png.
"""
import csv
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(atom_csv, torch_csv, out_dir):
    rows = read(atom_csv) + (read(torch_csv) if os.path.exists(torch_csv) else [])
    floors = read(atom_csv)
    by_model = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    for model, mine in by_model.items():
        contexts = sorted({int(r["ctx"]) for r in mine})
        fig, axes = plt.subplots(1, len(contexts), figsize=(5 * len(contexts), 4), squeeze=False)
        for ax, ctx in zip(axes[0], contexts):
            series = defaultdict(list)
            for r in mine:
                if int(r["ctx"]) == ctx:
                    label = "atom" if r["backend"] in ("gpu", "host") else r["backend"]
                    series[label].append((int(r["T"]), float(r["ms_layer"])))
            floor = sorted((int(r["T"]), float(r["floor_ms_layer"])) for r in floors
                           if r["model"] == model and int(r["ctx"]) == ctx)
            for label, points in sorted(series.items()):
                points.sort()
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            if floor:
                ax.plot([p[0] for p in floor], [p[1] for p in floor], "k--",
                        label="byte floor (atom's bytes at copy rate)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens T (one sequence each)")
            ax.set_ylabel("ms per layer")
            ax.set_title(f"{model}, context {ctx}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"step-{model}.png")
        fig.savefig(path, dpi=110)
        print(path)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
