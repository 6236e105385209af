"""The index benchmark's chart: recall@10 against queries/s, one panel per dataset (also redrawn from its JSON)."""

from __future__ import annotations

import json
from pathlib import Path


def chart(rows: list[dict], path: Path) -> None:
    """Recall@10 against queries/s, one panel per dataset, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows if r["dataset"] == name):
            pts = sorted((r["recall_at_10"], r["qps"]) for r in rows if r["dataset"] == name and r["method"] == method)
            frontier = [p for p in pts if not any(o[0] >= p[0] and o[1] > p[1] for o in pts)]  # best q/s per recall
            ax.plot([p[0] for p in frontier], [p[1] for p in frontier], "o-", label=method, markersize=3,
                    color=colours[method])
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 vs exact")
        ax.set_ylabel("queries/s (1 thread)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def replot(json_file: Path) -> None:
    """Redraw the chart of an earlier run from its JSON."""
    chart(json.loads(json_file.read_text())["rows"], json_file.with_suffix(".png"))



if __name__ == "__main__":
    import sys

    for name in sys.argv[1:]:
        replot(Path(name))
